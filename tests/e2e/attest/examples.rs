//! The admission-controller examples in `config/kubernetes/` read the summary the way the tests
//! above serve it: the VSA predicate type, one P-256 public key (the same in both), the `.att`
//! of the image's repository read from the portcullis Service of `portcullis.yaml` through its
//! path-prefix route to an `[[upstream]]` the shipped ConfigMap configures, no transparency
//! log, and the verifier id and `PASSED` pinned.

use std::path::Path;

use p256::pkcs8::DecodePublicKey as _;
use serde::Deserialize;
use serde_json::Value;

use super::VSA;

const KYVERNO: &str = "kubernetes/kyverno-verified-by-portcullis.yaml";
const POLICY_CONTROLLER: &str = "kubernetes/policy-controller-verified-by-portcullis.yaml";

fn documents(rel: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).unwrap())
        .collect()
}

fn one(rel: &str, api: &str, kind: &str) -> Value {
    let docs = documents(rel);
    assert_eq!(docs.len(), 1, "{rel}: one document");
    let doc = docs.into_iter().next().unwrap();
    assert_eq!(doc["apiVersion"], api, "{rel}");
    assert_eq!(doc["kind"], kind, "{rel}");
    assert!(doc["metadata"]["name"].is_string(), "{rel}: a name");
    doc
}

fn str_at<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, is {v}"))
}

/// `<service>.<namespace>.svc:<port>/` of the portcullis Service in `portcullis.yaml`, and the
/// `[[upstream]]` names its ConfigMap's config has.
fn portcullis_service() -> (String, Vec<String>) {
    let docs = documents("kubernetes/portcullis.yaml");
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a Service");
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .expect("an http port")["port"]
        .as_u64()
        .unwrap();
    let host = format!(
        "{}.{}.svc:{port}/",
        str_at(&service["metadata"]["name"], "Service name"),
        str_at(&service["metadata"]["namespace"], "Service namespace")
    );
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    let toml: toml::Value =
        toml::from_str(str_at(&cm["data"]["portcullis.toml"], "portcullis.toml")).unwrap();
    let upstreams = toml["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect();
    (host, upstreams)
}

/// The image pattern (`registry/repo*`) is read from `repository` on portcullis: the Service,
/// then `registry/repo`, whose registry is a configured upstream.
fn check_route(pattern: &str, repository: &str) {
    let (service, upstreams) = portcullis_service();
    let route = repository
        .strip_prefix(&service)
        .unwrap_or_else(|| panic!("{repository} is not on the portcullis Service {service}"));
    assert_eq!(
        pattern.trim_end_matches('*'),
        route,
        "{pattern} vs {repository}"
    );
    let registry = route.split('/').next().unwrap();
    assert!(
        upstreams.iter().any(|u| u == registry),
        "{registry} is no [[upstream]] of the shipped config ({upstreams:?})"
    );
}

fn check_key(pem: &str) {
    p256::PublicKey::from_public_key_pem(pem.trim())
        .unwrap_or_else(|e| panic!("not a P-256 public key ({e}):\n{pem}"));
}

#[test]
fn the_kyverno_policy_reads_the_summary_from_portcullis_with_one_key() {
    let policy = one(KYVERNO, "kyverno.io/v1", "ClusterPolicy");
    let rules = policy["spec"]["rules"].as_array().unwrap();
    assert!(!rules.is_empty());
    let mut keys = Vec::new();
    for rule in rules {
        assert_eq!(rule["match"]["any"][0]["resources"]["kinds"][0], "Pod");
        for v in rule["verifyImages"].as_array().unwrap() {
            assert_eq!(v["failureAction"], "Enforce");
            assert_eq!(v["type"], "Cosign", "the .att form");
            assert_eq!(v["required"], true);
            let patterns = v["imageReferences"].as_array().unwrap();
            assert_eq!(patterns.len(), 1, "one repository per entry");
            check_route(
                str_at(&patterns[0], "imageReferences"),
                str_at(&v["repository"], "repository"),
            );
            let att = &v["attestations"][0];
            assert_eq!(att["type"], VSA);
            let entry = &att["attestors"][0]["entries"][0]["keys"];
            assert_eq!(entry["rekor"]["ignoreTlog"], true);
            assert_eq!(entry["ctlog"]["ignoreSCT"], true);
            keys.push(str_at(&entry["publicKeys"], "publicKeys").to_owned());
            let conditions = att["conditions"][0]["all"].as_array().unwrap();
            let pinned: Vec<(&str, &str)> = conditions
                .iter()
                .map(|c| {
                    assert_eq!(c["operator"], "Equals");
                    (str_at(&c["key"], "key"), str_at(&c["value"], "value"))
                })
                .collect();
            assert!(pinned.contains(&("{{ verificationResult }}", "PASSED")));
            assert!(pinned.iter().any(|(k, _)| *k == "{{ verifier.id }}"));
        }
    }
    for k in &keys {
        check_key(k);
    }
}

#[test]
fn the_policy_controller_policy_reads_the_summary_from_portcullis_with_one_key() {
    let cip = one(
        POLICY_CONTROLLER,
        "policy.sigstore.dev/v1beta1",
        "ClusterImagePolicy",
    );
    let spec = &cip["spec"];
    assert_eq!(spec["mode"], "enforce");
    let glob = str_at(&spec["images"][0]["glob"], "glob");
    let authority = &spec["authorities"][0];
    assert!(
        authority.get("ctlog").is_none(),
        "no ctlog: the tlog is skipped"
    );
    let key = str_at(&authority["key"]["data"], "key.data");
    check_key(key);
    check_route(glob, str_at(&authority["source"][0]["oci"], "source.oci"));
    let att = &authority["attestations"][0];
    assert_eq!(att["predicateType"], VSA);
    assert!(att["name"].is_string());
    assert_eq!(att["policy"]["type"], "cue");
    let cue = str_at(&att["policy"]["data"], "policy.data");
    assert!(cue.contains(&format!("predicateType: \"{VSA}\"")), "{cue}");
    assert!(cue.contains("verificationResult: \"PASSED\""), "{cue}");

    // Both examples trust the same key and pin the same verifier id.
    let kyverno = one(KYVERNO, "kyverno.io/v1", "ClusterPolicy");
    let v = &kyverno["spec"]["rules"][0]["verifyImages"][0]["attestations"][0];
    let kyverno_key = str_at(
        &v["attestors"][0]["entries"][0]["keys"]["publicKeys"],
        "publicKeys",
    );
    assert_eq!(kyverno_key.trim(), key.trim());
    let id = v["conditions"][0]["all"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "{{ verifier.id }}")
        .unwrap()["value"]
        .as_str()
        .unwrap();
    assert!(cue.contains(&format!("verifier: id: \"{id}\"")), "{cue}");
}
