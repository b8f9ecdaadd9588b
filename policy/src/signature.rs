//! A cosign signature as the proxy fetched it, and the checks that bind it to an image and to an
//! authority. Each check names what failed in words a person can act on.

use serde::Deserialize;
use sigstore::crypto::{CosignVerificationKey, Signature};

/// One layer of a cosign signature manifest (`sha256-<hex>.sig`): the signed payload (the layer
/// blob, digest-checked by the proxy) and the layer's annotations.
#[derive(Debug, Clone, Default)]
pub struct SignatureLayer {
    /// The simple-signing JSON.
    pub payload: Vec<u8>,
    /// `dev.cosignproject.cosign/signature`, base64.
    pub signature: String,
    /// `dev.sigstore.cosign/certificate`, PEM (keyless).
    pub certificate: Option<String>,
    /// `dev.sigstore.cosign/chain`, PEM (keyless).
    pub chain: Option<String>,
    /// `dev.sigstore.cosign/bundle`: the Rekor SET (keyless).
    pub bundle: Option<String>,
}

#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Why a signature layer does not sign this image (a reason in the verdict).
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("payload is not a cosign simple-signing document: {0}")]
    Payload(#[source] serde_json::Error),
    #[error("digest mismatch in the payload: it signs {signed}, not {digest} (a signature copied from another image?)")]
    DigestMismatch { signed: String, digest: String },
    /// The key's own error says no more than "verification failed".
    #[error("signature by an unknown key")]
    UnknownKey,
}

impl SignatureLayer {
    /// The binding: the payload's `critical.image.docker-manifest-digest` must be the digest being
    /// served. A valid signature made for another image does not count.
    pub fn check_binding(&self, digest: &str) -> Result<(), SignatureError> {
        let parsed: SimpleSigning =
            serde_json::from_slice(&self.payload).map_err(SignatureError::Payload)?;
        let signed = parsed.critical.image.docker_manifest_digest;
        if signed != digest {
            return Err(SignatureError::DigestMismatch {
                signed,
                digest: digest.to_owned(),
            });
        }
        Ok(())
    }

    /// Checks the signature over the payload with `key`.
    pub fn check_key(&self, key: &CosignVerificationKey) -> Result<(), SignatureError> {
        key.verify_signature(
            Signature::Base64Encoded(self.signature.as_bytes()),
            &self.payload,
        )
        .map_err(|_| SignatureError::UnknownKey)
    }
}
