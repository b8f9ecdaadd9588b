//! The deployment examples in `config/kubernetes/` and `config/systemd/` hold together: every
//! YAML document parses and has the shape Kubernetes wants, both Deployments (single and fleet)
//! are hardened and probed, the Service, volumes and ConfigMaps agree with each other and with the
//! config they carry (which portcullis itself loads), the nodes' `hosts.toml` makes the Service
//! every endpoint (so that a denial is final), the egress NetworkPolicy lets pods reach portcullis
//! and DNS only, and the systemd unit runs the binary the way the Dockerfile does. The fleet is a
//! drop-in for the single Deployment (same Service, container and pod security), spreads its
//! replicas over the nodes under a PodDisruptionBudget a drain can honour, keeps each replica's
//! cache within its emptyDir and reads the bucket's credentials from a Secret. With
//! `kubernetes-validate` (PyPI: bundled schemas, offline) or `kubeconform` on `PATH`, the
//! manifests are also checked against the API schemas.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portcullis::Config;
use serde::Deserialize;
use serde_json::Value;

const PORTCULLIS_YAML: &str = "kubernetes/portcullis.yaml";
const DAEMONSET_YAML: &str = "kubernetes/containerd-hosts-daemonset.yaml";
const EGRESS_YAML: &str = "kubernetes/registry-egress-networkpolicy.yaml";
const FLEET_YAML: &str = "kubernetes/portcullis-fleet.yaml";
const UNIT: &str = "systemd/portcullis.service";
const CONFIG_PATH: &str = "/etc/portcullis/portcullis.toml";

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn read(rel: &str) -> String {
    let path = config_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a multi-document YAML file, as JSON values (empty documents left out).
fn documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let yaml = serde_yaml_ng::Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{rel}: document {i}: {e}"));
        if yaml.is_null() {
            continue;
        }
        let json =
            serde_json::to_value(&yaml).unwrap_or_else(|e| panic!("{rel}: document {i}: {e}"));
        out.push(json);
    }
    out
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, is {v}"))
}

fn array_of<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} should be a list, is {v}"))
}

/// The one document of this kind (and name, if given).
fn find<'a>(docs: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name:?}");
    found[0]
}

/// The `portcullis.toml` the ConfigMap carries.
fn configmap_toml(docs: &[Value]) -> String {
    let cm = find(docs, "ConfigMap", Some("portcullis-config"));
    str_of(
        &cm["data"]["portcullis.toml"],
        "ConfigMap data portcullis.toml",
    )
    .to_owned()
}

fn configmap_toml_value(docs: &[Value]) -> toml::Value {
    toml::from_str(&configmap_toml(docs)).unwrap_or_else(|e| panic!("ConfigMap's toml: {e}"))
}

fn pod_spec(doc: &Value) -> &Value {
    let spec = &doc["spec"]["template"]["spec"];
    assert!(spec.is_object(), "{} has a pod template", doc["kind"]);
    spec
}

fn container<'a>(doc: &'a Value, name: &str) -> &'a Value {
    array_of(&pod_spec(doc)["containers"], "containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("a container named {name}"))
}

/// The container port a probe or Service names, by name or number.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    let ports = array_of(&container["ports"], "container ports");
    match port {
        Value::String(name) => ports
            .iter()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        Value::Number(n) => {
            let n = n.as_u64().unwrap();
            assert!(
                ports.iter().any(|p| p["containerPort"] == n),
                "port {n} is not a container port"
            );
            n
        }
        other => panic!("a port is a name or a number, not {other}"),
    }
}

/// Bytes of a Kubernetes quantity such as `20Gi` (binary suffixes only: what the examples use).
fn quantity_bytes(q: &str) -> u64 {
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ]
    .iter()
    .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))
    .unwrap_or((q, 1));
    num.parse::<u64>()
        .unwrap_or_else(|e| panic!("quantity {q}: {e}"))
        * mult
}

fn toml_str<'a>(v: &'a toml::Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for key in path {
        cur = cur
            .get(key)
            .unwrap_or_else(|| panic!("portcullis.toml has no {}", path.join(".")));
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{} should be a string", path.join(".")))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn every_document_names_its_api_version_kind_and_name() {
    for rel in [PORTCULLIS_YAML, FLEET_YAML, DAEMONSET_YAML, EGRESS_YAML] {
        let docs = documents(rel);
        // The egress policy goes into the user's own namespace: the file creates none.
        let creates_its_namespaces = rel != EGRESS_YAML;
        assert!(
            docs.len() >= 3 || !creates_its_namespaces,
            "{rel}: {} documents",
            docs.len()
        );
        let namespaces: Vec<&str> = docs
            .iter()
            .filter(|d| d["kind"] == "Namespace")
            .map(|d| str_of(&d["metadata"]["name"], "Namespace name"))
            .collect();
        for doc in &docs {
            let kind = str_of(&doc["kind"], "kind");
            let api = str_of(&doc["apiVersion"], "apiVersion");
            let name = str_of(&doc["metadata"]["name"], "metadata.name");
            assert!(!api.is_empty() && !name.is_empty(), "{rel}: {kind}");
            let expected_api = match kind {
                "Namespace" | "ConfigMap" | "PersistentVolumeClaim" | "Service" => "v1",
                "Deployment" | "DaemonSet" => "apps/v1",
                "NetworkPolicy" => "networking.k8s.io/v1",
                "PodDisruptionBudget" => "policy/v1",
                other => panic!("{rel}: unexpected kind {other}"),
            };
            assert_eq!(api, expected_api, "{rel}: {kind} {name}");
            // A DNS-1123 label: lowercase alphanumerics and '-'.
            assert!(
                name.len() <= 63
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{rel}: {kind} name {name:?}"
            );
            if kind != "Namespace" {
                let ns = str_of(&doc["metadata"]["namespace"], "metadata.namespace");
                assert!(
                    namespaces.contains(&ns) || !creates_its_namespaces,
                    "{rel}: {kind} {name} is in namespace {ns}, which the file does not create"
                );
            }
        }
    }
}

#[test]
fn deployment_is_probed_hardened_and_limited() {
    let dockerfile = std::fs::read_to_string(config_dir().join("../Dockerfile")).unwrap();
    let image_user: u64 = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the Dockerfile sets USER")
        .trim()
        .parse()
        .expect("a numeric USER");
    assert!(
        dockerfile.contains(r#"CMD ["serve", "--config", "/etc/portcullis/portcullis.toml"]"#),
        "the Dockerfile's CMD is what the Deployment runs"
    );
    for rel in [PORTCULLIS_YAML, FLEET_YAML] {
        let docs = documents(rel);
        let deploy = find(&docs, "Deployment", Some("portcullis"));
        // The fleet's replicas and rollout are fleet_shares_a_bucket_and_survives_a_drain's.
        if rel == PORTCULLIS_YAML {
            assert_eq!(deploy["spec"]["replicas"], 1);
            assert_eq!(
                deploy["spec"]["strategy"]["type"], "Recreate",
                "the RocksDB cache on a RWO volume cannot be opened by two pods"
            );
        }
        let selector = &deploy["spec"]["selector"]["matchLabels"];
        let labels = &deploy["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector.as_object().expect("matchLabels") {
            assert_eq!(
                &labels[k], v,
                "{rel}: the pod template carries the selector's labels"
            );
        }

        let pod = pod_spec(deploy);
        let c = container(deploy, "portcullis");

        // Probes: liveness on /healthz, readiness on /readyz, both on the registry port.
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{rel}: {probe}");
            assert_eq!(resolve_port(c, &get["port"]), 5000, "{rel}: {probe} port");
        }

        // The same user as the image, never root, nothing to escalate to, nothing writable but
        // the volumes.
        let sc = &c["securityContext"];
        let psc = &pod["securityContext"];
        assert!(
            sc["runAsNonRoot"] == true || psc["runAsNonRoot"] == true,
            "{rel}: runAsNonRoot"
        );
        assert_ne!(sc["runAsNonRoot"], false, "{rel}");
        let uid = if sc["runAsUser"].is_null() {
            &psc["runAsUser"]
        } else {
            &sc["runAsUser"]
        };
        assert_eq!(uid, image_user, "{rel}: the Dockerfile's USER");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{rel}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{rel}");
        assert_eq!(sc["privileged"], Value::Null, "{rel}");
        assert!(
            array_of(&sc["capabilities"]["drop"], "capabilities.drop").contains(&"ALL".into()),
            "{rel}: drops ALL capabilities"
        );
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{rel}: adds no capability"
        );
        let seccomp = if sc["seccompProfile"].is_null() {
            &psc["seccompProfile"]
        } else {
            &sc["seccompProfile"]
        };
        assert_eq!(seccomp["type"], "RuntimeDefault", "{rel}");
        assert_eq!(pod["hostNetwork"], Value::Null, "{rel}");

        // Requests and limits for both CPU and memory.
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    !c["resources"][kind][res].is_null(),
                    "{rel}: resources.{kind}.{res} is set"
                );
            }
        }

        // Volumes: /tmp is an emptyDir (the root filesystem is read-only), the config a
        // ConfigMap mounted whole (a subPath mount would never see an update, so reload could
        // not work).
        let volumes = array_of(&pod["volumes"], "volumes");
        let mounts = array_of(&c["volumeMounts"], "volumeMounts");
        let volume_at = |path: &str| -> &Value {
            let m = mounts
                .iter()
                .find(|m| m["mountPath"] == path)
                .unwrap_or_else(|| panic!("{rel}: something is mounted at {path}"));
            assert!(
                m["subPath"].is_null(),
                "{rel}: {path} is not a subPath mount"
            );
            volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .unwrap_or_else(|| panic!("{rel}: the volume mounted at {path} exists"))
        };
        assert!(
            volume_at("/tmp")["emptyDir"].is_object(),
            "{rel}: /tmp is an emptyDir"
        );
        let config_volume = volume_at("/etc/portcullis");
        assert_eq!(
            config_volume["configMap"]["name"], "portcullis-config",
            "{rel}"
        );
        assert!(CONFIG_PATH.starts_with("/etc/portcullis/"));
        let _ = find(&docs, "ConfigMap", Some("portcullis-config"));

        // It runs the image's default command, on the file the ConfigMap provides.
        let args: Vec<&str> = array_of(&c["args"], "args")
            .iter()
            .map(|a| str_of(a, "arg"))
            .collect();
        assert_eq!(args, ["serve", "--config", CONFIG_PATH], "{rel}");

        // Kubernetes waits at least the shutdown grace before SIGKILL.
        let cfg = configmap_toml_value(&docs);
        let grace =
            humantime::parse_duration(toml_str(&cfg, &["server", "shutdown_grace"])).unwrap();
        let k8s_grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        assert!(
            Duration::from_secs(k8s_grace) > grace,
            "{rel}: terminationGracePeriodSeconds {k8s_grace} exceeds shutdown_grace {grace:?}"
        );

        // The namespace enforces what the pod already meets.
        let ns = find(&docs, "Namespace", Some("portcullis"));
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
            "{rel}"
        );
    }
}

#[test]
fn service_exposes_the_container_ports() {
    let docs = documents(PORTCULLIS_YAML);
    let deploy = find(&docs, "Deployment", Some("portcullis"));
    let svc = find(&docs, "Service", Some("portcullis"));
    let c = container(deploy, "portcullis");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().expect("a selector") {
        assert_eq!(&labels[k], v, "the Service selects the pod");
    }
    let ports = array_of(&svc["spec"]["ports"], "Service ports");
    let mut exposed = BTreeMap::new();
    for p in ports {
        let name = str_of(&p["name"], "Service port name");
        let target = if p["targetPort"].is_null() {
            &p["port"]
        } else {
            &p["targetPort"]
        };
        exposed.insert(
            name.to_owned(),
            (p["port"].as_u64().unwrap(), resolve_port(c, target)),
        );
    }
    let expected = BTreeMap::from([
        ("http".to_owned(), (5000, 5000)),
        ("metrics".to_owned(), (9090, 9090)),
    ]);
    assert_eq!(exposed, expected);
    for cp in array_of(&c["ports"], "container ports") {
        let name = str_of(&cp["name"], "container port name");
        assert_eq!(
            exposed.get(name).map(|e| e.1),
            cp["containerPort"].as_u64(),
            "container port {name} is exposed under its own name"
        );
    }
}

#[test]
fn configmap_config_binds_what_the_pod_exposes() {
    let dockerfile = std::fs::read_to_string(config_dir().join("../Dockerfile")).unwrap();
    for rel in [PORTCULLIS_YAML, FLEET_YAML] {
        let docs = documents(rel);
        let deploy = find(&docs, "Deployment", Some("portcullis"));
        let c = container(deploy, "portcullis");
        let cfg = configmap_toml_value(&docs);

        // Inside a pod the listener must take the pod's address, not loopback.
        let listen: SocketAddr = toml_str(&cfg, &["server", "listen"]).parse().unwrap();
        assert!(
            listen.ip().is_unspecified(),
            "{rel}: [server] listen {listen}"
        );
        assert_eq!(
            u64::from(listen.port()),
            resolve_port(c, &"http".into()),
            "{rel}"
        );
        let metrics: SocketAddr = toml_str(&cfg, &["metrics", "listen"]).parse().unwrap();
        assert!(
            metrics.ip().is_unspecified(),
            "{rel}: [metrics] listen {metrics}"
        );
        assert_eq!(
            u64::from(metrics.port()),
            resolve_port(c, &"metrics".into()),
            "{rel}"
        );
        assert_eq!(toml_str(&cfg, &["log", "format"]), "json", "{rel}");
        assert_eq!(toml_str(&cfg, &["policy", "default"]), "deny", "{rel}");

        // The cache directory is the persistent volume, and fits in it. (The fleet's is an
        // emptyDir: fleet_shares_a_bucket_and_survives_a_drain.)
        let dir = toml_str(&cfg, &["cache", "dir"]);
        if rel == PORTCULLIS_YAML {
            let pvc = find(&docs, "PersistentVolumeClaim", None);
            let claim = str_of(&pvc["metadata"]["name"], "PVC name");
            assert_eq!(
                pvc["spec"]["accessModes"],
                serde_json::json!(["ReadWriteOnce"])
            );
            let pod = pod_spec(deploy);
            let volume = array_of(&pod["volumes"], "volumes")
                .iter()
                .find(|v| v["persistentVolumeClaim"]["claimName"] == claim)
                .expect("a volume from the PVC");
            let mount = array_of(&c["volumeMounts"], "volumeMounts")
                .iter()
                .find(|m| m["name"] == volume["name"])
                .expect("the PVC is mounted");
            assert_eq!(mount["mountPath"], dir, "the PVC is mounted at [cache] dir");
            assert_ne!(mount["readOnly"], true);
            let size = quantity_bytes(str_of(
                &pvc["spec"]["resources"]["requests"]["storage"],
                "storage",
            ));
            let max: bytesize::ByteSize = toml_str(&cfg, &["cache", "max_size"]).parse().unwrap();
            assert!(
                max.as_u64() < size,
                "[cache] max_size {max} leaves room in the {size}-byte claim"
            );
        }

        // The Dockerfile's volumes are the mounts used here.
        assert!(dockerfile.contains(r#"VOLUME ["/var/lib/portcullis", "/etc/portcullis"]"#));
        assert_eq!(dir, "/var/lib/portcullis", "{rel}");

        // Every [[upstream]] the nodes route through is configured.
        let upstreams: Vec<&str> = cfg["upstream"]
            .as_array()
            .expect("[[upstream]]")
            .iter()
            .map(|u| u["name"].as_str().unwrap())
            .collect();
        assert!(upstreams.contains(&"docker.io"), "{rel}");
    }
}

/// portcullis itself loads the config the ConfigMap carries.
#[test]
fn configmap_config_loads_in_portcullis() {
    for rel in [PORTCULLIS_YAML, FLEET_YAML] {
        let docs = documents(rel);
        let text = configmap_toml(&docs);
        let cfg = Config::from_toml(&text, rel).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.server.listen, "0.0.0.0:5000".parse().unwrap(), "{rel}");
        assert_eq!(cfg.cache.dir, Path::new("/var/lib/portcullis"), "{rel}");
        assert_eq!(cfg.server.shutdown_grace, Duration::from_secs(30), "{rel}");
        assert!(
            cfg.upstreams
                .iter()
                .any(|u| u.name == "docker.io" && u.default),
            "{rel}"
        );
        assert!(cfg.rules.iter().any(|r| r.name == "chainguard"), "{rel}");
    }
}

#[test]
fn nodes_pull_through_the_service_only() {
    let proxy_docs = documents(PORTCULLIS_YAML);
    let svc = find(&proxy_docs, "Service", Some("portcullis"));
    let cluster_ip = str_of(&svc["spec"]["clusterIP"], "the Service's fixed clusterIP");
    let http_port = array_of(&svc["spec"]["ports"], "Service ports")
        .iter()
        .find(|p| p["name"] == "http")
        .and_then(|p| p["port"].as_u64())
        .unwrap();
    let mirror = format!("http://{cluster_ip}:{http_port}");
    // The fleet answers at the same Service (fleet_shares_a_bucket_and_survives_a_drain), so
    // the nodes' files must suit either.
    let upstreams: Vec<(&str, Vec<String>)> = [PORTCULLIS_YAML, FLEET_YAML]
        .into_iter()
        .map(|rel| {
            let cfg = configmap_toml_value(&documents(rel));
            let names = cfg["upstream"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["name"].as_str().unwrap().to_owned())
                .collect();
            (rel, names)
        })
        .collect();

    let docs = documents(DAEMONSET_YAML);
    let cm = find(&docs, "ConfigMap", Some("containerd-hosts"));
    let files = cm["data"].as_object().expect("ConfigMap data");
    assert!(
        files.contains_key("docker.io.toml"),
        "docker.io is mirrored"
    );
    for (key, text) in files {
        let registry = key.strip_suffix(".toml").expect("keys are <registry>.toml");
        for (rel, names) in &upstreams {
            assert!(
                names.iter().any(|n| n == registry),
                "{key}: {rel} has an [[upstream]] named {registry} for containerd's ?ns="
            );
        }
        let hosts: toml::Value = toml::from_str(str_of(text, key))
            .unwrap_or_else(|e| panic!("{key} is not valid TOML: {e}"));
        let host = hosts["host"]
            .as_table()
            .expect("[host.\"…\"]")
            .get(&mirror)
            .unwrap_or_else(|| panic!("{key}: a [host.\"{mirror}\"] (the Service)"));
        let caps: Vec<&str> = host["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert!(caps.contains(&"pull") && caps.contains(&"resolve"), "{key}");
        assert!(
            !caps.contains(&"push"),
            "{key}: portcullis does not take pushes"
        );
        // Every endpoint containerd may try is the Service: the [host] entries and `server`,
        // its fallback after them. A real registry anywhere here would serve what portcullis
        // denied. containerd 1.6 and 1.7 ignore a file without a [host] entry (and then pull
        // from the registry itself), so there is one.
        let endpoints: Vec<&String> = hosts["host"].as_table().unwrap().keys().collect();
        assert_eq!(endpoints, [&mirror], "{key}: only the Service");
        assert_eq!(
            hosts["server"].as_str(),
            Some(mirror.as_str()),
            "{key}: `server` would let denied images around portcullis"
        );
        let server_caps = hosts["capabilities"]
            .as_array()
            .expect("top-level capabilities");
        assert!(
            !server_caps.iter().any(|c| c.as_str() == Some("push")),
            "{key}: portcullis does not take pushes"
        );
    }

    let ds = find(&docs, "DaemonSet", None);
    let pod = pod_spec(ds);
    let volumes = array_of(&pod["volumes"], "volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == "containerd-hosts"),
        "the DaemonSet reads the ConfigMap"
    );
    let host_volume = volumes
        .iter()
        .find(|v| v["hostPath"]["path"] == "/etc/containerd/certs.d")
        .expect("a hostPath volume for /etc/containerd/certs.d");
    let c = &array_of(&pod["containers"], "containers")[0];
    let mount = array_of(&c["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"] == host_volume["name"])
        .expect("the certs.d hostPath is mounted");
    let script = array_of(&c["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect::<Vec<_>>()
        .join(" ");
    let mount_path = str_of(&mount["mountPath"], "mountPath");
    assert!(
        script.contains(&format!("{mount_path}/$registry/hosts.toml")),
        "the script writes <registry>/hosts.toml under the hostPath mount"
    );
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["tolerations"][0]["operator"], "Exists", "every node");

    // Root with a hostPath is not allowed in the proxy's "restricted" namespace.
    let ns = str_of(&ds["metadata"]["namespace"], "namespace");
    assert_ne!(ns, "portcullis");
    let ns_doc = find(&docs, "Namespace", Some(ns));
    assert_eq!(
        ns_doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

/// The labels a selector's `matchLabels` asks for are all on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let want = selector["matchLabels"].as_object().expect("matchLabels");
    !want.is_empty() && want.iter().all(|(k, v)| &labels[k] == v)
}

#[test]
fn egress_policy_lets_pods_reach_portcullis_and_dns_only() {
    let proxy_docs = documents(PORTCULLIS_YAML);
    let deploy = find(&proxy_docs, "Deployment", Some("portcullis"));
    let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
    let proxy_ns = str_of(&deploy["metadata"]["namespace"], "namespace");
    let c = container(deploy, "portcullis");
    let registry_port = resolve_port(c, &"http".into());

    let docs = documents(EGRESS_YAML);
    assert_eq!(docs.len(), 1, "{EGRESS_YAML}: one NetworkPolicy");
    let np = find(&docs, "NetworkPolicy", None);
    let spec = &np["spec"];
    assert_eq!(spec["podSelector"], serde_json::json!({}), "every pod");
    assert_eq!(spec["policyTypes"], serde_json::json!(["Egress"]));
    let rules = array_of(&spec["egress"], "egress");
    let (mut to_portcullis, mut to_dns) = (false, false);
    for rule in rules {
        let peers = array_of(&rule["to"], "egress[].to");
        let ports = array_of(&rule["ports"], "egress[].ports");
        assert!(
            !peers.is_empty() && !ports.is_empty(),
            "no open-ended rule: {rule}"
        );
        for peer in peers {
            assert!(peer["ipBlock"].is_null(), "no address ranges: {peer}");
            let ns = &peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"];
            if ns == proxy_ns && selects(&peer["podSelector"], pod_labels) {
                for p in ports {
                    assert_eq!(p["protocol"], "TCP");
                    assert_eq!(p["port"].as_u64(), Some(registry_port), "{p}");
                }
                to_portcullis = true;
            } else {
                assert_eq!(ns, "kube-system", "only portcullis and DNS: {peer}");
                assert_eq!(peer["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
                for p in ports {
                    assert_eq!(p["port"], 53, "{p}");
                }
                to_dns = true;
            }
        }
    }
    assert!(to_portcullis && to_dns, "{rules:?}");
}

/// The fleet replaces `portcullis.yaml` under the same names, so everything that points at
/// portcullis (the nodes' `hosts.toml`, the egress policy, the admission examples) still does.
#[test]
fn fleet_shares_a_bucket_and_survives_a_drain() {
    let single = documents(PORTCULLIS_YAML);
    let docs = documents(FLEET_YAML);
    let one = find(&single, "Deployment", Some("portcullis"));
    let deploy = find(&docs, "Deployment", Some("portcullis"));
    let (c, pod) = (container(deploy, "portcullis"), pod_spec(deploy));
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];

    // A drop-in: what selects, reaches or runs the pods is as in portcullis.yaml.
    assert_eq!(
        find(&docs, "Service", Some("portcullis"))["spec"],
        find(&single, "Service", Some("portcullis"))["spec"],
        "the same Service"
    );
    assert_eq!(
        deploy["metadata"]["namespace"],
        one["metadata"]["namespace"]
    );
    assert_eq!(labels, &one["spec"]["template"]["metadata"]["labels"]);
    for key in [
        "image",
        "args",
        "ports",
        "securityContext",
        "livenessProbe",
        "readinessProbe",
    ] {
        assert_eq!(
            c[key],
            container(one, "portcullis")[key],
            "{key} as in {PORTCULLIS_YAML}"
        );
    }
    assert_eq!(pod["securityContext"], pod_spec(one)["securityContext"]);

    // Never fewer than `replicas` ready during a rollout, and at most one lost to a drain: the
    // budget sits below `replicas`, or no drain could ever evict a pod.
    let replicas = deploy["spec"]["replicas"].as_u64().expect("replicas");
    assert!(replicas >= 3, "{replicas} replicas");
    assert_eq!(deploy["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let pdb = find(&docs, "PodDisruptionBudget", Some("portcullis"));
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    assert!(
        min >= 2 && min < replicas,
        "minAvailable {min} of {replicas}"
    );
    assert!(
        selects(&pdb["spec"]["selector"], labels),
        "the budget covers the pods"
    );
    // One node lost costs one replica.
    assert!(
        array_of(
            &pod["topologySpreadConstraints"],
            "topologySpreadConstraints"
        )
        .iter()
        .any(|s| s["topologyKey"] == "kubernetes.io/hostname"
            && s["whenUnsatisfiable"] == "DoNotSchedule"
            && selects(&s["labelSelector"], labels)),
        "replicas spread over the nodes"
    );

    let cfg =
        Config::from_toml(&configmap_toml(&docs), FLEET_YAML).unwrap_or_else(|e| panic!("{e}"));
    let shared = cfg.cache.shared.as_ref().expect("[cache.shared]");
    let volumes = array_of(&pod["volumes"], "volumes");
    let mounts = array_of(&c["volumeMounts"], "volumeMounts");
    let volume_at = |path: &Path| -> &Value {
        let m = mounts
            .iter()
            .find(|m| path.starts_with(str_of(&m["mountPath"], "mountPath")))
            .unwrap_or_else(|| panic!("{} is mounted", path.display()));
        volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("the volume mounted for {} exists", path.display()))
    };

    // Each replica's cache is its own emptyDir, and max_size stays below its sizeLimit, past
    // which the kubelet evicts the pod; so does every emptyDir together below the container's
    // ephemeral-storage limit, which they count against.
    let cache = volume_at(&cfg.cache.dir);
    let limit = quantity_bytes(str_of(&cache["emptyDir"]["sizeLimit"], "sizeLimit"));
    assert!(
        cfg.cache.max_size.as_u64() < limit,
        "[cache] max_size {} leaves room in the {limit}-byte emptyDir",
        cfg.cache.max_size
    );
    let empty_dirs: u64 = volumes
        .iter()
        .filter(|v| v["emptyDir"].is_object())
        .map(|v| quantity_bytes(str_of(&v["emptyDir"]["sizeLimit"], "sizeLimit")))
        .sum();
    let ephemeral = quantity_bytes(str_of(
        &c["resources"]["limits"]["ephemeral-storage"],
        "ephemeral-storage limit",
    ));
    assert!(
        empty_dirs <= ephemeral,
        "emptyDirs of {empty_dirs} bytes within the {ephemeral}-byte ephemeral-storage limit"
    );

    // The bucket's credentials are files from a Secret, never written into the ConfigMap.
    for file in [&shared.access_key_id_file, &shared.secret_access_key_file] {
        let file = file.as_deref().expect("credentials from files");
        assert!(
            volume_at(file)["secret"]["secretName"].is_string(),
            "{} comes from a Secret",
            file.display()
        );
    }
}

/// `[Section]` → key → every value given (systemd keys may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
            continue;
        }
        let section = current
            .as_ref()
            .unwrap_or_else(|| panic!("line {}: a key before any [Section]", n + 1));
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", n + 1));
        assert!(
            !line.ends_with('\\'),
            "line {}: no continuation lines",
            n + 1
        );
        sections
            .get_mut(section)
            .unwrap()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    sections
}

#[test]
fn systemd_unit_runs_the_binary_hardened() {
    let text = read(UNIT);
    let unit = parse_unit(&text);
    assert_eq!(
        unit.keys().collect::<Vec<_>>(),
        ["Install", "Service", "Unit"]
    );
    let service = &unit["Service"];
    let one = |key: &str| -> &str {
        let values = service
            .get(key)
            .unwrap_or_else(|| panic!("[Service] {key} is set"));
        assert_eq!(values.len(), 1, "[Service] {key} is set once");
        &values[0]
    };
    assert_eq!(
        one("ExecStart"),
        format!("/usr/local/bin/portcullis serve --config {CONFIG_PATH}")
    );
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("User"), "portcullis");
    assert_eq!(one("StateDirectory"), "portcullis");
    assert_eq!(one("ConfigurationDirectory"), "portcullis");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("ProtectHome"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "", "no capabilities at all");
    assert!(one("ReadWritePaths")
        .split_whitespace()
        .any(|p| p == "/var/lib/portcullis"));
    assert_eq!(unit["Install"]["WantedBy"], ["multi-user.target"]);

    // The state directory is where the reference config's users are told to put the cache, and
    // systemd waits at least the shutdown grace before SIGKILL.
    let reference = Config::from_file(&config_dir().join("portcullis.toml")).unwrap();
    let stop = humantime::parse_duration(one("TimeoutStopSec")).unwrap();
    assert!(
        stop >= reference.server.shutdown_grace,
        "TimeoutStopSec {stop:?} covers shutdown_grace {:?}",
        reference.server.shutdown_grace
    );
    assert_eq!(one("WorkingDirectory"), "/var/lib/portcullis");
}

/// `systemd-analyze verify`, where present, knows every directive and value of this systemd.
#[test]
fn systemd_unit_verifies_where_systemd_analyze_is_present() {
    let Some(analyze) = on_path("systemd-analyze") else {
        eprintln!("systemd-analyze is not on PATH: skipped");
        return;
    };
    // verify insists that ExecStart's binary exists: point it at the one cargo built.
    let text = read(UNIT).replace(
        "/usr/local/bin/portcullis",
        env!("CARGO_BIN_EXE_portcullis"),
    );
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("portcullis.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only diagnostics about this file: the host's own units may have complaints of their own.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("portcullis.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The Kubernetes API schemas, where a validator is installed: `kubernetes-validate` (PyPI,
/// schemas bundled, works offline) or `kubeconform` (fetches schemas unless
/// `KUBECONFORM_SCHEMA_LOCATION` names a local copy).
#[test]
fn manifests_validate_against_the_api_schemas_where_a_validator_is_present() {
    let files: Vec<PathBuf> = [PORTCULLIS_YAML, FLEET_YAML, DAEMONSET_YAML, EGRESS_YAML]
        .iter()
        .map(|f| config_dir().join(f))
        .collect();
    let mut ran = false;
    if let Some(kv) = on_path("kubernetes-validate") {
        let out = Command::new(kv)
            .args(["--strict", "--quiet"])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubernetes-validate: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran = true;
    }
    if let Some(kc) = on_path("kubeconform") {
        let mut cmd = Command::new(kc);
        cmd.args(["-strict", "-summary"]);
        if let Ok(loc) = std::env::var("KUBECONFORM_SCHEMA_LOCATION") {
            cmd.args(["-schema-location", &loc]);
        }
        let out = cmd.args(&files).output().unwrap();
        assert!(
            out.status.success(),
            "kubeconform: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran = true;
    }
    if !ran {
        eprintln!("neither kubernetes-validate nor kubeconform is on PATH: shape checks only");
    }
}
