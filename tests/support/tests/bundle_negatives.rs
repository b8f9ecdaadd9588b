//! The negative Sigstore bundle fixtures, each checked to fail in sigstore-verify for the
//! reason it was made for (the error text says which check refused it).

mod common;

use common::*;
use portcullis_testkit::intoto::cosign_sign_v1_statement;
use portcullis_testkit::{CosignKey, Leaf, LogEntry, Signer, Tamper, TestSigstore};

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

/// RFC 3161 genTime is DER: a fraction of a second is allowed, but only as `.` and digits with
/// no trailing zero, in UTC (`Z`). A token validly signed over any other time is refused, while
/// the same TSA's whole-second and millisecond tokens verify.
#[test]
fn timestamps_with_malformed_fractions_fail() {
    use portcullis_testkit::tsa::gen_time;
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let stamped = |text: &str| {
        ss.message_bundle(Signer::Keyless(&leaf), &digest)
            .at(SIGNED_AT)
            .without_set()
            .with_timestamp_gen_time(text)
            .build()
    };
    keyless(&ss, &stamped(&gen_time(SIGNED_AT, "")), &digest).unwrap();
    keyless(&ss, &stamped(&gen_time(SIGNED_AT, "345")), &digest).unwrap();
    let fraction = gen_time(SIGNED_AT, "345");
    for text in [
        gen_time(SIGNED_AT, "340"),        // trailing zero
        gen_time(SIGNED_AT, "0"),          // zero fraction (DER omits it)
        gen_time(SIGNED_AT, "3a5"),        // not a digit
        gen_time(SIGNED_AT, "1234567891"), // finer than a nanosecond
        fraction.replace('.', ","),        // comma separator
        fraction.replace('Z', ""),         // local time
        fraction.replace('Z', "+0000"),    // offset instead of Z
        fraction.replace(".345", "."),     // a point without digits
    ] {
        let result = keyless(&ss, &stamped(&text), &digest);
        assert_fails(
            result,
            "invalid RFC 3161 timestamp: TSA timestamp verification failed: Failed to parse \
             timestamp response: failed to decode TSTInfo",
        );
    }
}

/// The fraction is part of the signing time: one millisecond past the leaf's `notAfter` is
/// after it.
#[test]
fn a_fraction_past_not_after_is_after_it() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let stamped = |millis: u16| {
        ss.message_bundle(Signer::Keyless(&leaf), &digest)
            .at(SIGNED_AT)
            .without_set()
            .with_timestamp_millis_at(NOT_AFTER, millis)
            .build()
    };
    keyless(&ss, &stamped(0), &digest).unwrap();
    assert_fails(
        keyless(&ss, &stamped(1), &digest),
        "certificate had expired at",
    );
}
