//! Legacy cosign attestations (`.att`): the layer's envelope and annotations, its Sigstore bundle
//! v0.1 cross-checked with sigstore-verify, and the manifest pushed to a real registry.

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{artifact, digest_of, verifier, NOT_AFTER, NOT_BEFORE};
use portcullis_testkit::intoto::{statement_v01, SLSA_PROVENANCE_V02};
use portcullis_testkit::{
    attestation_bundle_v01, http, push_attestation, tempdir, CosignKey, Registry, Signer,
    TestSigstore,
};
use serde_json::{json, Value};
use sigstore_verify::types::{Bundle, DerPublicKey};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn provenance(digest: &str) -> Vec<u8> {
    statement_v01(
        "ghcr.io/acme/app",
        digest,
        SLSA_PROVENANCE_V02,
        &json!({ "builder": { "id": "b" } }),
    )
}

#[test]
fn keyless_att_layer_is_cosigns_shape_and_its_v01_bundle_verifies() {
    let ss = TestSigstore::new();
    let leaf = ss.issue_leaf(
        "dev@example.com",
        "https://issuer.test",
        NOT_BEFORE,
        NOT_AFTER,
    );
    let digest = digest_of(b"manifest");
    let statement = provenance(&digest);
    let layer = ss.attestation_layer(Signer::Keyless(&leaf), &statement, NOT_BEFORE + 60);

    let envelope: Value = serde_json::from_slice(&layer.envelope).unwrap();
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    assert_eq!(
        B64.decode(envelope["payload"].as_str().unwrap()).unwrap(),
        statement
    );
    assert_eq!(envelope["signatures"][0]["keyid"], "");
    assert_eq!(layer.predicate_type, SLSA_PROVENANCE_V02);
    assert_eq!(
        layer.certificate_pem.as_deref(),
        Some(leaf.cert_pem.as_str())
    );
    assert_eq!(layer.chain_pem, Some(ss.ca_pem()));
    let set_bundle: Value = serde_json::from_str(layer.bundle_json.as_deref().unwrap()).unwrap();
    assert_eq!(set_bundle["Payload"]["integratedTime"], NOT_BEFORE + 60);
    let body: Value = serde_json::from_slice(
        &B64.decode(set_bundle["Payload"]["body"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["apiVersion"].as_str()),
        (Some("intoto"), Some("0.0.2"))
    );

    let bundle_json = attestation_bundle_v01(&layer);
    let bundle = Bundle::from_json(&bundle_json).unwrap();
    let b: Value = serde_json::from_str(&bundle_json).unwrap();
    assert_eq!(
        b["mediaType"],
        "application/vnd.dev.sigstore.bundle+json;version=0.1"
    );
    assert!(b["verificationMaterial"]["tlogEntries"][0]
        .get("inclusionProof")
        .is_none());
    // v0.1 bundles carry a SET and no inclusion proof; the SET is the log evidence.
    let policy = VerificationPolicy::new("dev@example.com", "https://issuer.test").skip_sct();
    let result = verifier(&ss)
        .verify(artifact(&digest), &bundle, &policy)
        .unwrap();
    assert_eq!(
        result.integrated_time().unwrap().as_second(),
        NOT_BEFORE + 60
    );
    let e = verifier(&ss)
        .verify(artifact(&digest_of(b"other")), &bundle, &policy)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("artifact hash does not match any subject"),
        "{e}"
    );

    // The SET authenticates the integrated time, and the entry is bound to this envelope.
    let other = TestSigstore::new();
    let foreign = other.attestation_layer(Signer::Keyless(&leaf), &statement, NOT_BEFORE + 60);
    let bundle = Bundle::from_json(&attestation_bundle_v01(&foreign)).unwrap();
    let policy = VerificationPolicy::any_identity().skip_sct();
    let e = verifier(&ss)
        .verify(artifact(&digest), &bundle, &policy)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid inclusion promise"), "{e}");
}

#[test]
fn keyed_att_layer_bundle_verifies_with_the_key() {
    let ss = TestSigstore::new();
    let key = CosignKey::generate();
    let digest = digest_of(b"manifest");
    let layer = ss.attestation_layer(Signer::Key(&key), &provenance(&digest), NOT_BEFORE);
    assert!(layer.certificate_pem.is_none() && layer.chain_pem.is_none());
    let bundle = Bundle::from_json(&attestation_bundle_v01(&layer)).unwrap();
    let policy =
        PublicKeyVerificationPolicy::new(DerPublicKey::from_pem(&key.public_pem()).unwrap());
    verifier(&ss)
        .verify(artifact(&digest), &bundle, &policy)
        .unwrap();
    let wrong = PublicKeyVerificationPolicy::new(
        DerPublicKey::from_pem(&CosignKey::generate().public_pem()).unwrap(),
    );
    assert!(verifier(&ss)
        .verify(artifact(&digest), &bundle, &wrong)
        .is_err());
}

/// Pushes a `.att` manifest to a real registry and reads it back.
#[tokio::test]
async fn pushed_attestation_manifest_reads_back() {
    let work = tempdir();
    let reg = Registry::start(work.path());
    let image = digest_of(b"some image manifest");
    let ss = TestSigstore::new();
    let leaf = ss.issue_leaf(
        "dev@example.com",
        "https://issuer.test",
        NOT_BEFORE,
        NOT_AFTER,
    );
    let layer = ss.attestation_layer(Signer::Keyless(&leaf), &provenance(&image), NOT_BEFORE + 1);
    let digest = push_attestation(&reg, "test/small", &image, std::slice::from_ref(&layer));

    let tag = format!("sha256-{}.att", image.strip_prefix("sha256:").unwrap());
    let url = format!("{}/v2/test/small/manifests/{tag}", reg.url());
    let resp = http::request("GET", &url, &[("Accept", OCI_MANIFEST)]).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(digest_of(&resp.body), digest);
    let m: Value = serde_json::from_slice(&resp.body).unwrap();
    let l = &m["layers"][0];
    assert_eq!(l["mediaType"], "application/vnd.dsse.envelope.v1+json");
    assert_eq!(l["digest"], digest_of(&layer.envelope));
    let ann = l["annotations"].as_object().unwrap();
    assert_eq!(ann["dev.cosignproject.cosign/signature"], "");
    assert_eq!(ann["predicateType"], SLSA_PROVENANCE_V02);
    assert_eq!(
        ann["dev.sigstore.cosign/certificate"],
        leaf.cert_pem.as_str()
    );
    assert_eq!(ann["dev.sigstore.cosign/chain"], ss.ca_pem().as_str());
    assert_eq!(
        ann["dev.sigstore.cosign/bundle"],
        layer.bundle_json.as_deref().unwrap()
    );
    let blob = http::get(&format!(
        "{}/v2/test/small/blobs/{}",
        reg.url(),
        l["digest"].as_str().unwrap()
    ))
    .await;
    assert_eq!(&blob.body[..], &layer.envelope[..]);
}
