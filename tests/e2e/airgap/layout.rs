//! OCI layouts and responses.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_testkit::cosign::signature_tag;
pub(crate) use portcullis_testkit::dir_files as files;
use portcullis_testkit::http::{self, Response};
use serde_json::Value;

/// The OCI annotation that names an entry of a layout's index.json.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub(crate) fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

pub(crate) fn index_of(layout: &Path) -> Value {
    read_json(&layout.join("index.json"))
}

pub(crate) fn ref_names(layout: &Path) -> Vec<String> {
    let mut names: Vec<String> = index_of(layout)["manifests"]
        .as_array()
        .expect("index.json has manifests")
        .iter()
        .filter_map(|d| d["annotations"][REF_NAME].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The descriptor of `layout`'s index.json entry named `name`.
pub(crate) fn entry(layout: &Path, name: &str) -> Value {
    index_of(layout)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"][REF_NAME] == name)
        .unwrap_or_else(|| {
            panic!(
                "no entry {name} in {}: {:?}",
                layout.display(),
                ref_names(layout)
            )
        })
        .clone()
}

pub(crate) fn write_index(layout: &Path, index: &Value) {
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(index).unwrap(),
    )
    .unwrap();
}

pub(crate) fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
}

/// `<name>:sha256-<hex>.sig`, the entry name of `digest`'s signature manifest in an export.
pub(crate) fn sig_name(name: &str, digest: &str) -> String {
    format!("{name}:{}", signature_tag(digest))
}

/// Copies a directory tree into fresh files (never hard links, so edits stay in the copy).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

pub(crate) fn code_and_message(resp: &Response) -> (u16, String, String) {
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    (
        resp.status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
        v["errors"][0]["message"].as_str().unwrap_or("").to_owned(),
    )
}

/// Asserts that `GET` and `HEAD` of `path` (under `/v2/`) do not answer 200.
pub(crate) async fn assert_not_served(base: &str, path: &str, log: &dyn Fn() -> String) {
    for method in ["GET", "HEAD"] {
        let resp = http::request(method, &format!("{base}/v2/{path}"), &[]).await;
        assert_ne!(
            resp.status,
            200,
            "{method} /v2/{path} must not be served\n{}",
            log()
        );
    }
}

/// `skopeo copy docker://<src> oci:<dir>:<tag>` from the (plain-HTTP) upstream.
pub(crate) fn skopeo_oci(src: &str, dir: &Path, tag: &str) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .arg(format!("docker://{src}"))
        .arg(format!("oci:{}:{tag}", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {src} to oci:{}:{tag}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
