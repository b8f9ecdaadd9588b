//! OCI 1.1 referrer artifacts in a distribution 2.8 registry, which has no referrers API: the
//! artifact manifest (with a `subject`) and the referrers tag schema, the `sha256-<hex>` tag
//! holding an OCI image index of the referrers, that clients and portcullis fall back to.

use serde_json::{json, Map, Value};

use crate::fixtures::manifest_descriptor;
use crate::registry::Registry;
use crate::tools::blocking_http;

/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index: the referrers tag's and the referrers API's answer.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The empty config of an artifact manifest; its blob is `{}`.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Pushes a referrer of `subject_digest` (a manifest already in `repo`) to `registry`, as an
/// OCI 1.1 client does against a registry without the referrers API, and returns the artifact
/// manifest's digest:
/// 1. uploads the empty config `{}` and `layer`;
/// 2. PUTs by digest an artifact manifest with `artifactType`, that one layer of
///    `layer_media_type`, `annotations` (if any) and `subject`, the subject's descriptor (its
///    media type and size from a HEAD);
/// 3. appends its descriptor (with `artifactType` and `annotations`) to the index tagged
///    `sha256-<hex>` (read, or started empty) and PUTs that back.
///
/// Blocking, plain HTTP only; panics with the registry's answer on any failure.
pub fn push_referrer(
    registry: &Registry,
    repo: &str,
    subject_digest: &str,
    artifact_type: &str,
    layer_media_type: &str,
    layer: &[u8],
    annotations: &[(&str, &str)],
) -> String {
    let subject = manifest_descriptor(registry, repo, subject_digest);
    let config = b"{}";
    let config_digest = registry.push_blob(repo, config);
    let layer_digest = registry.push_blob(repo, layer);
    let annotations: Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": EMPTY_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": layer_media_type, "digest": layer_digest, "size": layer.len() }],
        "subject": { "mediaType": subject.media_type, "digest": subject.digest, "size": subject.size },
    });
    let mut descriptor = json!({ "mediaType": OCI_MANIFEST, "artifactType": artifact_type });
    if !annotations.is_empty() {
        manifest["annotations"] = Value::Object(annotations.clone());
        descriptor["annotations"] = Value::Object(annotations);
    }
    let manifest = serde_json::to_vec(&manifest).expect("serialize artifact manifest");
    let digest = crate::sha256_hex(&manifest);
    registry.put_manifest(repo, &digest, OCI_MANIFEST, &manifest);
    descriptor["digest"] = digest.clone().into();
    descriptor["size"] = manifest.len().into();

    let tag = referrers_tag(subject_digest);
    let mut index = current_index(registry, repo, &tag)
        .unwrap_or_else(|| json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] }));
    index["manifests"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("{repo}:{tag} has no manifests list"))
        .push(descriptor);
    let index = serde_json::to_vec(&index).expect("serialize referrers index");
    registry.put_manifest(repo, &tag, OCI_INDEX, &index);
    digest
}

/// `sha256-<hex>`: the referrers tag of `subject_digest`.
pub fn referrers_tag(subject_digest: &str) -> String {
    let hex = subject_digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {subject_digest}"));
    format!("sha256-{hex}")
}

/// The index tagged `tag` in `repo`, or `None` if there is no such tag.
fn current_index(registry: &Registry, repo: &str, tag: &str) -> Option<Value> {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let resp = blocking_http(registry.addr, "GET", &path, &[("Accept", OCI_INDEX)], &[])
        .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", registry.host()));
    if resp.status == 404 {
        return None;
    }
    resp.expect_2xx("GET", &path);
    Some(serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("GET {path}: {e}")))
}
