//! Cross-checks the Sigstore bundle fixtures with an independent verifier, sigstore-verify
//! (sigstore/sigstore-rust): every positive fixture verifies against the test trusted root.
//! The negative fixtures are in `bundle_negatives.rs`.

mod common;

use common::*;
use portcullis_testkit::intoto::{
    cosign_sign_v1_statement, slsa_v02_predicate, slsa_v1_predicate, statement,
    SLSA_PROVENANCE_V02, SLSA_PROVENANCE_V1,
};
use portcullis_testkit::{BundleBuilder, CosignKey, LogEntry, Signer, TestSigstore};
use serde_json::Value;
use sigstore_verify::types::Bundle;
use sigstore_verify::VerificationPolicy;

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

#[test]
fn timestamps_with_fractional_seconds_verify() {
    // RFC 3161 allows a fraction of a second in genTime, and many TSAs write milliseconds.
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let millis = |r: Result<sigstore_verify::VerificationResult, String>| -> Vec<i64> {
        let result = r.unwrap();
        let times = result.verified_timestamps().iter();
        times.map(|t| t.as_millisecond()).collect()
    };

    // Without a SET the timestamp is the only signing time.
    let message = ss
        .message_bundle(Signer::Keyless(&leaf), &digest)
        .at(SIGNED_AT)
        .without_set()
        .with_timestamp_millis_at(SIGNED_AT, 345)
        .build();
    let token = signed_timestamps(&message).remove(0);
    let text = portcullis_testkit::tsa::gen_time(SIGNED_AT, "345");
    assert!(text.ends_with(".345Z"), "{text}");
    assert!(token.windows(text.len()).any(|w| w == text.as_bytes()));
    assert_eq!(
        millis(keyless(&ss, &message, &digest)),
        [SIGNED_AT * 1000 + 345]
    );

    // Rekor v2 DSSE: both forms side by side, each verified to the millisecond.
    let dsse = ss
        .dsse_bundle(Signer::Keyless(&leaf), &cosign_sign_v1_statement(&digest))
        .at(SIGNED_AT)
        .log_entry(LogEntry::RekorV2)
        .with_timestamp_millis_at(SIGNED_AT + 1, 5)
        .with_timestamp()
        .with_timestamp_millis_at(SIGNED_AT, 500)
        .build();
    assert_eq!(
        millis(keyless(&ss, &dsse, &digest)),
        [
            (SIGNED_AT + 1) * 1000 + 5,
            SIGNED_AT * 1000,
            SIGNED_AT * 1000 + 500
        ]
    );
}
