//! Fixture images built with `umoci` into one OCI layout, and moved around with `skopeo`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::registry::Registry;
use crate::tools::{blocking_http, sha256_hex};

/// Bytes of random data in the `big` image's one file: 50 MiB plus a little, so that the
/// gzip-compressed layer (random data does not compress) is at least 50 MiB.
pub const BIG_FILE_BYTES: u64 = 50 * 1024 * 1024 + 64 * 1024;

/// Media types a registry client accepts for a manifest, joined into one Accept value.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Prefix of the per-process fixture dirs in `/tmp`; the owner's PID follows.
const DIR_PREFIX: &str = "portcullis-fixtures-";

/// The fixture images of this process.
pub struct Fixtures {
    /// OCI image layout holding the tags `small`, `big`, `multi` (an index over `small` and
    /// `small-arm64`) and `small-arm64`.
    pub layout: PathBuf,
}

/// Which fixture to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// OCI manifest, one small layer (a few files), linux/amd64.
    Small,
    /// OCI manifest, one layer of about 50 MiB of random bytes, linux/amd64.
    Big,
    /// OCI image index: `small` (linux/amd64) and `small-arm64` (linux/arm64). Pushed with `--all`.
    Multi,
    /// The `small` image pushed as a Docker schema 2 manifest (`--format v2s2`).
    DockerV2s2,
}

impl Image {
    /// The tag in the fixture layout.
    pub fn tag(self) -> &'static str {
        match self {
            Image::Small | Image::DockerV2s2 => "small",
            Image::Big => "big",
            Image::Multi => "multi",
        }
    }
}

impl Fixtures {
    /// `oci:<layout>:<tag>`, a skopeo source reference.
    pub fn oci_ref(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.layout.display())
    }

    /// Digest of the manifest (or index) tagged `tag` in the layout. Pushing `Small`, `Big`
    /// or `Multi` keeps it; `DockerV2s2` gets a new digest.
    pub fn manifest_digest(&self, tag: &str) -> String {
        descriptor(&self.layout, tag)["digest"]
            .as_str()
            .expect("digest")
            .to_string()
    }
}

/// The fixtures, built on first use in `/tmp/portcullis-fixtures-<pid>-*` (about 50 MiB).
///
/// The dir is kept for the life of the process; since statics are never dropped, it is removed
/// by the next process that builds fixtures (dirs whose PID is no longer alive are deleted).
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(build)
}

/// `skopeo copy` a fixture into `registry` as `repo_tag` (`repo:tag`). Panics with skopeo's
/// stderr on failure.
pub fn push(image: Image, registry: &Registry, repo_tag: &str) {
    let fx = fixtures();
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    match image {
        Image::DockerV2s2 => args.extend(["--format", "v2s2"]),
        Image::Multi => args.push("--all"),
        Image::Small | Image::Big => {}
    }
    let src = fx.oci_ref(image.tag());
    let dest = format!("docker://{}/{repo_tag}", registry.host());
    args.extend([src.as_str(), dest.as_str()]);
    if let Err(e) = skopeo(&args) {
        panic!("push {image:?} to {dest} failed:\n{e}");
    }
}

/// `skopeo copy --src-tls-verify=false docker://SRC dir:DEST`; `Err(stderr)` on failure.
/// `dest_dir`'s parent is created if missing.
pub fn skopeo_copy(src_ref: &str, dest_dir: &Path) -> Result<(), String> {
    copy_to_dir(src_ref, dest_dir, &[])
}

/// As [`skopeo_copy`], with `--all` (every platform of an index).
pub fn skopeo_copy_all(src_ref: &str, dest_dir: &Path) -> Result<(), String> {
    copy_to_dir(src_ref, dest_dir, &["--all"])
}

fn copy_to_dir(src_ref: &str, dest_dir: &Path, flags: &[&str]) -> Result<(), String> {
    if let Some(parent) = dest_dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let src = format!("docker://{src_ref}");
    let dest = format!("dir:{}", dest_dir.display());
    let mut args = vec!["copy", "--src-tls-verify=false"];
    args.extend(flags);
    args.extend([src.as_str(), dest.as_str()]);
    skopeo(&args)
}

/// `Docker-Content-Digest` of `repo:tag`, asked with a HEAD accepting all four manifest types.
pub fn manifest_digest_in_registry(registry: &Registry, repo: &str, tag: &str) -> String {
    manifest_descriptor(registry, repo, tag).digest
}

/// What a registry says of a manifest when asked with a HEAD.
pub(crate) struct ManifestHead {
    pub(crate) digest: String,
    pub(crate) media_type: String,
    pub(crate) size: u64,
}

/// `Docker-Content-Digest`, `Content-Type` and `Content-Length` of `repo:reference` (a tag or a
/// digest), asked with a HEAD accepting all four manifest types. Panics unless it is there.
pub(crate) fn manifest_descriptor(
    registry: &Registry,
    repo: &str,
    reference: &str,
) -> ManifestHead {
    let path = format!("/v2/{repo}/manifests/{reference}");
    let r = blocking_http(
        registry.addr,
        "HEAD",
        &path,
        &[("Accept", MANIFEST_ACCEPT)],
        &[],
    )
    .unwrap_or_else(|e| panic!("HEAD {path} on {}: {e}", registry.host()));
    assert_eq!(r.status, 200, "HEAD {path} on {}", registry.host());
    let header = |name: &str| {
        r.header(name)
            .unwrap_or_else(|| panic!("HEAD {path}: no {name}"))
            .to_owned()
    };
    ManifestHead {
        digest: header("docker-content-digest"),
        media_type: header("content-type"),
        size: header("content-length")
            .parse()
            .unwrap_or_else(|e| panic!("HEAD {path}: Content-Length: {e}")),
    }
}

/// Runs skopeo (without a signature policy file); `Err` holds its stderr.
fn skopeo(args: &[&str]) -> Result<(), String> {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run skopeo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "skopeo {} ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn umoci(args: &[&str]) {
    let out = Command::new("umoci")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run umoci: {e}"));
    assert!(
        out.status.success(),
        "umoci {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn build() -> Fixtures {
    remove_stale_dirs();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir_in("/tmp")
        .expect("create fixtures dir")
        .keep();
    let layout = dir.join("oci");
    let lay = layout.to_str().expect("utf-8 path");
    umoci(&["init", "--layout", lay]);

    let files = dir.join("small-files");
    write(
        &files.join("hello.txt"),
        b"hello from portcullis fixtures\n",
    );
    write(&files.join("etc/os-release"), b"ID=portcullis-fixture\n");
    write(&files.join("bin/README"), b"no binaries here\n");
    image(lay, "small", "amd64", &files, "/portcullis");

    let arm = dir.join("arm-files");
    write(&arm.join("hello.txt"), b"hello from the arm64 fixture\n");
    image(lay, "small-arm64", "arm64", &arm, "/portcullis");

    let big = dir.join("big-files");
    random_file(&big.join("random.bin"), BIG_FILE_BYTES);
    image(lay, "big", "amd64", &big, "/data");
    let _ = std::fs::remove_dir_all(&big);

    add_index(
        &layout,
        "multi",
        &[("small", "amd64"), ("small-arm64", "arm64")],
    );
    Fixtures { layout }
}

/// New image `tag` holding `src` at `target` in one layer, with os linux and `arch`.
fn image(layout: &str, tag: &str, arch: &str, src: &Path, target: &str) {
    let image = format!("{layout}:{tag}");
    umoci(&["new", "--image", &image]);
    let src = src.to_str().expect("utf-8 path");
    umoci(&["insert", "--image", &image, src, target]);
    umoci(&[
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        arch,
    ]);
}

/// Writes an OCI index over the tagged manifests into the layout, tagged `tag`.
fn add_index(layout: &Path, tag: &str, platforms: &[(&str, &str)]) {
    let manifests: Vec<Value> = platforms
        .iter()
        .map(|(t, arch)| {
            let mut d = descriptor(layout, t);
            d.as_object_mut().expect("object").remove("annotations");
            d["platform"] = json!({"architecture": arch, "os": "linux"});
            d
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    let bytes = serde_json::to_vec(&index).expect("serialize index");
    let digest = sha256_hex(&bytes);
    let hex = digest.trim_start_matches("sha256:");
    write(&layout.join("blobs/sha256").join(hex), &bytes);
    let index_path = layout.join("index.json");
    let mut top: Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("read index.json"))
            .expect("parse index.json");
    top["manifests"]
        .as_array_mut()
        .expect("manifests array")
        .push(json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    write(&index_path, &serde_json::to_vec(&top).expect("serialize"));
}

/// The layout's index.json entry tagged `tag`.
fn descriptor(layout: &Path, tag: &str) -> Value {
    let top: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("parse index.json");
    top["manifests"]
        .as_array()
        .expect("manifests array")
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()))
        .clone()
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// `len` bytes from splitmix64 with a fixed seed: incompressible, fast, reproducible.
fn random_file(path: &Path, len: u64) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create dir");
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create"));
    let mut state: u64 = 0x5EED_F1C5_7E57_0001;
    for _ in 0..len / 8 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.write_all(&(z ^ (z >> 31)).to_le_bytes())
            .expect("write random");
    }
    out.flush().expect("flush random file");
}

/// Deletes fixture dirs left in `/tmp` by processes that are gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
