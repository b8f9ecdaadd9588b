//! Canonicalized Rekor entry bodies (RFC 8785 JSON, the Merkle leaf data and a bundle's
//! `canonicalizedBody`), shaped as sigstore-verify 0.15 parses and checks them against the
//! bundle (CVE-2022-36056 consistency):
//!
//! | kind/version        | log     | bound to the bundle by                                      |
//! |---------------------|---------|-------------------------------------------------------------|
//! | hashedrekord/0.0.1  | Rekor v1 | artifact SHA-256 (hex), signature, PEM cert or key (base64) |
//! | dsse/0.0.1          | Rekor v1 | payload SHA-256 (hex), signature, PEM cert or key (base64)  |
//! | intoto/0.0.2        | Rekor v1 | payload SHA-256 (hex), payloadType, base64(base64(sig)), PEM |
//! | hashedrekord/0.0.2  | Rekor v2 | digest (base64; for DSSE: SHA-256 of the PAE), sig, DER cert/key |
//! | dsse/0.0.2          | Rekor v2 | not parsed by sigstore-verify 0.15.1 (bundles are rejected)  |
//!
//! Verifiers are PEM text (base64 of it in the JSON) for v1 kinds and raw DER for v2 kinds.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The key material a Rekor entry records for the signer.
pub(crate) struct Verifier {
    /// PEM of the certificate (keyless) or SPKI public key (keyed).
    pub pem: String,
    /// DER of the same.
    pub der: Vec<u8>,
    /// Whether it is a certificate.
    pub is_certificate: bool,
}

impl Verifier {
    /// The Rekor v2 `verifier` object: key details and the DER certificate or public key.
    fn v2(&self) -> Value {
        let field = if self.is_certificate {
            "x509Certificate"
        } else {
            "publicKey"
        };
        json!({
            "keyDetails": "PKIX_ECDSA_P256_SHA_256",
            field: { "rawBytes": B64.encode(&self.der) }
        })
    }
}

fn canonical(body: Value) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(&body).expect("canonicalize Rekor body")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `hashedrekord` 0.0.1 for a signature over an artifact whose SHA-256 is `digest`.
pub(crate) fn hashedrekord_v001(
    digest: &[u8; 32],
    signature: &[u8],
    verifier: &Verifier,
) -> Vec<u8> {
    canonical(json!({
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": { "hash": { "algorithm": "sha256", "value": hex::encode(digest) } },
            "signature": {
                "content": B64.encode(signature),
                "publicKey": { "content": B64.encode(&verifier.pem) }
            }
        }
    }))
}

/// `hashedrekord` 0.0.2 (Rekor v2): `digest` is the artifact's SHA-256, or the PAE's for DSSE.
pub(crate) fn hashedrekord_v002(
    digest: &[u8; 32],
    signature: &[u8],
    verifier: &Verifier,
) -> Vec<u8> {
    canonical(json!({
        "apiVersion": "0.0.2",
        "kind": "hashedrekord",
        "spec": { "hashedRekordV002": {
            "data": { "algorithm": "SHA2_256", "digest": B64.encode(digest) },
            "signature": { "content": B64.encode(signature), "verifier": verifier.v2() }
        } }
    }))
}

/// `dsse` 0.0.1: `envelope` is the envelope JSON as submitted (only hashed).
pub(crate) fn dsse_v001(
    envelope: &[u8],
    payload: &[u8],
    signature: &[u8],
    verifier: &Verifier,
) -> Vec<u8> {
    canonical(json!({
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "envelopeHash": { "algorithm": "sha256", "value": sha256_hex(envelope) },
            "payloadHash": { "algorithm": "sha256", "value": sha256_hex(payload) },
            "signatures": [{
                "signature": B64.encode(signature),
                "verifier": B64.encode(&verifier.pem)
            }]
        }
    }))
}

/// `dsse` 0.0.2 (Rekor v2), as rekor-tiles stores DSSE.
pub(crate) fn dsse_v002(payload: &[u8], signature: &[u8], verifier: &Verifier) -> Vec<u8> {
    canonical(json!({
        "apiVersion": "0.0.2",
        "kind": "dsse",
        "spec": { "dsseV002": {
            "payloadHash": { "algorithm": "SHA2_256", "digest": B64.encode(Sha256::digest(payload)) },
            "signatures": [{ "content": B64.encode(signature), "verifier": verifier.v2() }]
        } }
    }))
}

/// `intoto` 0.0.2, what `cosign attest` logged before v3: the envelope without its payload,
/// the signature base64-encoded twice, `hash` over the envelope as submitted.
pub(crate) fn intoto_v002(
    envelope: &[u8],
    payload_type: &str,
    payload: &[u8],
    signature: &[u8],
    verifier: &Verifier,
) -> Vec<u8> {
    canonical(json!({
        "apiVersion": "0.0.2",
        "kind": "intoto",
        "spec": { "content": {
            "envelope": {
                "payloadType": payload_type,
                "signatures": [{
                    "publicKey": B64.encode(&verifier.pem),
                    "sig": B64.encode(B64.encode(signature))
                }]
            },
            "hash": { "algorithm": "sha256", "value": sha256_hex(envelope) },
            "payloadHash": { "algorithm": "sha256", "value": sha256_hex(payload) }
        } }
    }))
}
