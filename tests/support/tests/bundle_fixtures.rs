//! Cross-checks the Sigstore bundle fixtures with an independent verifier, sigstore-verify
//! (sigstore/sigstore-rust): every positive fixture verifies against the test trusted root, and
//! every negative one fails for the reason it was made for.

use portcullis_testkit::intoto::{
    cosign_sign_v1_statement, slsa_v02_predicate, slsa_v1_predicate, statement,
    SLSA_PROVENANCE_V02, SLSA_PROVENANCE_V1,
};
use portcullis_testkit::{BundleBuilder, CosignKey, Leaf, LogEntry, Signer, Tamper, TestSigstore};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{Bundle, DerPublicKey, Sha256Hash};
use sigstore_verify::{
    PublicKeyVerificationPolicy, VerificationPolicy, VerificationResult, Verifier,
};

const NOT_BEFORE: i64 = 1_700_000_000;
const NOT_AFTER: i64 = NOT_BEFORE + 600;
const SIGNED_AT: i64 = NOT_BEFORE + 60;
const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn artifact(digest: &str) -> Sha256Hash {
    Sha256Hash::from_hex(digest.strip_prefix("sha256:").unwrap()).unwrap()
}

fn leaf(ss: &TestSigstore) -> Leaf {
    ss.issue_leaf(
        "dev@example.com",
        "https://issuer.test",
        NOT_BEFORE,
        NOT_AFTER,
    )
}

fn verifier(ss: &TestSigstore) -> Verifier {
    Verifier::new(&TrustedRoot::from_json(&ss.trusted_root_json()).unwrap()).unwrap()
}

fn parse(bundle: &str) -> Bundle {
    Bundle::from_json(bundle).unwrap_or_else(|e| panic!("{e}\n{bundle}"))
}

/// Keyless verification of `bundle` for the manifest `digest`, any identity, no SCTs.
fn keyless(ss: &TestSigstore, bundle: &str, digest: &str) -> Result<VerificationResult, String> {
    let policy = VerificationPolicy::any_identity().skip_sct();
    verifier(ss)
        .verify(artifact(digest), &parse(bundle), &policy)
        .map_err(|e| e.to_string())
}

/// Keyed verification with `key`'s public key.
fn keyed(
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

#[track_caller]
fn assert_fails(result: Result<VerificationResult, String>, reason: &str) {
    match result {
        Ok(_) => panic!("verified, expected a failure with {reason:?}"),
        Err(e) => assert!(e.contains(reason), "expected {reason:?}, got: {e}"),
    }
}

fn entry(bundle: &str) -> Value {
    let b: Value = serde_json::from_str(bundle).unwrap();
    b["verificationMaterial"]["tlogEntries"][0].clone()
}

#[test]
fn keyless_message_signature_verifies_for_the_manifest_digest_and_bytes() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = ss
        .message_bundle(Signer::Keyless(&leaf), &digest)
        .at(SIGNED_AT)
        .build();

    let b: Value = serde_json::from_str(&bundle).unwrap();
    assert_eq!(
        b["mediaType"],
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    );
    let e = entry(&bundle);
    assert_eq!(e["kindVersion"]["kind"], "hashedrekord");
    assert_eq!(e["kindVersion"]["version"], "0.0.1");
    assert_eq!(e["integratedTime"], SIGNED_AT.to_string());
    assert!(!e["inclusionProof"]["hashes"].as_array().unwrap().is_empty());

    let result = keyless(&ss, &bundle, &digest).unwrap();
    assert!(result.tlog_verified() && result.certificate_verified());
    assert_eq!(result.integrated_time().unwrap().as_second(), SIGNED_AT);
    let policy = VerificationPolicy::new("dev@example.com", "https://issuer.test").skip_sct();
    verifier(&ss)
        .verify(MANIFEST, &parse(&bundle), &policy)
        .unwrap();
    assert_fails(
        keyless(&ss, &bundle, &digest_of(b"other")),
        "artifact mismatch: message digest in bundle does not match artifact hash",
    );
}

#[test]
fn keyed_message_signature_verifies_with_the_key_only() {
    let ss = TestSigstore::new();
    let key = CosignKey::generate();
    let digest = digest_of(MANIFEST);
    let bundle = ss.message_bundle(Signer::Key(&key), &digest).build();
    let b: Value = serde_json::from_str(&bundle).unwrap();
    assert!(b["verificationMaterial"]["publicKey"]["hint"].is_string());
    keyed(&ss, &key, &bundle, &digest).unwrap();
    assert_fails(
        keyed(&ss, &CosignKey::generate(), &bundle, &digest),
        "signature verification failed",
    );
}

#[test]
fn cosign_v3_sign_statement_verifies_keyless_and_keyed() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let key = CosignKey::generate();
    let digest = digest_of(MANIFEST);
    let statement = cosign_sign_v1_statement(&digest);

    let bundle = ss
        .dsse_bundle(Signer::Keyless(&leaf), &statement)
        .at(SIGNED_AT)
        .build();
    assert_eq!(entry(&bundle)["kindVersion"]["kind"], "dsse");
    assert_eq!(entry(&bundle)["kindVersion"]["version"], "0.0.1");
    keyless(&ss, &bundle, &digest).unwrap();

    let bundle = ss.dsse_bundle(Signer::Key(&key), &statement).build();
    keyed(&ss, &key, &bundle, &digest).unwrap();
}

#[test]
fn slsa_provenance_statements_verify() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let v1 = slsa_v1_predicate(
        "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v2.0.0",
        "https://github.com/acme/app",
        "refs/heads/main",
        &"a".repeat(40),
        ".github/workflows/release.yml",
    );
    let v02 = slsa_v02_predicate(
        "https://tekton.dev/chains/v2",
        "tekton.dev/v1beta1/PipelineRun",
        "git+https://github.com/acme/app@refs/heads/main",
        &"b".repeat(40),
        "pipeline.yaml",
    );
    for (predicate_type, predicate) in [(SLSA_PROVENANCE_V1, v1), (SLSA_PROVENANCE_V02, v02)] {
        let statement = statement("ghcr.io/acme/app", &digest, predicate_type, &predicate);
        let bundle = ss
            .dsse_bundle(Signer::Keyless(&leaf), &statement)
            .at(SIGNED_AT)
            .build();
        keyless(&ss, &bundle, &digest).unwrap();
    }
}

#[test]
fn timestamps_are_verified_signing_times() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = ss
        .message_bundle(Signer::Keyless(&leaf), &digest)
        .at(SIGNED_AT)
        .with_timestamp()
        .with_timestamp_at(SIGNED_AT + 30)
        .build();
    let times: Vec<i64> = keyless(&ss, &bundle, &digest)
        .unwrap()
        .verified_timestamps()
        .iter()
        .map(|t| t.as_second())
        .collect();
    assert_eq!(times, [SIGNED_AT, SIGNED_AT + 30, SIGNED_AT]);

    // Without a SET, the timestamp is the only signing time; without either there is none.
    let no_set = |ts: bool| {
        let b = ss
            .message_bundle(Signer::Keyless(&leaf), &digest)
            .at(SIGNED_AT)
            .without_set();
        if ts { b.with_timestamp() } else { b }.build()
    };
    keyless(&ss, &no_set(true), &digest).unwrap();
    assert_fails(
        keyless(&ss, &no_set(false), &digest),
        "No verified timestamp found",
    );

    // Another TSA's token is not trusted.
    let other = TestSigstore::new();
    let foreign = other
        .message_bundle(Signer::Keyless(&leaf), &digest)
        .at(SIGNED_AT)
        .without_set()
        .with_timestamp()
        .build();
    assert_fails(
        keyless(&ss, &foreign, &digest),
        "TSA timestamp verification failed",
    );
}

#[test]
fn set_only_bundles_need_a_policy_that_skips_the_log_proof() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = ss
        .message_bundle(Signer::Keyless(&leaf), &digest)
        .at(SIGNED_AT)
        .without_inclusion_proof()
        .build();
    assert!(entry(&bundle).get("inclusionProof").is_none());
    assert_fails(keyless(&ss, &bundle, &digest), "inclusion proof");
    let policy = VerificationPolicy::any_identity()
        .skip_sct()
        .skip_tlog_unsafe();
    verifier(&ss)
        .verify(artifact(&digest), &parse(&bundle), &policy)
        .unwrap();
}

#[test]
fn rekor_v2_entries_verify_with_a_timestamp() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let key = CosignKey::generate();
    let digest = digest_of(MANIFEST);
    let statement = cosign_sign_v1_statement(&digest);
    fn v2(b: BundleBuilder) -> BundleBuilder {
        b.at(SIGNED_AT).log_entry(LogEntry::RekorV2)
    }

    let message = v2(ss.message_bundle(Signer::Keyless(&leaf), &digest))
        .with_timestamp()
        .build();
    let e = entry(&message);
    assert_eq!(e["kindVersion"]["version"], "0.0.2");
    assert!(e.get("integratedTime").is_none() && e.get("inclusionPromise").is_none());
    let envelope = e["inclusionProof"]["checkpoint"]["envelope"]
        .as_str()
        .unwrap();
    assert!(envelope.starts_with("log2025-1.rekor.test\n"), "{envelope}");
    let result = keyless(&ss, &message, &digest).unwrap();
    assert!(result.integrated_time().is_none());

    let dsse = v2(ss.dsse_bundle(Signer::Keyless(&leaf), &statement))
        .with_timestamp()
        .build();
    keyless(&ss, &dsse, &digest).unwrap();

    // Keyed: the log proof is enough.
    let keyed_v2 = v2(ss.message_bundle(Signer::Key(&key), &digest)).build();
    keyed(&ss, &key, &keyed_v2, &digest).unwrap();

    // Keyless without a timestamp: no signing time at all.
    let untimed = v2(ss.dsse_bundle(Signer::Keyless(&leaf), &statement)).build();
    assert_fails(
        keyless(&ss, &untimed, &digest),
        "V2 bundle requires RFC3161 timestamp",
    );
}

#[test]
fn rekor_v2_dsse_entries_are_not_parsed_by_sigstore_verify() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = ss
        .dsse_bundle(Signer::Keyless(&leaf), &cosign_sign_v1_statement(&digest))
        .at(SIGNED_AT)
        .log_entry(LogEntry::RekorV2Dsse)
        .with_timestamp()
        .build();
    let e = Bundle::from_json(&bundle).unwrap_err().to_string();
    assert!(
        e.contains("unsupported Rekor entry format: dsse/0.0.2"),
        "{e}"
    );
}

#[test]
fn intoto_entries_verify_in_v03_bundles() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = ss
        .dsse_bundle(Signer::Keyless(&leaf), &cosign_sign_v1_statement(&digest))
        .at(SIGNED_AT)
        .log_entry(LogEntry::IntotoV002)
        .build();
    assert_eq!(entry(&bundle)["kindVersion"]["kind"], "intoto");
    keyless(&ss, &bundle, &digest).unwrap();
}

// ---- Negative fixtures: each fails for its own reason. ----

fn tampered_dsse(ss: &TestSigstore, leaf: &Leaf, digest: &str, tamper: Tamper) -> String {
    ss.dsse_bundle(Signer::Keyless(leaf), &cosign_sign_v1_statement(digest))
        .at(SIGNED_AT)
        .tamper(tamper)
        .build()
}

#[test]
fn tampered_inclusion_proof_fails() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = tampered_dsse(&ss, &leaf, &digest, Tamper::ProofHash);
    assert_fails(
        keyless(&ss, &bundle, &digest),
        "invalid inclusion proof: inclusion proof verification failed",
    );
}

#[test]
fn proof_for_another_checkpoint_fails() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = tampered_dsse(&ss, &leaf, &digest, Tamper::ProofRoot);
    assert_fails(
        keyless(&ss, &bundle, &digest),
        "inclusion proof root hash does not match checkpoint root hash",
    );
}

#[test]
fn set_over_another_integrated_time_fails() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = tampered_dsse(&ss, &leaf, &digest, Tamper::SetTime);
    assert_fails(
        keyless(&ss, &bundle, &digest),
        "invalid inclusion promise: SET verification failed",
    );
}

#[test]
fn log_entry_of_another_signature_fails() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let key = CosignKey::generate();
    let digest = digest_of(MANIFEST);
    let statement = cosign_sign_v1_statement(&digest);
    let message = ss
        .message_bundle(Signer::Keyless(&leaf), &digest)
        .at(SIGNED_AT)
        .tamper(Tamper::OtherEntry)
        .build();
    assert_fails(
        keyless(&ss, &message, &digest),
        "log entry does not match the bundle: certificate in bundle does not match certificate in Rekor entry",
    );
    let dsse = tampered_dsse(&ss, &leaf, &digest, Tamper::OtherEntry);
    assert_fails(
        keyless(&ss, &dsse, &digest),
        "log entry does not match the bundle: DSSE signature in bundle does not match",
    );
    let intoto = ss
        .dsse_bundle(Signer::Keyless(&leaf), &statement)
        .at(SIGNED_AT)
        .log_entry(LogEntry::IntotoV002)
        .tamper(Tamper::OtherEntry)
        .build();
    assert_fails(
        keyless(&ss, &intoto, &digest),
        "DSSE signature in bundle does not match the intoto Rekor signature",
    );
    let keyed_bundle = ss
        .message_bundle(Signer::Key(&key), &digest)
        .tamper(Tamper::OtherEntry)
        .build();
    assert_fails(
        keyed(&ss, &key, &keyed_bundle, &digest),
        "log entry does not match the bundle",
    );
    let v2 = ss
        .message_bundle(Signer::Keyless(&leaf), &digest)
        .at(SIGNED_AT)
        .log_entry(LogEntry::RekorV2)
        .with_timestamp()
        .tamper(Tamper::OtherEntry)
        .build();
    assert_fails(
        keyless(&ss, &v2, &digest),
        "certificate in bundle does not match certificate in Rekor entry",
    );
}

#[test]
fn dsse_payload_altered_after_signing_fails() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = tampered_dsse(&ss, &leaf, &digest, Tamper::DssePayload);
    assert_fails(
        keyless(&ss, &bundle, &digest),
        "invalid signature: DSSE signature verification failed",
    );
}

#[test]
fn certificate_expired_at_the_timestamp_fails() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = ss
        .message_bundle(Signer::Keyless(&leaf), &digest)
        .at(SIGNED_AT)
        .with_timestamp_at(NOT_AFTER + 60)
        .build();
    assert_fails(
        keyless(&ss, &bundle, &digest),
        "certificate chain is invalid: certificate chain validation failed: CertExpired",
    );
}

/// The statement names digest A: it verifies as A (it is cryptographically valid) and fails as
/// any other artifact.
#[test]
fn statement_about_another_digest_fails_for_this_one() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let other = digest_of(b"another manifest");
    let bundle = ss
        .dsse_bundle(Signer::Keyless(&leaf), &cosign_sign_v1_statement(&other))
        .at(SIGNED_AT)
        .build();
    keyless(&ss, &bundle, &other).unwrap();
    assert_fails(
        keyless(&ss, &bundle, &digest_of(MANIFEST)),
        "artifact mismatch: artifact hash does not match any subject in attestation",
    );
}

#[test]
fn signer_or_log_outside_the_root_fails() {
    let ss = TestSigstore::new();
    let other = TestSigstore::new();
    let digest = digest_of(MANIFEST);
    let statement = cosign_sign_v1_statement(&digest);
    let foreign_leaf = leaf(&other);
    // A leaf of another CA, logged in our log.
    let bundle = ss
        .dsse_bundle(Signer::Keyless(&foreign_leaf), &statement)
        .at(SIGNED_AT)
        .build();
    assert_fails(
        keyless(&ss, &bundle, &digest),
        "certificate chain is invalid",
    );
    // Our leaf, logged in another instance's log.
    let leaf = leaf(&ss);
    let bundle = other
        .dsse_bundle(Signer::Keyless(&leaf), &statement)
        .at(SIGNED_AT)
        .build();
    assert_fails(
        keyless(&ss, &bundle, &digest),
        "invalid inclusion promise: No log key valid at integrated time",
    );
    // A keyed bundle (it needs no signing time) whose checkpoint another log signed.
    let key = CosignKey::generate();
    let bundle = other.message_bundle(Signer::Key(&key), &digest).build();
    assert_fails(
        keyed(&ss, &key, &bundle, &digest),
        "invalid checkpoint: No matching Rekor key found for checkpoint signature",
    );
}
