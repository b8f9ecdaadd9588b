//! Podman and the Docker engine (as a `registry-mirrors` client) pulling over TLS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_testkit::{manifest_digest_in_registry, push, Containerd, Image};

use crate::support::*;

#[test]
fn podman_pulls_over_tls_with_cert_dir() {
    assert!(
        Path::new("/usr/bin/podman").exists(),
        "podman is needed: apt-get install -y podman"
    );
    let w = TlsWorld::new();
    let proxy = TlsProxy::start(
        &w.work.join("proxy"),
        &w.config(&w.upstream.host(), None, ""),
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

/// A private dockerd (vfs, no networking, a dead HTTP proxy so nothing reaches the real Hub)
/// on a given containerd. SIGTERMed (then SIGKILLed) on drop.
struct Dockerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path, containerd_socket: &Path, daemon_json: &str) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("daemon.json");
        std::fs::write(&config, daemon_json).unwrap();
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        let out = std::fs::File::create(&log).unwrap();
        let exec_root = dir.join("e");
        let child = Command::new("dockerd")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1,localhost")
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
    let proxy = TlsProxy::start(
        &w.work.join("proxy"),
        &w.config("docker.io", None, ""),
        &["-k"],
    );
    let _cert = DockerCert::install(&proxy.host(), &w.pki.pem("root"));
    let ctd = Containerd::start(&w.work.join("ctd"));
    let dockerd = Dockerd::start(
        &w.work.join("dk"),
        &ctd.socket,
        &format!("{{\"registry-mirrors\": [\"{}\"]}}", proxy.url()),
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
