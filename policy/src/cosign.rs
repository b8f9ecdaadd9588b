//! Cosign's OCI layout: the media types of its layers and the annotations that carry a
//! signature's certificate, chain and log entry, and how a layer becomes the evidence type the
//! policy verifies.

use std::collections::HashMap;

use crate::{AttestationLayer, SignatureLayer};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const ANN_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
pub const ANN_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
pub const ANN_CHAIN: &str = "dev.sigstore.cosign/chain";
pub const ANN_BUNDLE: &str = "dev.sigstore.cosign/bundle";

impl SignatureLayer {
    /// The signature a simple-signing layer carries: its payload and its descriptor's
    /// annotations. `None` for another media type, or without a signature annotation.
    pub fn from_layer(
        media_type: &str,
        annotations: Option<&HashMap<String, String>>,
        payload: Vec<u8>,
    ) -> Option<SignatureLayer> {
        if media_type != SIMPLE_SIGNING {
            return None;
        }
        let get = |k: &str| annotations.and_then(|a| a.get(k)).cloned();
        Some(SignatureLayer {
            payload,
            signature: get(ANN_SIGNATURE)?,
            certificate: get(ANN_CERTIFICATE),
            chain: get(ANN_CHAIN),
            bundle: get(ANN_BUNDLE),
        })
    }
}

impl AttestationLayer {
    /// The attestation a DSSE layer carries: its envelope and its descriptor's annotations.
    pub fn from_layer(
        media_type: &str,
        annotations: Option<&HashMap<String, String>>,
        envelope: Vec<u8>,
    ) -> Option<AttestationLayer> {
        if media_type != DSSE_ENVELOPE {
            return None;
        }
        let get = |k: &str| annotations.and_then(|a| a.get(k)).cloned();
        Some(AttestationLayer {
            envelope,
            certificate: get(ANN_CERTIFICATE),
            chain: get(ANN_CHAIN),
            bundle: get(ANN_BUNDLE),
        })
    }
}
