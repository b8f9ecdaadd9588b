//! Cosign and Sigstore verification material: which manifests carry only evidence (signatures,
//! attestations, bundles), and how each of their blobs is checked to be what it claims before
//! portcullis serves it.

use oci_spec::image::Descriptor;
use portcullis_cache::Digest;
pub use portcullis_policy::cosign::{DSSE_ENVELOPE, SIMPLE_SIGNING};
use portcullis_policy::{AttestationLayer, SignatureLayer, BUNDLE_MEDIA_TYPE_PREFIX};

use super::document::{reference, Body, Document, Reference};
use super::strict::{self, Fields};

/// A signature payload, envelope, bundle or artifact config is a few kilobytes; an SBOM
/// attestation can be more. Nothing larger is fetched, or served, as evidence.
pub const MAX_EVIDENCE_BLOB: u64 = 4 * 1024 * 1024;

/// What one blob of an evidence artifact must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Material {
    /// A cosign simple-signing payload (`critical.image.docker-manifest-digest`).
    SimpleSigning,
    /// A DSSE envelope (in-toto attestations).
    Dsse,
    /// A Sigstore bundle.
    Bundle,
    /// The artifact's config: OCI's empty `{}`, or the small image config cosign writes, whose
    /// `rootfs.diff_ids` are the artifact's own layers (so never another image's config).
    Config,
}

/// Why a blob is not the verification material it is listed as.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error(transparent)]
    Ambiguous(#[from] strict::Ambiguity),
    #[error("not a JSON object")]
    NotObject,
    #[error("no {0:?}")]
    Missing(&'static str),
    #[error("bundle mediaType {0:?}")]
    BundleMediaType(String),
    #[error("neither {{}} nor a cosign config: {0}")]
    Config(#[source] serde_json::Error),
    #[error("its rootfs.diff_ids are not the artifact's own layers")]
    DiffIds,
}

/// A manifest that carries only verification material, and the manifest it speaks for.
#[derive(Debug, Clone)]
pub struct EvidenceArtifact {
    pub subject: Digest,
    pub blobs: Vec<(Reference, Material)>,
}

impl Material {
    /// The material a layer of this media type must be; `None` for anything else, which
    /// makes the manifest an image like any other.
    pub fn of_layer(media_type: &str) -> Option<Material> {
        match media_type {
            SIMPLE_SIGNING => Some(Material::SimpleSigning),
            DSSE_ENVELOPE => Some(Material::Dsse),
            mt if mt.starts_with(BUNDLE_MEDIA_TYPE_PREFIX) => Some(Material::Bundle),
            _ => None,
        }
    }

    /// Checks that `bytes` parse as this material, read strictly: a JSON object of the right
    /// shape, which no runtime would unpack.
    pub fn check(self, bytes: &[u8]) -> Result<(), MaterialError> {
        let (fields, required): (Fields, &[&'static str]) = match self {
            Material::SimpleSigning => (
                Fields {
                    names: &["critical", "optional", "identity", "image", "type"],
                    maps: &["optional"],
                },
                &["critical"],
            ),
            Material::Dsse => (
                Fields {
                    names: &["payload", "payloadType", "signatures", "keyid", "sig"],
                    maps: &[],
                },
                &["payload", "payloadType", "signatures"],
            ),
            Material::Bundle => (
                Fields {
                    names: &["mediaType", "verificationMaterial"],
                    maps: &[],
                },
                &["mediaType", "verificationMaterial"],
            ),
            Material::Config => (
                Fields {
                    names: &[],
                    maps: &[],
                },
                &[],
            ),
        };
        let raw = strict::check(bytes, fields)?;
        if !raw.is_object() {
            return Err(MaterialError::NotObject);
        }
        if let Some(missing) = required.iter().copied().find(|k| raw.get(k).is_none()) {
            return Err(MaterialError::Missing(missing));
        }
        if self == Material::Bundle {
            let mt = raw.get("mediaType").and_then(|v| v.as_str()).unwrap_or("");
            if !mt.starts_with(BUNDLE_MEDIA_TYPE_PREFIX) {
                return Err(MaterialError::BundleMediaType(mt.to_owned()));
            }
        }
        Ok(())
    }
}

impl EvidenceArtifact {
    /// Checks that `bytes`, a blob of this artifact, are the `material` it is listed as.
    pub fn check(&self, material: Material, bytes: &[u8]) -> Result<(), MaterialError> {
        material.check(bytes)?;
        if material != Material::Config || bytes == b"{}" {
            return Ok(());
        }
        #[derive(serde::Deserialize)]
        struct Config {
            rootfs: RootFs,
        }
        #[derive(serde::Deserialize)]
        struct RootFs {
            diff_ids: Vec<String>,
        }
        let config: Config = serde_json::from_slice(bytes).map_err(MaterialError::Config)?;
        let layers = self.blobs.iter().skip(1).map(|(r, _)| r.digest.to_string());
        if !config.rootfs.diff_ids.iter().cloned().eq(layers) {
            return Err(MaterialError::DiffIds);
        }
        Ok(())
    }
}

/// The manifest a cosign tag (`sha256-<hex>.sig` or `.att`) speaks for.
pub fn signature_tag_subject(tag: &str) -> Option<Digest> {
    let rest = tag.strip_prefix("sha256-")?;
    let hex = rest
        .strip_suffix(".sig")
        .or_else(|| rest.strip_suffix(".att"))?;
    format!("sha256:{hex}").parse().ok()
}

/// Whether `tag` names a cosign artifact.
pub fn is_signature_tag(tag: &str) -> bool {
    signature_tag_subject(tag).is_some()
}

/// Reads `doc` as an evidence artifact: fetched by a cosign `tag`, or by digest with a
/// `subject`. Every layer must be verification material; a subject, where both name one, must
/// agree with the tag. Anything else is an image, for the policy to decide.
pub fn evidence_artifact(doc: &Document, tag: Option<&str>) -> Option<EvidenceArtifact> {
    let Body::Manifest(m) = &doc.body else {
        return None;
    };
    let declared = doc.subject().ok()?.map(|r| r.digest);
    let subject = match (tag.map(signature_tag_subject), declared) {
        (Some(None), _) => return None,
        (Some(Some(by_tag)), Some(declared)) if by_tag != declared => return None,
        (Some(Some(by_tag)), _) => by_tag,
        (None, Some(declared)) => declared,
        (None, None) => return None,
    };
    if m.layers().is_empty() {
        return None;
    }
    let mut blobs = vec![(reference(m.config()).ok()?, Material::Config)];
    for layer in m.layers() {
        let material = Material::of_layer(layer.media_type().as_ref())?;
        blobs.push((reference(layer).ok()?, material));
    }
    Some(EvidenceArtifact { subject, blobs })
}

/// The cosign signature a simple-signing layer carries, given its payload.
pub fn signature_layer(d: &Descriptor, payload: Vec<u8>) -> Option<SignatureLayer> {
    SignatureLayer::from_layer(d.media_type().as_ref(), d.annotations().as_ref(), payload)
}

/// The attestation a DSSE layer carries, given its envelope.
pub fn attestation_layer(d: &Descriptor, envelope: Vec<u8>) -> Option<AttestationLayer> {
    AttestationLayer::from_layer(d.media_type().as_ref(), d.annotations().as_ref(), envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_cosign_tags() {
        let hex = "a".repeat(64);
        assert!(is_signature_tag(&format!("sha256-{hex}.sig")));
        assert!(is_signature_tag(&format!("sha256-{hex}.att")));
        assert!(!is_signature_tag(&format!("sha256-{hex}")));
        assert!(!is_signature_tag("sha256-abc.sig"));
        assert!(!is_signature_tag(&format!("sha256-{}.sig", "A".repeat(64))));
        assert!(!is_signature_tag("latest"));
    }

    #[test]
    fn material_must_parse_as_what_it_claims() {
        let payload = br#"{"critical":{"identity":{"docker-reference":"r"},"image":{"docker-manifest-digest":"sha256:x"},"type":"cosign container image signature"},"optional":null}"#;
        assert!(Material::SimpleSigning.check(payload).is_ok());
        assert!(Material::Dsse.check(payload).is_err());
        assert!(Material::SimpleSigning.check(b"\x1f\x8b\x08\x00").is_err());
        assert!(Material::SimpleSigning
            .check(br#"{"Critical":{}}"#)
            .is_err());
        let envelope = br#"{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"x"}]}"#;
        assert!(Material::Dsse.check(envelope).is_ok());
        let bundle = br#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{}}"#;
        assert!(Material::Bundle.check(bundle).is_ok());
        assert!(Material::Bundle
            .check(br#"{"mediaType":"x","verificationMaterial":{}}"#)
            .is_err());
        assert!(Material::Config.check(b"{}").is_ok());
        assert!(Material::Config.check(b"[]").is_err());
        assert!(Material::Config.check(br#"{"a":1,"a":2}"#).is_err());
    }

    #[test]
    fn an_artifact_config_names_the_artifacts_own_layers() {
        let layer = Digest::of(b"{}");
        let r = |d: &Digest| Reference {
            digest: d.clone(),
            size: 2,
            media_type: String::new(),
        };
        let artifact = EvidenceArtifact {
            subject: Digest::of(b"s"),
            blobs: vec![
                (r(&Digest::of(b"c")), Material::Config),
                (r(&layer), Material::SimpleSigning),
            ],
        };
        let cosign = format!(
            r#"{{"architecture":"","os":"","rootfs":{{"type":"layers","diff_ids":["{layer}"]}},"config":{{}}}}"#
        );
        assert!(artifact.check(Material::Config, cosign.as_bytes()).is_ok());
        assert!(artifact.check(Material::Config, b"{}").is_ok());
        let image = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":["{}"]}},"config":{{"Entrypoint":["/x"]}}}}"#,
            Digest::of(b"tar")
        );
        assert!(artifact.check(Material::Config, image.as_bytes()).is_err());
        assert!(artifact
            .check(Material::Config, br#"{"config":{}}"#)
            .is_err());
    }
}
