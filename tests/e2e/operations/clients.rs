//! Real clients against portcullis. Podman and the Docker engine (as a `registry-mirrors` client)
//! pulling over TLS; and every client config shipped in `config/` keeping a denial final while
//! the real registry is reachable at the client's fallback address: containerd's `hosts.toml`
//! files (and those the Kubernetes DaemonSet writes), `registries.conf` for podman and skopeo,
//! and Docker's `daemon.json`, which cannot fail closed by itself, with the nftables egress rule
//! and the dockerd drop-in. Each of these first shows, with the shape the configs used to have,
//! that the client does walk around a denial when it can.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_testkit::cosign::{push_signature, simple_signing_payload, CosignKey, SigLayer};
use portcullis_testkit::{
    manifest_digest_in_registry, push, require_tools, tempdir, ConfigBuilder, Containerd, Image,
    Proxy, Registry, Rule,
};

use super::pki::Pki;
use super::support::*;

#[test]
fn podman_pulls_over_tls_with_cert_dir() {
    assert!(
        Path::new("/usr/bin/podman").exists(),
        "podman is needed: apt-get install -y podman"
    );
    let w = TlsWorld::new();
    let proxy = TlsProxy::start(
        &w.work.join("proxy"),
        &w.config(&w.upstream.host()),
        &["-k"],
    );
    let registries = w.work.join("registries.conf");
    std::fs::write(&registries, "unqualified-search-registries = []\n").unwrap();
    let podman = |args: &[&str]| {
        let p = w.work.join("podman");
        exec(
            Command::new("/usr/bin/podman")
                .env("CONTAINERS_REGISTRIES_CONF", &registries)
                .arg("--root")
                .arg(p.join("root"))
                .arg("--runroot")
                .arg(p.join("run"))
                .arg("--tmpdir")
                .arg(p.join("tmp"))
                .args([
                    "--storage-driver",
                    "vfs",
                    "--cgroup-manager",
                    "cgroupfs",
                    "--events-backend",
                    "file",
                ])
                .args(args),
        )
    };
    let image = format!("{}/test/small:v1", proxy.host());
    let empty = w.work.join("no-ca");
    std::fs::create_dir_all(&empty).unwrap();
    let refused = podman(&[
        "pull",
        "--tls-verify=true",
        "--cert-dir",
        empty.to_str().unwrap(),
        &image,
    ]);
    assert!(!refused.ok, "podman must not trust an unknown CA");
    let cert_dir = w.cert_dir();
    let out = podman(&[
        "pull",
        "--tls-verify=true",
        "--cert-dir",
        cert_dir.to_str().unwrap(),
        &image,
    ]);
    assert!(
        out.ok,
        "podman pull over TLS: {}{}\n{}",
        out.stderr,
        out.stdout,
        proxy.log()
    );
    let digest = podman(&["image", "inspect", "--format", "{{.Digest}}", &image]);
    assert!(digest.ok, "{}", digest.stderr);
    assert_eq!(
        digest.stdout.trim(),
        manifest_digest_in_registry(&w.upstream, "test/small", "v1")
    );
}

/// `/etc/docker/certs.d/HOST/ca.crt`, removed on drop.
struct DockerCert {
    dir: PathBuf,
}

impl DockerCert {
    fn install(host: &str, ca: &Path) -> DockerCert {
        let dir = Path::new("/etc/docker/certs.d").join(host);
        std::fs::create_dir_all(&dir).expect("create /etc/docker/certs.d/HOST (root needed)");
        std::fs::copy(ca, dir.join("ca.crt")).unwrap();
        DockerCert { dir }
    }
}

impl Drop for DockerCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Only if nothing else is there.
        let _ = std::fs::remove_dir(Path::new("/etc/docker/certs.d"));
    }
}

/// dockerd's environment in tests that must not reach the real Hub: a dead HTTP proxy for
/// everything but loopback.
const DEAD_PROXY: &[(&str, &str)] = &[
    ("HTTP_PROXY", "http://127.0.0.1:9"),
    ("HTTPS_PROXY", "http://127.0.0.1:9"),
    ("NO_PROXY", "127.0.0.1,localhost"),
];

/// A private dockerd (vfs, no networking) on a given containerd, with no proxy settings but those
/// in `env`. SIGTERMed (then SIGKILLed) on drop.
struct Dockerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Dockerd {
    fn start(
        dir: &Path,
        containerd_socket: &Path,
        daemon_json: &str,
        env: &[(&str, &str)],
    ) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("daemon.json");
        std::fs::write(&config, daemon_json).unwrap();
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        let out = std::fs::File::create(&log).unwrap();
        let exec_root = dir.join("e");
        let mut cmd = Command::new("dockerd");
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"] {
            cmd.env_remove(var).env_remove(var.to_ascii_lowercase());
        }
        let child = cmd
            .envs(env.iter().copied())
            .arg("--config-file")
            .arg(&config)
            .args([
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .arg("--data-root")
            .arg(dir.join("d"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(exec_root.join("d.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(containerd_socket)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn dockerd (apt-get install -y docker.io)");
        let mut d = Dockerd { child, socket, log };
        let ready = eventually(Duration::from_secs(30), || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("dockerd exited at start ({status}):\n{}", read_log(&d.log));
            }
            d.docker(&["version"]).ok
        });
        assert!(ready, "dockerd not ready:\n{}", read_log(&d.log));
        d
    }

    fn docker(&self, args: &[&str]) -> Out {
        exec(
            Command::new("/usr/bin/docker")
                .arg("-H")
                .arg(format!("unix://{}", self.socket.display()))
                .args(args),
        )
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn docker_engine_pulls_through_registry_mirrors_over_tls() {
    assert!(
        Path::new("/usr/sbin/dockerd").exists() && Path::new("/usr/bin/docker").exists(),
        "the Docker engine is needed: apt-get install -y docker.io"
    );
    let w = TlsWorld::new();
    push(Image::Small, &w.upstream, "library/alpine:latest");
    let proxy = TlsProxy::start(&w.work.join("proxy"), &w.config("docker.io"), &["-k"]);
    let _cert = DockerCert::install(&proxy.host(), &w.pki.pem("root"));
    let ctd = Containerd::start(&w.work.join("ctd"));
    let dockerd = Dockerd::start(
        &w.work.join("dk"),
        &ctd.socket,
        &format!("{{\"registry-mirrors\": [\"{}\"]}}", proxy.url()),
        DEAD_PROXY,
    );
    let out = dockerd.docker(&["pull", "alpine"]);
    assert!(
        out.ok,
        "docker pull alpine through the mirror: {}{}\nproxy log:\n{}\ndockerd log:\n{}",
        out.stderr,
        out.stdout,
        proxy.log(),
        read_log(&dockerd.log)
    );
    let digests = dockerd.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        "alpine:latest",
    ]);
    assert!(digests.ok, "{}", digests.stderr);
    let want = manifest_digest_in_registry(&w.upstream, "library/alpine", "latest");
    assert!(
        digests.stdout.contains(&want),
        "{} vs {want}",
        digests.stdout
    );
    let log = proxy.log();
    assert!(log.contains("docker.io/library/alpine"), "{log}");
    assert!(w.upstream.count_requests("GET", "/v2/library/alpine/") > 0);
}

// ---------------------------------------------------------------------------------------------
// The shipped client configs make a denial final

/// Where the shipped client configs say portcullis is (containerd, podman, Docker).
const SHIPPED_PROXY: &str = "127.0.0.1:5000";
/// Where the DaemonSet's `hosts.toml` files say it is: the Service's clusterIP.
const SERVICE_PROXY: &str = "http://10.96.100.50:5000";
/// Real registries, as a client config could name them; a test puts its upstream in their place,
/// so that a config that falls back to the registry itself falls back to something that answers.
const REAL_REGISTRIES: &[&str] = &[
    "registry-1.docker.io",
    "index.docker.io",
    "docker.io",
    "ghcr.io",
    "cgr.dev",
    "quay.io",
];

/// containerd's `hosts.toml` as this repository shipped it before: portcullis a mirror, the real
/// registry the `server`. The control that shows containerd walking around a denial.
const OLD_HOSTS_TOML: &str = "server = \"https://registry-1.docker.io\"\n\n\
    [host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n";
/// `registries.conf` as shipped before: the real registry the `location`, portcullis a mirror.
const OLD_REGISTRIES_CONF: &str = "[[registry]]\nprefix = \"docker.io\"\n\
    location = \"registry-1.docker.io\"\n\n[[registry.mirror]]\n\
    location = \"127.0.0.1:5000/docker.io\"\ninsecure = true\n";

/// A file under `config/`.
fn shipped(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(registry, hosts.toml)` for each file the Kubernetes DaemonSet writes.
fn daemonset_hosts_files() -> Vec<(String, String)> {
    let text = shipped("kubernetes/containerd-hosts-daemonset.yaml");
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let doc: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == "containerd-hosts" {
            return doc["data"]
                .as_object()
                .expect("ConfigMap data")
                .iter()
                .map(|(k, v)| {
                    let registry = k.strip_suffix(".toml").expect("<registry>.toml");
                    (registry.to_owned(), v.as_str().unwrap().to_owned())
                })
                .collect();
        }
    }
    panic!("no ConfigMap containerd-hosts in the DaemonSet's file");
}

/// `text` with `from` replaced by `to`, which must happen at least once.
fn substituted(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in:\n{text}");
    text.replace(from, to)
}

/// The lines of `registry`'s log for `/v2/<repo>/` that portcullis did not cause: the fixtures'
/// pushes, and whatever a client fetched around portcullis.
fn direct_requests(registry: &Registry, repo: &str) -> Vec<String> {
    let needle = format!("/v2/{repo}/");
    read_log(&registry.log)
        .lines()
        .filter(|l| l.contains(&needle) && !l.contains("portcullis/"))
        .map(str::to_owned)
        .collect()
}

/// Pushes a cosign signature by `key` for `repo@digest`.
fn sign(registry: &Registry, key: &CosignKey, repo: &str, digest: &str) {
    let payload = simple_signing_payload(&format!("docker.io/{repo}"), digest);
    let layer = SigLayer {
        signature_b64: key.sign(&payload),
        payload,
        ..SigLayer::default()
    };
    push_signature(registry, repo, digest, &[layer]);
}

/// A portcullis config: one `[[upstream]]` at `url` under each of `names` (the first the
/// default), `[policy] default = "deny"`, and one rule: `allowed` must carry a signature by the
/// key in `key_pub`.
fn gate_config(
    url: &str,
    ca: Option<&Path>,
    key_pub: &Path,
    names: &[&str],
    allowed: &str,
) -> ConfigBuilder {
    let mut config = ConfigBuilder::new();
    for (i, name) in names.iter().enumerate() {
        config = if i == 0 {
            config.default_upstream(name, url)
        } else {
            config.upstream(name, url)
        };
        config = config.with_upstream(name, |u| u.ca_file = ca.map(Path::to_owned));
    }
    config
        .trust_key("release", key_pub)
        .rule(Rule::new("signed", &[allowed]).key("release"))
}

/// An upstream holding `test/signed:v1` (signed) and `test/unsigned:v1` (not signed, and another
/// manifest), and a plain-HTTP portcullis that serves the first and denies the second under every
/// registry name the shipped configs use, and under the upstream's own address.
struct Gate {
    _dir: tempfile::TempDir,
    work: PathBuf,
    upstream: Registry,
    proxy: Proxy,
    /// The manifest digest of `test/signed:v1`.
    signed: String,
}

impl Gate {
    fn new() -> Gate {
        require_tools();
        let dir = tempdir();
        let work = dir.path().to_owned();
        let upstream = Registry::start(&work);
        let key = CosignKey::generate();
        key.write_public(&work.join("release.pub"));
        push(Image::Small, &upstream, "test/signed:v1");
        push(Image::DockerV2s2, &upstream, "test/unsigned:v1");
        let signed = manifest_digest_in_registry(&upstream, "test/signed", "v1");
        sign(&upstream, &key, "test/signed", &signed);
        let host = upstream.host();
        let config = gate_config(
            &upstream.url(),
            None,
            &work.join("release.pub"),
            &["docker.io", "ghcr.io", "cgr.dev", &host],
            "*/test/signed",
        );
        let proxy = Proxy::start(Path::new(BIN), &work.join("proxy"), &config);
        Gate {
            _dir: dir,
            work,
            upstream,
            proxy,
            signed,
        }
    }

    /// A `hosts.toml` as the test runs it: portcullis where the file says `mirror` is, the
    /// upstream wherever the file names a real registry. Written as `<case>/<registry>/hosts.toml`;
    /// returns the hosts dir.
    fn hosts_dir(&self, case: &str, registry: &str, text: &str, mirror: &str) -> PathBuf {
        let mut text = substituted(text, mirror, &self.proxy.url());
        for real in REAL_REGISTRIES {
            for form in [
                format!("https://{real}"),
                format!("http://{real}"),
                real.to_string(),
            ] {
                text = text.replace(
                    &format!("\"{form}\""),
                    &format!("\"{}\"", self.upstream.url()),
                );
            }
        }
        let dir = self.work.join("certs.d").join(case);
        std::fs::create_dir_all(dir.join(registry)).unwrap();
        std::fs::write(dir.join(registry).join("hosts.toml"), text).unwrap();
        dir
    }

    /// A `registries.conf` as the test runs it: portcullis' address replaced, and every
    /// `location` that names a real registry pointed at the upstream (plain HTTP, which podman
    /// and skopeo use there with TLS verification off).
    fn registries_conf(&self, case: &str, text: &str) -> PathBuf {
        let mut text = substituted(text, SHIPPED_PROXY, &self.proxy.host());
        for real in REAL_REGISTRIES {
            let up = self.upstream.host();
            text = text
                .replace(
                    &format!("location = \"{real}\""),
                    &format!("location = \"{up}\""),
                )
                .replace(
                    &format!("location = \"{real}/"),
                    &format!("location = \"{up}/"),
                );
        }
        let path = self.work.join(format!("registries-{case}.conf"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// What got around portcullis: the upstream's requests for either repository that portcullis
    /// did not send.
    fn direct(&self) -> Vec<String> {
        let mut lines = direct_requests(&self.upstream, "test/unsigned");
        lines.extend(direct_requests(&self.upstream, "test/signed"));
        lines
    }
}

fn refused(err: &str) -> bool {
    let lower = err.to_lowercase();
    err.contains("403") || lower.contains("denied") || lower.contains("forbidden")
}

#[test]
fn containerd_hosts_toml_as_shipped_makes_a_denial_final() {
    let g = Gate::new();
    let up = g.upstream.host();

    // Control: with the real registry as `server` behind portcullis the mirror, containerd takes
    // the 403 for a mirror failure and fetches the denied image from the registry itself.
    let ctd = Containerd::start(&g.work.join("ctd-old"));
    let old = g.hosts_dir("old", &up, OLD_HOSTS_TOML, "http://127.0.0.1:5000");
    let denied = format!("{up}/test/unsigned:v1");
    ctd.pull(&denied, &old)
        .unwrap_or_else(|e| panic!("control: containerd should have fallen back to `server`: {e}"));
    assert!(ctd.image_digest(&denied).is_some());
    let around = g.direct().len();
    assert!(around > 0, "control: the upstream saw containerd itself");
    drop(ctd);

    let mut files = vec![
        (
            "config/containerd/certs.d/docker.io/hosts.toml".to_owned(),
            "docker.io".to_owned(),
            shipped("containerd/certs.d/docker.io/hosts.toml"),
            format!("http://{SHIPPED_PROXY}"),
        ),
        (
            "config/containerd/certs.d/ghcr.io/hosts.toml".to_owned(),
            "ghcr.io".to_owned(),
            shipped("containerd/certs.d/ghcr.io/hosts.toml"),
            format!("http://{SHIPPED_PROXY}"),
        ),
    ];
    for (registry, text) in daemonset_hosts_files() {
        files.push((
            format!("the DaemonSet's {registry}.toml"),
            registry,
            text,
            SERVICE_PROXY.to_owned(),
        ));
    }
    let ctd = Containerd::start(&g.work.join("ctd"));
    for (i, (origin, registry, text, mirror)) in files.iter().enumerate() {
        // Under its own registry (containerd sends ?ns=<registry>), and under the upstream's
        // address: there containerd's own fallback, were the file to leave one, is the upstream.
        for name in [registry.as_str(), up.as_str()] {
            let dir = g.hosts_dir(&format!("{i}"), name, text, mirror);
            let allowed = format!("{name}/test/signed:v1");
            ctd.pull(&allowed, &dir).unwrap_or_else(|e| {
                panic!(
                    "{origin} as {name}: the signed image: {e}\n{}",
                    g.proxy.log_contents()
                )
            });
            assert_eq!(ctd.image_digest(&allowed).as_ref(), Some(&g.signed));
            let denied = format!("{name}/test/unsigned:v1");
            let err = ctd
                .pull(&denied, &dir)
                .expect_err(&format!("{origin} as {name}: the denied image arrived"));
            assert!(refused(&err), "{origin} as {name}: {err}");
            assert_eq!(ctd.image_digest(&denied), None, "{origin} as {name}");
        }
    }
    assert_eq!(
        g.direct().len(),
        around,
        "containerd reached the upstream around portcullis: {:#?}",
        g.direct()
    );
    let log = g.proxy.log_contents();
    for ns in ["docker.io", "ghcr.io", "cgr.dev"] {
        assert!(
            log.contains(&format!("{ns}/test/unsigned")),
            "routed by ?ns={ns}:\n{log}"
        );
    }
}

/// podman with its storage under `dir` and `CONTAINERS_REGISTRIES_CONF=conf`.
struct Podman {
    dir: PathBuf,
    conf: PathBuf,
}

impl Podman {
    fn run(&self, args: &[&str]) -> Out {
        exec(
            Command::new("/usr/bin/podman")
                .env("CONTAINERS_REGISTRIES_CONF", &self.conf)
                .arg("--root")
                .arg(self.dir.join("root"))
                .arg("--runroot")
                .arg(self.dir.join("run"))
                .arg("--tmpdir")
                .arg(self.dir.join("tmp"))
                .args([
                    "--storage-driver",
                    "vfs",
                    "--cgroup-manager",
                    "cgroupfs",
                    "--events-backend",
                    "file",
                ])
                .args(args),
        )
    }

    /// `podman pull` with TLS verification off, so that no source fails for want of TLS.
    fn pull(&self, image: &str) -> Out {
        self.run(&["pull", "--tls-verify=false", image])
    }

    fn has(&self, image: &str) -> bool {
        self.run(&["image", "exists", image]).ok
    }

    fn digest(&self, image: &str) -> String {
        let out = self.run(&["image", "inspect", "--format", "{{.Digest}}", image]);
        assert!(out.ok, "{}", out.stderr);
        out.stdout.trim().to_owned()
    }
}

/// `skopeo --registries-conf CONF copy docker://IMAGE dir:DEST`, TLS verification off.
fn skopeo_with_conf(conf: &Path, image: &str, dest: &Path) -> Out {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    exec(
        Command::new("skopeo")
            .arg("--registries-conf")
            .arg(conf)
            .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
            .arg(format!("docker://{image}"))
            .arg(format!("dir:{}", dest.display())),
    )
}

#[test]
fn podman_and_skopeo_registries_conf_as_shipped_makes_a_denial_final() {
    assert!(
        Path::new("/usr/bin/podman").exists(),
        "podman is needed: apt-get install -y podman"
    );
    let g = Gate::new();
    let up = g.upstream.host();

    // Control: with the real registry as `location` behind portcullis the mirror, podman takes
    // the 403 for a mirror failure and pulls the denied image from the registry itself.
    let old = Podman {
        dir: g.work.join("podman-old"),
        conf: g.registries_conf("old", OLD_REGISTRIES_CONF),
    };
    let out = old.pull("docker.io/test/unsigned:v1");
    assert!(
        out.ok,
        "control: podman should have fallen back to `location`: {}",
        out.stderr
    );
    assert!(old.has("docker.io/test/unsigned:v1"));
    let around = g.direct().len();
    assert!(around > 0, "control: the upstream saw podman itself");

    let text = shipped("podman/registries.conf");
    let registries = ["docker.io", "ghcr.io"];
    let mut cases = vec![(
        "as shipped".to_owned(),
        text.clone(),
        registries.map(str::to_owned).to_vec(),
    )];
    // Each prefix moved to the upstream's address: were the file to let a name through
    // unrewritten, podman would pull it from the upstream itself.
    for registry in registries {
        cases.push((
            format!("{registry} under the upstream's address"),
            substituted(
                &text,
                &format!("prefix = \"{registry}\""),
                &format!("prefix = \"{up}\""),
            ),
            vec![up.clone()],
        ));
    }
    for (i, (case, text, names)) in cases.iter().enumerate() {
        let conf = g.registries_conf(&format!("{i}"), text);
        let podman = Podman {
            dir: g.work.join(format!("podman-{i}")),
            conf: conf.clone(),
        };
        for name in names {
            let allowed = format!("{name}/test/signed:v1");
            let out = podman.pull(&allowed);
            assert!(
                out.ok,
                "{case}: podman pull {allowed}: {}\n{}",
                out.stderr,
                g.proxy.log_contents()
            );
            assert_eq!(podman.digest(&allowed), g.signed, "{case}");
            let denied = format!("{name}/test/unsigned:v1");
            let out = podman.pull(&denied);
            assert!(!out.ok, "{case}: podman pulled {denied}");
            assert!(refused(&out.stderr), "{case}: {}", out.stderr);
            assert!(!podman.has(&denied), "{case}: {denied} arrived");

            let dest = g.work.join(format!("skopeo-{i}-{name}"));
            let out = skopeo_with_conf(&conf, &allowed, &dest.join("signed"));
            assert!(out.ok, "{case}: skopeo copy {allowed}: {}", out.stderr);
            let out = skopeo_with_conf(&conf, &denied, &dest.join("unsigned"));
            assert!(!out.ok, "{case}: skopeo copied {denied}");
            assert!(refused(&out.stderr), "{case}: {}", out.stderr);
        }
    }
    assert_eq!(
        g.direct().len(),
        around,
        "podman or skopeo reached the upstream around portcullis: {:#?}",
        g.direct()
    );
    let log = g.proxy.log_contents();
    assert!(
        log.contains("ghcr.io/test/unsigned"),
        "routed by path prefix:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Docker: no config makes it fail closed; the egress rule and the drop-in do

/// Set (to the namespace's name) in the copy of this test binary that runs inside its own
/// network namespace.
const IN_NETNS: &str = "PORTCULLIS_TEST_NETNS";

/// A network namespace, removed on drop.
struct NetNs(String);

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs the test `name` of this module again (this binary, `--exact operations::clients::NAME`)
/// inside a network namespace of its own, where only loopback exists, and a mount namespace of
/// its own, where `/etc/hosts` says registry-1.docker.io is 127.0.0.1; panics with its output
/// unless it passes. So Docker's fallback to the real Hub reaches a local registry, and firewall
/// rules touch nothing outside.
fn run_in_netns(name: &str) {
    let ns = NetNs(format!("portcullis-{}", std::process::id()));
    run(Command::new("ip").args(["netns", "add", &ns.0]));
    run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
    let hosts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        hosts.path(),
        "127.0.0.1 localhost\n127.0.0.1 registry-1.docker.io\n",
    )
    .unwrap();
    // Readable by portcullis, which runs as nobody in there.
    std::fs::set_permissions(hosts.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = exec(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.0))
            .args(["unshare", "--mount", "--propagation", "private"])
            .args([
                "sh",
                "-c",
                "mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"",
                "sh",
            ])
            .arg(hosts.path())
            .arg(std::env::current_exe().unwrap())
            .arg("--exact")
            .arg(test_path(name))
            .args(["--nocapture", "--test-threads=1"])
            .env(IN_NETNS, &ns.0),
    );
    for line in out.stderr.lines().filter(|l| l.starts_with("docker pull")) {
        eprintln!("{line}");
    }
    assert!(
        out.ok && out.stdout.contains("1 passed"),
        "{name} in netns {}:\n{}\n{}",
        ns.0,
        out.stdout,
        out.stderr
    );
}

/// `name`'s path as libtest lists it: this module's path without the crate's name.
fn test_path(name: &str) -> String {
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    format!("{module}::{name}")
}

/// Accepts on `listen` and relays each connection to `to`, on threads, until the process ends.
fn relay(listen: SocketAddr, to: SocketAddr) {
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            std::thread::spawn(move || {
                let Ok(mut server) = TcpStream::connect(to) else {
                    return;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
}

/// A server certificate for registry-1.docker.io, signed by the root `ca` of `pki`.
fn hub_certificate(pki: &Pki, ca: &str) -> (PathBuf, PathBuf) {
    let openssl = |args: &[&str]| run(Command::new("openssl").current_dir(&pki.dir).args(args));
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "hub.key",
        "-out",
        "hub.csr",
        "-subj",
        "/CN=registry-1.docker.io",
    ]);
    std::fs::write(
        pki.dir.join("hub.ext"),
        "subjectAltName=DNS:registry-1.docker.io\nbasicConstraints=CA:FALSE\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "hub.csr",
        "-CA",
        &format!("{ca}.pem"),
        "-CAkey",
        &format!("{ca}.key"),
        "-set_serial",
        "0x77",
        "-days",
        "2",
        "-extfile",
        "hub.ext",
        "-out",
        "hub.pem",
    ]);
    (pki.pem("hub"), pki.key("hub"))
}

/// The `Environment=` assignments of a systemd unit or drop-in.
fn unit_environment(text: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("Environment=")) {
        for (i, item) in line.split('"').enumerate() {
            if i % 2 == 1 {
                let (k, v) = item.split_once('=').expect("KEY=VALUE");
                vars.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    vars
}

const NOBODY: u32 = 65534;

#[test]
fn docker_engine_falls_back_around_a_denial_unless_egress_is_closed() {
    if std::env::var_os(IN_NETNS).is_none() {
        assert!(
            Path::new("/usr/sbin/dockerd").exists() && Path::new("/usr/bin/docker").exists(),
            "the Docker engine is needed: apt-get install -y docker.io"
        );
        assert!(
            exec(Command::new("nft").arg("--version")).ok,
            "nft is needed: apt-get install -y nftables"
        );
        return run_in_netns("docker_engine_falls_back_around_a_denial_unless_egress_is_closed");
    }
    // From here on, inside the namespace: 127.0.0.1 is ours alone.
    require_tools();
    let dir = tempdir();
    let work = dir.path().to_owned();
    // portcullis runs as nobody (the egress rule exempts its user): let it in.
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755)).unwrap();

    // "registry-1.docker.io": a TLS registry behind 127.0.0.1:443, from a CA that dockerd
    // (SSL_CERT_FILE) and portcullis (ca_file) trust.
    let pki = Pki::new(&work.join("pki"));
    let ca = pki.root("ca");
    let (cert, key) = hub_certificate(&pki, "ca");
    let mut hub = Registry::start(&work);
    let release = CosignKey::generate();
    release.write_public(&work.join("release.pub"));
    for tag in ["a", "b", "c"] {
        let repo = format!("library/allowed-{tag}");
        push(Image::Small, &hub, &format!("{repo}:latest"));
        let digest = manifest_digest_in_registry(&hub, &repo, "latest");
        sign(&hub, &release, &repo, &digest);
        push(
            Image::DockerV2s2,
            &hub,
            &format!("library/denied-{tag}:latest"),
        );
    }
    hub.secure(None, Some((&cert, &key)));
    relay(SocketAddr::from(([127, 0, 0, 1], 443)), hub.addr);

    // portcullis, as nobody, with docker.io at https://registry-1.docker.io.
    let bin = work.join("portcullis");
    std::fs::copy(BIN, &bin).unwrap();
    let wrapper = work.join("portcullis-as-nobody");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups {} \"$@\"\n",
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let proxy_dir = work.join("proxy");
    std::fs::create_dir_all(&proxy_dir).unwrap();
    std::os::unix::fs::chown(&proxy_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let config = gate_config(
        "https://registry-1.docker.io",
        Some(&ca),
        &work.join("release.pub"),
        &["docker.io"],
        "docker.io/library/allowed-*",
    );
    let proxy = Proxy::start(&wrapper, &proxy_dir, &config);

    let ctd = Containerd::start(&work.join("ctd"));
    let daemon_json = substituted(&shipped("docker/daemon.json"), SHIPPED_PROXY, &proxy.host());
    let ca_env = ("SSL_CERT_FILE", ca.to_str().unwrap());
    let docker = Dockerd::start(&work.join("dk"), &ctd.socket, &daemon_json, &[ca_env]);
    let pulled = |d: &Dockerd, image: &str| {
        d.docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .ok
    };

    // What dockerd fetched of the signed images itself, not through portcullis: never anything.
    let allowed_direct = |hub: &Registry| {
        ["a", "b", "c"].map(|t| direct_requests(hub, &format!("library/allowed-{t}")))
    };
    let allowed_before = allowed_direct(&hub);

    // 1. The egress open: the signed image comes through portcullis; the denied one comes too,
    //    from the registry itself, after portcullis' 403.
    let out = docker.docker(&["pull", "allowed-a"]);
    assert!(
        out.ok,
        "docker pull allowed-a: {}\n{}",
        out.stderr,
        proxy.log_contents()
    );
    let before = direct_requests(&hub, "library/denied-a").len();
    let out = docker.docker(&["pull", "denied-a"]);
    assert!(
        out.ok && pulled(&docker, "denied-a"),
        "Docker was expected to fall back to registry-1.docker.io: {}{}\n{}",
        out.stdout,
        out.stderr,
        read_log(&docker.log)
    );
    assert!(proxy.log_contents().contains("docker.io/library/denied-a"));
    assert!(
        direct_requests(&hub, "library/denied-a").len() > before,
        "dockerd itself fetched denied-a from the registry"
    );

    // 2. The shipped egress rule, for this namespace's addresses and with nobody as portcullis'
    //    user: the fallback is refused, so the denial is final; portcullis still gets through.
    let rules = substituted(
        &substituted(
            &shipped("nftables/portcullis-egress.nft"),
            "127.0.0.1 . 5000",
            &format!("127.0.0.1 . {}", proxy.addr.port()),
        ),
        "define portcullis_user = \"portcullis\"",
        "define portcullis_user = \"nobody\"",
    );
    let rules_file = work.join("egress.nft");
    std::fs::write(&rules_file, rules).unwrap();
    run(Command::new("nft").arg("-c").arg("-f").arg(&rules_file));
    run(Command::new("nft").arg("-f").arg(&rules_file));
    let before = direct_requests(&hub, "library/denied-b");
    let out = docker.docker(&["pull", "denied-b"]);
    assert!(!out.ok, "denied-b arrived through the egress rule");
    assert!(!pulled(&docker, "denied-b"));
    let after = direct_requests(&hub, "library/denied-b");
    assert_eq!(
        after, before,
        "dockerd reached the registry through the egress rule"
    );
    eprintln!(
        "docker pull denied-b behind the egress rule: {}",
        out.stderr.trim()
    );
    let out = docker.docker(&["pull", "allowed-b"]);
    assert!(
        out.ok,
        "docker pull allowed-b behind the egress rule: {}\n{}",
        out.stderr,
        proxy.log_contents()
    );
    let counters = run(Command::new("nft").args([
        "list",
        "chain",
        "inet",
        "portcullis_egress",
        "registry_traffic",
    ]));
    assert!(
        counters.contains("reject with tcp reset")
            && !counters.contains("counter packets 0 bytes 0 reject with tcp reset"),
        "the rule refused dockerd's fallback:\n{counters}"
    );
    run(Command::new("nft").args(["delete", "table", "inet", "portcullis_egress"]));
    drop(docker);

    // 3. No firewall, the dockerd drop-in instead: the same, for dockerd alone.
    let mut env = unit_environment(&shipped("docker/docker.service.d/portcullis-only.conf"));
    assert!(env.iter().any(|(k, _)| k == "HTTPS_PROXY"), "{env:?}");
    env.push(("SSL_CERT_FILE".into(), ca.display().to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let docker = Dockerd::start(&work.join("dk-dropin"), &ctd.socket, &daemon_json, &env);
    let before = direct_requests(&hub, "library/denied-c");
    let out = docker.docker(&["pull", "denied-c"]);
    assert!(!out.ok, "denied-c arrived with the drop-in");
    assert!(!pulled(&docker, "denied-c"));
    let after = direct_requests(&hub, "library/denied-c");
    assert_eq!(
        after, before,
        "dockerd reached the registry with the drop-in"
    );
    eprintln!(
        "docker pull denied-c with the drop-in: {}",
        out.stderr.trim()
    );
    let out = docker.docker(&["pull", "allowed-c"]);
    assert!(
        out.ok,
        "docker pull allowed-c with the drop-in: {}\n{}",
        out.stderr,
        proxy.log_contents()
    );
    assert!(
        allowed_direct(&hub) == allowed_before,
        "dockerd fetched a signed image around portcullis"
    );
}
