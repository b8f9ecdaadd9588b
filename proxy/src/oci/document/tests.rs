use super::*;

const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn descriptor(media_type: &str) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": D, "size": 0 })
}

fn manifest() -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json"),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip")],
    })
}

fn index() -> serde_json::Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor(OCI_MANIFEST)],
    })
}

fn parse(v: &serde_json::Value, served: Option<&str>) -> Result<Document, Invalid> {
    Document::parse(&serde_json::to_vec(v).unwrap(), served)
}

#[test]
fn reads_manifests_and_indexes() {
    let m = parse(&manifest(), Some(OCI_MANIFEST)).unwrap();
    assert_eq!(m.media_type, OCI_MANIFEST);
    assert_eq!(m.blobs().unwrap().len(), 2);
    let i = parse(&index(), None).unwrap();
    assert_eq!(i.media_type, OCI_INDEX);
    assert_eq!(i.children().unwrap().len(), 1);
}

#[test]
fn unlabelled_documents_take_the_type_of_their_shape() {
    let mut m = manifest();
    m.as_object_mut().unwrap().remove("mediaType");
    assert_eq!(parse(&m, None).unwrap().media_type, OCI_MANIFEST);
    assert_eq!(
        parse(&m, Some(DOCKER_MANIFEST)).unwrap().media_type,
        DOCKER_MANIFEST
    );
    assert!(matches!(
        parse(&m, Some(OCI_INDEX)),
        Err(Invalid::MediaTypeMismatch { .. })
    ));
}

#[test]
fn refuses_index_manifest_ambiguity() {
    let mut both = manifest();
    both["manifests"] = index()["manifests"].clone();
    assert_eq!(parse(&both, None).unwrap_err(), Invalid::IndexAndManifest);
    let mut lying = index();
    lying["mediaType"] = OCI_MANIFEST.into();
    assert!(matches!(
        parse(&lying, None),
        Err(Invalid::MediaTypeMismatch { .. })
    ));
    assert!(matches!(
        parse(&manifest(), Some(OCI_INDEX)),
        Err(Invalid::ContentTypeMismatch { .. })
    ));
    let mut schema1 = index();
    schema1["fsLayers"] = serde_json::json!([]);
    assert_eq!(
        parse(&schema1, None).unwrap_err(),
        Invalid::IndexAndManifest
    );
}

#[test]
fn refuses_folded_and_duplicate_keys() {
    let bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"a/b","digest":"{D}","size":0}},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","MediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D}","size":0}}]}}"#
    );
    assert!(matches!(
        Document::parse(bytes.as_bytes(), None),
        Err(Invalid::Ambiguous(strict::Ambiguity::Folded { .. }))
    ));
    let dup = bytes.replace("\"MediaType\"", "\"mediaType\"");
    assert!(matches!(
        Document::parse(dup.as_bytes(), None),
        Err(Invalid::Ambiguous(strict::Ambiguity::Duplicate(_)))
    ));
    // U+017F LONG S folds to `s` in Go: `ſize` is `size`.
    let long_s = bytes.replace("\"MediaType\"", "\"\u{17F}ize\"");
    assert!(matches!(
        Document::parse(long_s.as_bytes(), None),
        Err(Invalid::Ambiguous(strict::Ambiguity::Folded {
            field: "size",
            ..
        }))
    ));
}

#[test]
fn refuses_other_types_and_versions() {
    let mut m = manifest();
    m["mediaType"] = "application/vnd.docker.distribution.manifest.v1+prettyjws".into();
    assert!(matches!(parse(&m, None), Err(Invalid::Unsupported(_))));
    let mut v = manifest();
    v["schemaVersion"] = 1.into();
    assert_eq!(parse(&v, None).unwrap_err(), Invalid::SchemaVersion(1));
    assert!(matches!(
        parse(&serde_json::json!({"schemaVersion": 2}), None),
        Err(Invalid::Shapeless)
    ));
    let mut sha512 = manifest();
    sha512["layers"][0]["digest"] = format!("sha512:{}", "a".repeat(128)).into();
    assert!(matches!(parse(&sha512, None), Err(Invalid::Digest(_))));
}
