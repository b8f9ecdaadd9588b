//! RFC 3161 timestamps in Sigstore bundles, through the policy: a `genTime` with a fraction of a
//! second (RFC 3161 §2.4.2; many TSAs write milliseconds) is a signing time like a whole-second
//! one, and a time DER forbids (a trailing zero, a comma, no `Z`) refuses the bundle. See
//! `docs/decisions/0010-rfc3161-fractional-time.md`.

use portcullis_policy::{
    AuthorityConfig, Decision, Evidence, KeylessConfig, Mode, NamePolicyConfig, Policy, RootConfig,
    RuleConfig, TrustConfig,
};
use portcullis_testkit::tsa::gen_time;
use portcullis_testkit::{sha256_hex, BundleBuilder, LogEntry, Signer, TestSigstore};

/// The leaf is valid from here for ten minutes.
const NOT_BEFORE: i64 = 1_700_000_000;
const SIGNED_AT: i64 = NOT_BEFORE + 60;
const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
const IMAGE: &str = "reg.test/app";

struct Fixture {
    _dir: tempfile::TempDir,
    sigstore: TestSigstore,
    policy: Policy,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sigstore = TestSigstore::new();
    let root = dir.path().join("root.json");
    std::fs::write(&root, sigstore.trusted_root_json()).unwrap();
    let trust = TrustConfig {
        roots: vec![RootConfig {
            name: "test".into(),
            trusted_root: root,
        }],
        ..TrustConfig::default()
    };
    let rule = RuleConfig {
        name: "r".into(),
        images: vec!["reg.test/**".into()],
        mode: Mode::Enforce,
        authorities: vec![AuthorityConfig {
            keyless: Some(KeylessConfig {
                root: "test".into(),
                issuer: Some("https://issuer.test".into()),
                subject: Some("dev@example.com".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let policy = Policy::new(&NamePolicyConfig::default(), &trust, &[rule]).unwrap();
    Fixture {
        _dir: dir,
        sigstore,
        policy,
    }
}

/// Builds bundles signed by `dev@example.com` at [`SIGNED_AT`] whose only signing time is the
/// RFC 3161 timestamp that `stamp` adds (no SET), and decides on the manifest with each.
fn decide(f: &Fixture, stamp: impl Fn(BundleBuilder) -> BundleBuilder) -> Vec<(Decision, String)> {
    let leaf = f.sigstore.issue_leaf(
        "dev@example.com",
        "https://issuer.test",
        NOT_BEFORE,
        NOT_BEFORE + 600,
    );
    let digest = sha256_hex(MANIFEST);
    let statement = portcullis_testkit::intoto::cosign_sign_v1_statement(&digest);
    let message = f
        .sigstore
        .message_bundle(Signer::Keyless(&leaf), &digest)
        .at(SIGNED_AT)
        .without_set();
    // cosign v3's default: a DSSE statement logged in Rekor v2, which has no integrated time.
    let dsse = f
        .sigstore
        .dsse_bundle(Signer::Keyless(&leaf), &statement)
        .at(SIGNED_AT)
        .log_entry(LogEntry::RekorV2);
    [stamp(message).build(), stamp(dsse).build()]
        .into_iter()
        .map(|bundle| {
            let evidence = Evidence {
                bundles: vec![bundle.into_bytes()],
                ..Evidence::default()
            };
            let verdict = f.policy.evaluate(IMAGE, &digest, &evidence);
            (verdict.decision, verdict.message)
        })
        .collect()
}

#[test]
fn fractional_second_timestamps_are_signing_times() {
    let f = fixture();
    for millis in [345, 5, 500] {
        for (decision, message) in decide(&f, |b| b.with_timestamp_millis_at(SIGNED_AT, millis)) {
            assert_eq!(decision, Decision::Allow, "{millis} ms: {message}");
        }
    }
}

#[test]
fn whole_second_timestamps_still_are() {
    let f = fixture();
    for (decision, message) in decide(&f, |b| b.with_timestamp()) {
        assert_eq!(decision, Decision::Allow, "{message}");
    }
    for (decision, message) in decide(&f, |b| b.with_timestamp_gen_time(&gen_time(SIGNED_AT, ""))) {
        assert_eq!(decision, Decision::Allow, "{message}");
    }
}

#[test]
fn times_der_forbids_refuse_the_bundle() {
    let f = fixture();
    let fraction = gen_time(SIGNED_AT, "345");
    for text in [
        gen_time(SIGNED_AT, "340"), // trailing zero
        gen_time(SIGNED_AT, "0"),   // a zero fraction is omitted
        gen_time(SIGNED_AT, "3a"),  // not a digit
        fraction.replace('.', ","), // comma separator
        fraction.replace('Z', ""),  // local time
    ] {
        for (decision, message) in decide(&f, |b| b.with_timestamp_gen_time(&text)) {
            assert_eq!(decision, Decision::Deny, "{text}: {message}");
            assert!(
                message.contains("invalid RFC 3161 timestamp"),
                "{text}: {message}"
            );
        }
    }
}
