//! 6. Health.

use std::path::Path;

use portcullis_testkit::http;
use portcullis_testkit::{free_port, require_tools, tempdir, ConfigBuilder, Proxy, Registry};

use super::support::BIN;

#[tokio::test(flavor = "multi_thread")]
async fn healthz_and_readyz_on_both_listeners() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    let mport = free_port();
    let p = Proxy::start(
        Path::new(BIN),
        &work.path().join("p"),
        &ConfigBuilder::pull_through(&upstream.host(), &upstream.url()).metrics(mport),
    );
    for base in [p.url(), format!("http://127.0.0.1:{mport}")] {
        let live = http::get(&format!("{base}/healthz")).await;
        assert_eq!(live.status, 200, "{base}/healthz");
        assert_eq!(&live.body[..], b"ok", "{base}/healthz");
        let ready = http::get(&format!("{base}/readyz")).await;
        assert_eq!(ready.status, 200, "{base}/readyz");
        let v: serde_json::Value = serde_json::from_slice(&ready.body)
            .unwrap_or_else(|e| panic!("{base}/readyz is not JSON ({e}): {:?}", ready.body));
        assert_eq!(v["ready"], serde_json::Value::Bool(true), "{v}");
        let head = http::request("HEAD", &format!("{base}/healthz"), &[]).await;
        assert_eq!(head.status, 200, "HEAD {base}/healthz");
    }
}
