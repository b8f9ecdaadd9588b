//! 7. JSON logs.

use std::path::Path;

use portcullis_testkit::http;
use portcullis_testkit::{
    push, require_tools, skopeo_copy, tempdir, ConfigBuilder, Image, Proxy, Registry,
};

use super::support::BIN;

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_are_json_with_request_fields() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    let host = upstream.host();
    let p = Proxy::start(
        Path::new(BIN),
        &work.path().join("p"),
        &ConfigBuilder::pull_through(&host, &upstream.url()).json_logs(),
    );
    skopeo_copy(
        &format!("{}/test/small:v1", p.host()),
        &work.path().join("out"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let refused = http::get(&format!("{}/v2/test/small/manifests/nope", p.url())).await;
    assert_eq!(refused.status, 404);
    // A reload's lines are JSON too.
    p.reload().expect("the same config reloads");
    let log = p.log_contents();

    let name = format!("{host}/test/small");
    let mut lines = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n--- whole log:\n{log}"));
        assert!(v.is_object(), "{line}");
        for key in ["timestamp", "level", "fields", "target"] {
            assert!(v.get(key).is_some(), "no {key:?}: {line}");
        }
        lines.push(v);
    }
    let requests: Vec<_> = lines
        .iter()
        .filter(|v| v["fields"]["name"] == serde_json::Value::String(name.clone()))
        .collect();
    assert!(
        !requests.is_empty(),
        "no line with fields.name = {name}:\n{log}"
    );
    for v in &requests {
        for key in ["reference", "cache"] {
            assert!(v["fields"][key].is_string(), "fields.{key}: {v}");
        }
    }
    let manifest_line = requests
        .iter()
        .find(|v| v["fields"]["reference"] == "v1")
        .unwrap_or_else(|| panic!("no request line for the manifest v1:\n{log}"));
    let verdict = manifest_line["fields"]["verdict"]
        .as_str()
        .unwrap_or_else(|| panic!("a manifest's request line has a verdict: {manifest_line}"));
    assert!(verdict.contains("allow"), "{manifest_line}");
    let blob_line = requests
        .iter()
        .find(|v| {
            v["fields"]["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with("sha256:"))
        })
        .unwrap_or_else(|| panic!("no request line for a blob:\n{log}"));
    assert!(blob_line["fields"]["cache"].is_string());
    assert!(
        lines.iter().any(|v| v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("config reloaded"))),
        "{log}"
    );
}
