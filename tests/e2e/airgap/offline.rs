//! 2. Offline misses, and `serve --offline`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_testkit::cosign::signature_tag;
use portcullis_testkit::http;
use portcullis_testkit::{free_port, sha256_hex, Fault, FaultServer, Image};

use super::layout::{code_and_message, skopeo_oci};
use super::support::{Instance, Mirrored, BIN};

/// `portcullis serve --config FILE --offline`, which [`Proxy::start`] cannot pass. Killed on drop.
struct FlagServe {
    addr: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl FlagServe {
    fn start(instance: &Instance) -> FlagServe {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = instance.write_config("flag-serve.toml", addr);
        let log = instance.workdir.join("flag-serve.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--offline")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut s = FlagServe { addr, log, child };
        let start = Instant::now();
        while !v2_answers_200(addr) {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("serve --offline exited ({status}):\n{}", s.log_contents());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "serve --offline not ready:\n{}",
                s.log_contents()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log_contents(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for FlagServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn v2_answers_200(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    raw.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_misses_answer_404_saying_offline_and_tags_never_expire() {
    let m = Mirrored::new();
    let layout = m.w.work.join("export");
    m.a.export(&[m.app_ref()], &layout).expect_code(0);
    let fault = FaultServer::start(Fault::Status(500));
    let b = m.w.offline("b", &fault);
    b.import(&layout, None).expect_code(0);
    let p = b.serve();
    let base = p.url();
    let log = || p.log_contents();

    // tag_ttl and max_stale are 1 s: offline, the last verified mapping holds anyway.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = http::get(&format!("{base}/v2/keyed/app/manifests/v1")).await;
    assert_eq!(
        resp.status,
        200,
        "a held tag, past tag_ttl and max_stale\n{}",
        log()
    );
    assert_eq!(sha256_hex(&resp.body), m.app);

    let zeros = format!("sha256:{}", "0".repeat(64));
    for path in [
        "keyed/app/manifests/v2".to_owned(),
        "keyed/multi/manifests/v1".to_owned(),
        "keyed/nothing/manifests/latest".to_owned(),
        format!("keyed/app/manifests/{zeros}"),
    ] {
        let resp = http::get(&format!("{base}/v2/{path}")).await;
        let (status, code, message) = code_and_message(&resp);
        assert_eq!(
            (status, code.as_str()),
            (404, "MANIFEST_UNKNOWN"),
            "GET /v2/{path}: {message}\n{}",
            log()
        );
        assert!(
            message.contains("offline"),
            "GET /v2/{path}: {message:?} does not say offline"
        );
        let head = http::request("HEAD", &format!("{base}/v2/{path}"), &[]).await;
        assert_eq!(head.status, 404, "HEAD /v2/{path}");
    }

    let resp = http::get(&format!("{base}/v2/keyed/app/blobs/{zeros}")).await;
    let (status, code, message) = code_and_message(&resp);
    assert!(
        matches!(
            (status, code.as_str()),
            (404, "BLOB_UNKNOWN") | (403, "DENIED")
        ),
        "a blob not held: {status} {code} {message}\n{}",
        log()
    );
    assert_eq!(
        fault.connections(),
        0,
        "offline connected upstream\n{}",
        log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_offline_flag_without_upstreams_routes_names_like_docker_references() {
    let m = Mirrored::new();
    // A layout of `docker.io/library/fixture:v1` written by skopeo, signed by `release`.
    let fixture = m.w.push(Image::Small, "library/fixture", "v1");
    m.w.sign("library/fixture", "docker.io/library/fixture", &fixture);
    let oci = m.w.work.join("fixture-oci");
    let sig = signature_tag(&fixture);
    for tag in ["v1", sig.as_str()] {
        skopeo_oci(&m.w.name(&format!("library/fixture:{tag}")), &oci, tag);
    }
    let exported = m.w.work.join("export");
    m.export(&exported);

    // Imported with `[server] offline = true`, served by a config without it plus `--offline`;
    // both name the same cache.
    let c = m.w.bare("c", true);
    c.import(&oci, Some("docker.io/library/fixture"))
        .expect_code(0)
        .expect_line("imported", "docker.io/library/fixture:v1", &fixture);
    c.import(&exported, None)
        .expect_code(0)
        .expect_line("imported", &m.app_ref(), &m.app);

    let s = FlagServe::start(&m.w.bare("c", false));
    let base = s.url();
    // One-segment names are docker.io/library/<name>; a first segment with ':' is the registry.
    let host = m.w.host();
    for (path, digest) in [
        ("fixture/manifests/v1".to_owned(), &fixture),
        ("library/fixture/manifests/v1".to_owned(), &fixture),
        (
            "docker.io/library/fixture/manifests/v1".to_owned(),
            &fixture,
        ),
        (format!("{host}/keyed/app/manifests/v1"), &m.app),
        (format!("keyed/app/manifests/v1?ns={host}"), &m.app),
    ] {
        let resp = http::get(&format!("{base}/v2/{path}")).await;
        assert_eq!(
            resp.status,
            200,
            "GET /v2/{path}: {}\n{}",
            String::from_utf8_lossy(&resp.body),
            s.log_contents()
        );
        assert_eq!(&sha256_hex(&resp.body), digest, "/v2/{path}");
    }
    // `keyed/app` alone is docker.io/keyed/app (which no rule covers), not the held image.
    let resp = http::get(&format!("{base}/v2/keyed/app/manifests/v1")).await;
    assert_ne!(resp.status, 200, "docker.io/keyed/app is not held");
    // `alpine` is docker.io/library/alpine: allowed by a rule, not held, so an offline miss.
    let resp = http::get(&format!("{base}/v2/alpine/manifests/latest")).await;
    let (status, code, message) = code_and_message(&resp);
    assert_eq!(
        (status, code.as_str()),
        (404, "MANIFEST_UNKNOWN"),
        "{message}\n{}",
        s.log_contents()
    );
    assert!(message.contains("offline"), "{message}");
    // A registry the cache holds nothing of, named by the client, is refused as a name: made-up
    // `?ns=` values and host prefixes get no namespace of their own.
    for path in [
        "keyed/app/manifests/v1?ns=made-up.example".to_owned(),
        "made-up.example/keyed/app/manifests/v1".to_owned(),
        "127.0.0.9:1/keyed/app/manifests/v1".to_owned(),
    ] {
        let resp = http::get(&format!("{base}/v2/{path}")).await;
        let (status, code, message) = code_and_message(&resp);
        assert_eq!(
            (status, code.as_str()),
            (404, "NAME_UNKNOWN"),
            "GET /v2/{path}: {message}"
        );
    }
}
