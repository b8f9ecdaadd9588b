//! Upstream faults, injected in process in front of (or instead of) the real registry: rate
//! limits, 5xx, stalls, refused connections, cut bodies, and the bearer token flow.

use std::path::Path;
use std::time::Duration;

use portcullis_testkit::http::{self, Response};
use portcullis_testkit::{
    push, require_tools, tempdir, ConfigBuilder, Fault, FaultServer, Image, Proxy, Registry,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const UPSTREAM: &str = "upstream.test";

/// Portcullis in front of the upstream `upstream.test` at `url`, which gets 1 s to answer; its
/// metrics listener (where `/readyz` has the details) on `metrics`.
fn proxy_to(work: &Path, sub: &str, url: &str, metrics: u16) -> Proxy {
    let config = ConfigBuilder::pull_through(UPSTREAM, url)
        .with_upstream(UPSTREAM, |u| u.read_timeout = Duration::from_secs(1))
        .metrics(metrics);
    Proxy::start(Path::new(BIN), &work.join(sub), &config)
}

/// [`UPSTREAM`] at `url`, with credentials from the files `user` and `pass`.
fn with_credentials(url: &str, user: &Path, pass: &Path) -> ConfigBuilder {
    ConfigBuilder::pull_through(UPSTREAM, url).with_upstream(UPSTREAM, |u| {
        u.username_file = Some(user.to_owned());
        u.password_file = Some(pass.to_owned());
    })
}

fn code(resp: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_map_to_oci_errors() {
    let work = tempdir();
    let limited = FaultServer::start(Fault::Status(429));
    let broken = FaultServer::start(Fault::Status(500));
    let stalled = FaultServer::start(Fault::Stall);
    let refused = format!("http://127.0.0.1:{}", portcullis_testkit::free_port());
    let blob = format!("sha256:{}", "1".repeat(64));
    for (sub, url, status, expected) in [
        ("limited", limited.url(), 429, "TOOMANYREQUESTS"),
        ("broken", broken.url(), 503, "UNAVAILABLE"),
        ("stalled", stalled.url(), 503, "UNAVAILABLE"),
        ("refused", refused.clone(), 503, "UNAVAILABLE"),
    ] {
        let metrics = portcullis_testkit::free_port();
        let p = proxy_to(work.path(), sub, &url, metrics);
        for path in [
            "/v2/a/b/manifests/v1".to_owned(),
            format!("/v2/a/b/manifests/{blob}"),
        ] {
            let resp = http::get(&format!("{}{path}", p.url())).await;
            assert_eq!(
                (resp.status, code(&resp).as_str()),
                (status, expected),
                "{sub} {path}"
            );
        }
        // Readiness reports the upstream's state (on the metrics listener only: the registry
        // port answers anyone) but never fails on it.
        let public = http::get(&format!("{}/readyz", p.url())).await;
        assert_eq!(public.status, 200);
        assert_eq!(&public.body[..], br#"{"ready":true}"#);
        let ready = http::get(&format!("http://127.0.0.1:{metrics}/readyz")).await;
        assert_eq!(ready.status, 200);
        let r: serde_json::Value = serde_json::from_slice(&ready.body).unwrap();
        let state = &r["upstreams"]["upstream.test"]["state"];
        let expected_state = if status == 429 {
            "reachable"
        } else {
            "unreachable"
        };
        if sub != "broken" {
            assert_eq!(state, expected_state, "{sub}: {r}");
        }
        assert!(std::fs::read_dir(p.data_dir.join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none());
    }
    assert!(stalled.connections() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_short_is_aborted_and_not_cached() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Big, &upstream, "test/big:v1");
    let cut = FaultServer::start(Fault::Cut {
        to: upstream.addr,
        after: 4 << 20,
    });
    let p = proxy_to(
        work.path(),
        "p",
        &cut.url(),
        portcullis_testkit::free_port(),
    );
    let manifest = http::get(&format!("{}/v2/test/big/manifests/v1", p.url())).await;
    assert_eq!(manifest.status, 200, "{}", p.log_contents());
    let m: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let size = m["layers"][0]["size"].as_u64().unwrap() as usize;
    let url = format!("{}/v2/test/big/blobs/{layer}", p.url());
    match http::try_request("GET", &url, &[], Default::default()).await {
        Err(_) => {}
        Ok(resp) => assert!(resp.status != 200 || resp.body.len() < size),
    }
    let hex = layer.strip_prefix("sha256:").unwrap();
    assert!(!p.data_dir.join("blobs/sha256").join(hex).exists());
    let log = p.wait_for_log("nothing cached");
    assert!(log.contains("nothing cached"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_token_flow_uses_credentials_from_a_file_and_caches_the_token() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    let gate = FaultServer::start(Fault::TokenGate {
        to: upstream.addr,
        user: "puller".into(),
        pass: "s3cret-pass".into(),
        token: "tok-123".into(),
    });
    let secret = work.path().join("password");
    std::fs::write(&secret, "s3cret-pass\n").unwrap();
    let user = work.path().join("username");
    std::fs::write(&user, "puller").unwrap();
    let config = with_credentials(&gate.url(), &user, &secret);
    let p = Proxy::start(Path::new(BIN), &work.path().join("p"), &config);
    let m = http::get(&format!("{}/v2/test/small/manifests/v1", p.url())).await;
    assert_eq!(m.status, 200, "{}", p.log_contents());
    let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    for layer in v["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        let b = http::get(&format!("{}/v2/test/small/blobs/{d}", p.url())).await;
        assert_eq!(b.status, 200);
    }
    assert_eq!(
        gate.tokens_issued(),
        1,
        "one token, cached for later requests"
    );
    let log = p.log_contents();
    assert!(
        !log.contains("s3cret-pass") && !log.contains("tok-123"),
        "no secret in logs"
    );

    // Without credentials the token endpoint refuses, and the client hears DENIED.
    let anonymous = Proxy::start(
        Path::new(BIN),
        &work.path().join("anon"),
        &ConfigBuilder::pull_through(UPSTREAM, &gate.url()),
    );
    let resp = http::get(&format!("{}/v2/test/small/manifests/v1", anonymous.url())).await;
    assert_eq!((resp.status, code(&resp).as_str()), (403, "DENIED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_redirects_are_followed_without_credentials_to_another_host() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    let cdn = FaultServer::start(Fault::Record { to: upstream.addr });
    let gate = FaultServer::start(Fault::BasicRedirect {
        to: upstream.addr,
        cdn: cdn.url(),
    });
    std::fs::write(work.path().join("user"), "puller").unwrap();
    std::fs::write(work.path().join("pass"), "pw").unwrap();
    let config = with_credentials(
        &gate.url(),
        &work.path().join("user"),
        &work.path().join("pass"),
    );
    let p = Proxy::start(Path::new(BIN), &work.path().join("p"), &config);
    let m = http::get(&format!("{}/v2/test/small/manifests/v1", p.url())).await;
    assert_eq!(m.status, 200, "{}", p.log_contents());
    let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    for layer in v["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        let b = http::get(&format!("{}/v2/test/small/blobs/{d}", p.url())).await;
        assert_eq!(b.status, 200, "{}", p.log_contents());
        assert_eq!(portcullis_testkit::sha256_hex(&b.body), d);
    }
    assert!(cdn.connections() > 0, "blobs came through the redirect");
    assert_eq!(
        cdn.authorized_requests(),
        0,
        "no credentials sent to another host"
    );
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let work = tempdir();
    let mut p = proxy_to(
        work.path(),
        "p",
        "http://127.0.0.1:9",
        portcullis_testkit::free_port(),
    );
    let status = p.terminate();
    assert!(status.success(), "{status:?}");
    assert!(p.log_contents().contains("shutting down"));
}
