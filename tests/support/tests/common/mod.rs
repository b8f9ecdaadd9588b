//! Shared by the bundle tests: verifying fixtures with sigstore-verify against a
//! [`TestSigstore`]'s trusted root, and asserting on why they fail.
#![allow(dead_code)] // each test crate uses its own subset

use portcullis_testkit::{CosignKey, Leaf, TestSigstore};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{Bundle, DerPublicKey, Sha256Hash};
use sigstore_verify::{
    PublicKeyVerificationPolicy, VerificationPolicy, VerificationResult, Verifier,
};

/// Test leaves are valid from here, for ten minutes, to [`NOT_AFTER`].
pub const NOT_BEFORE: i64 = 1_700_000_000;
pub const NOT_AFTER: i64 = NOT_BEFORE + 600;
/// When the fixtures are signed and logged.
pub const SIGNED_AT: i64 = NOT_BEFORE + 60;
/// The OCI manifest the fixtures sign.
pub const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A `sha256:<hex>` digest as sigstore-verify's artifact.
pub fn artifact(digest: &str) -> Sha256Hash {
    Sha256Hash::from_hex(digest.strip_prefix("sha256:").unwrap()).unwrap()
}

/// `dev@example.com`'s leaf, issued by `ss`, valid NOT_BEFORE..NOT_AFTER.
pub fn leaf(ss: &TestSigstore) -> Leaf {
    ss.issue_leaf(
        "dev@example.com",
        "https://issuer.test",
        NOT_BEFORE,
        NOT_AFTER,
    )
}

/// A verifier for `ss`'s trusted root.
pub fn verifier(ss: &TestSigstore) -> Verifier {
    Verifier::new(&TrustedRoot::from_json(&ss.trusted_root_json()).unwrap()).unwrap()
}

/// Parses bundle JSON, panicking with the bundle.
pub fn parse(bundle: &str) -> Bundle {
    Bundle::from_json(bundle).unwrap_or_else(|e| panic!("{e}\n{bundle}"))
}

/// Keyless verification of `bundle` for the manifest `digest`, any identity, no SCTs.
pub fn keyless(
    ss: &TestSigstore,
    bundle: &str,
    digest: &str,
) -> Result<VerificationResult, String> {
    let policy = VerificationPolicy::any_identity().skip_sct();
    verifier(ss)
        .verify(artifact(digest), &parse(bundle), &policy)
        .map_err(|e| e.to_string())
}

/// Keyed verification with `key`'s public key.
pub fn keyed(
    ss: &TestSigstore,
    key: &CosignKey,
    bundle: &str,
    digest: &str,
) -> Result<VerificationResult, String> {
    let policy =
        PublicKeyVerificationPolicy::new(DerPublicKey::from_pem(&key.public_pem()).unwrap());
    verifier(ss)
        .verify(artifact(digest), &parse(bundle), &policy)
        .map_err(|e| e.to_string())
}

/// Asserts verification failed with an error containing `reason`.
#[track_caller]
pub fn assert_fails(result: Result<VerificationResult, String>, reason: &str) {
    match result {
        Ok(_) => panic!("verified, expected a failure with {reason:?}"),
        Err(e) => assert!(e.contains(reason), "expected {reason:?}, got: {e}"),
    }
}

/// The bundle's first tlog entry.
pub fn entry(bundle: &str) -> Value {
    let b: Value = serde_json::from_str(bundle).unwrap();
    b["verificationMaterial"]["tlogEntries"][0].clone()
}

/// The DER RFC 3161 responses (`signedTimestamp`) of the bundle's `rfc3161Timestamps`, in order.
pub fn signed_timestamps(bundle: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let b: Value = serde_json::from_str(bundle).unwrap();
    let stamps = &b["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"];
    let stamps = stamps.as_array().map(Vec::as_slice).unwrap_or_default();
    stamps
        .iter()
        .map(|s| {
            let b64 = s["signedTimestamp"].as_str().unwrap();
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        })
        .collect()
}
