//! The two forms admission controllers read a summary in, built from its envelope:
//! - a Sigstore bundle v0.3 (`publicKey.hint`, the envelope as `dsseEnvelope`, no log entries)
//!   in an OCI 1.1 artifact manifest whose `subject` is the image: what the referrers list;
//! - cosign's legacy attestation manifest (the `sha256-<hex>.att` tag): DSSE envelope layers
//!   annotated with their `predicateType`, the upstream's own layers first.
//!
//! Every document and blob here is built by portcullis from what it signed, with a fixed key
//! order, so the same summary always gives the same digests.

use oci_spec::image::Descriptor;
use portcullis_cache::Digest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::vsa::PREDICATE_TYPE;
use crate::oci::cosign::DSSE_ENVELOPE;

/// The Sigstore bundle media type the summary is served as.
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// An OCI image manifest: both forms are one.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The empty config of an artifact manifest, and its blob.
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_BLOB: &str = "{}";
/// The config of a cosign signature manifest.
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A document portcullis serves as its own, with the blobs it made for it (the upstream's
/// blobs a merged `.att` names are not here: they are served as verified evidence).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Doc {
    /// The image it speaks for.
    pub subject: Digest,
    /// The manifest, as served.
    pub manifest: String,
    /// Our blobs (JSON text each).
    pub blobs: Vec<String>,
    /// The summary it carries: the SHA-256 of its envelope, so that a doc of a summary that
    /// was replaced is not served.
    pub summary: Digest,
}

/// A blob's descriptor.
fn descriptor(media_type: &str, blob: &str) -> Value {
    json!({ "mediaType": media_type, "digest": Digest::of(blob.as_bytes()), "size": blob.len() })
}

/// The Sigstore bundle v0.3 of `envelope` for a key with `hint`.
pub fn bundle(hint: &str, envelope: &Value) -> String {
    json!({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {
            "publicKey": { "hint": hint },
            "tlogEntries": [],
            "timestampVerificationData": {},
        },
        "dsseEnvelope": envelope,
    })
    .to_string()
}

/// The annotations of the bundle artifact: what cosign v3 writes, so that clients can pick the
/// predicate type from the referrers list without fetching.
pub fn bundle_annotations(created: &str) -> Vec<(&'static str, String)> {
    vec![
        ("dev.sigstore.bundle.content", "dsse-envelope".to_owned()),
        (
            "dev.sigstore.bundle.predicateType",
            PREDICATE_TYPE.to_owned(),
        ),
        ("org.opencontainers.image.created", created.to_owned()),
    ]
}

/// The artifact manifest of `bundle` for the image `subject` (its media type and size).
pub fn bundle_artifact(
    subject: (&Digest, &str, u64),
    bundle: String,
    created: &str,
    summary: Digest,
) -> Doc {
    let annotations: serde_json::Map<String, Value> = bundle_annotations(created)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_V03,
        "config": descriptor(EMPTY_CONFIG, EMPTY_BLOB),
        "layers": [descriptor(BUNDLE_V03, &bundle)],
        "subject": { "mediaType": subject.1, "digest": subject.0, "size": subject.2 },
        "annotations": annotations,
    });
    Doc {
        subject: subject.0.clone(),
        manifest: manifest.to_string(),
        blobs: vec![EMPTY_BLOB.to_owned(), bundle],
        summary,
    }
}

/// cosign's legacy attestation manifest for `subject`: the upstream's `theirs` layers (already
/// admitted as evidence), then `envelope` as a DSSE layer annotated with its predicate type,
/// and the small image config cosign writes (its `rootfs.diff_ids` the layers).
pub fn attestation(
    subject: &Digest,
    theirs: &[Descriptor],
    envelope: String,
    summary: Digest,
) -> Result<Doc, serde_json::Error> {
    let ours_digest = Digest::of(envelope.as_bytes());
    let mut layers = Vec::new();
    for d in theirs {
        // A copy of our own layer (a mirror of a mirror) is listed once.
        if d.digest().to_string() == ours_digest.to_string() {
            continue;
        }
        layers.push(serde_json::to_value(d)?);
    }
    let mut ours = descriptor(DSSE_ENVELOPE, &envelope);
    ours["annotations"] = json!({
        // cosign sets an empty signature annotation on attestation layers.
        "dev.cosignproject.cosign/signature": "",
        "predicateType": PREDICATE_TYPE,
    });
    layers.push(ours);
    let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let config = json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(IMAGE_CONFIG, &config),
        "layers": layers,
    });
    Ok(Doc {
        subject: subject.clone(),
        manifest: manifest.to_string(),
        blobs: vec![config, envelope],
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::cosign::{evidence_artifact, Material};
    use crate::oci::Document;

    fn envelope() -> Value {
        json!({ "payloadType": "application/vnd.in-toto+json", "payload": "e30=",
                "signatures": [{ "keyid": "", "sig": "MEUC" }] })
    }

    #[test]
    fn the_bundle_artifact_is_verification_material_for_its_subject() {
        let subject = Digest::of(b"image");
        let bundle = bundle("aGludA==", &envelope());
        let doc = bundle_artifact(
            (&subject, OCI_MANIFEST, 5),
            bundle.clone(),
            "2026-01-01T00:00:00Z",
            Digest::of(b"s"),
        );
        let parsed = Document::parse(doc.manifest.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        let artifact = evidence_artifact(&parsed, None).expect("an evidence artifact");
        assert_eq!(artifact.subject, subject);
        assert_eq!(artifact.blobs[1].1, Material::Bundle);
        for ((r, m), blob) in artifact.blobs.iter().zip(&doc.blobs) {
            assert_eq!(r.digest, Digest::of(blob.as_bytes()));
            artifact.check(*m, blob.as_bytes()).unwrap();
        }
        let v: Value = serde_json::from_str(&bundle).unwrap();
        assert_eq!(v["verificationMaterial"]["publicKey"]["hint"], "aGludA==");
    }

    #[test]
    fn the_attestation_keeps_their_layers_and_adds_ours() {
        let subject = Digest::of(b"image");
        let tag = format!("{}.att", subject.tag_form());
        let theirs_env = envelope().to_string() + " ";
        let theirs: Descriptor = serde_json::from_value(json!({
            "mediaType": DSSE_ENVELOPE,
            "digest": Digest::of(theirs_env.as_bytes()),
            "size": theirs_env.len(),
            "annotations": { "predicateType": "https://slsa.dev/provenance/v1" },
        }))
        .unwrap();
        let ours = envelope().to_string();
        let doc = attestation(
            &subject,
            std::slice::from_ref(&theirs),
            ours.clone(),
            Digest::of(b"s"),
        )
        .unwrap();
        let parsed = Document::parse(doc.manifest.as_bytes(), Some(OCI_MANIFEST)).unwrap();
        let artifact = evidence_artifact(&parsed, Some(&tag)).expect("an evidence artifact");
        assert_eq!(artifact.subject, subject);
        assert_eq!(parsed.layers().len(), 2);
        assert_eq!(parsed.layers()[0], theirs);
        let config = &doc.blobs[0];
        artifact.check(Material::Config, config.as_bytes()).unwrap();
        let last = &parsed.layers()[1];
        assert_eq!(
            last.annotations().as_ref().unwrap()["predicateType"],
            PREDICATE_TYPE
        );
        // Our own layer, already among theirs, is not listed twice.
        let again = attestation(&subject, parsed.layers(), ours, Digest::of(b"s")).unwrap();
        assert_eq!(again.manifest, doc.manifest);
    }
}
