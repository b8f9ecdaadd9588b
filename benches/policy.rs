//! The CPU cost of a cold verification: one keyed and one keyless (SET + chain at log time +
//! identity) signature evaluated against a rule, with artifacts already fetched. The warm path is
//! a verdict-cache hit and never reaches this code.

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis_policy::{
    AttestationConfig, AuthorityConfig, Evidence, KeyConfig, KeylessConfig, Mode, NamePolicyConfig,
    Policy, RootConfig, RuleConfig, SignatureLayer, TrustConfig,
};
use portcullis_testkit::cosign::{simple_signing_payload, CosignKey, TestSigstore};
use portcullis_testkit::intoto::{cosign_sign_v1_statement, slsa_v1_predicate, statement};
use portcullis_testkit::Signer;

fn rule(name: &str, image: &str, authority: AuthorityConfig) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        images: vec![image.into()],
        mode: Mode::Enforce,
        threshold: None,
        authorities: vec![authority],
        ..Default::default()
    }
}

fn evaluate(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = CosignKey::generate();
    key.write_public(&dir.path().join("k.pub"));
    let sigstore = TestSigstore::new();
    std::fs::write(dir.path().join("root.json"), sigstore.trusted_root_json()).unwrap();
    let trust = TrustConfig {
        keys: vec![KeyConfig {
            name: "release".into(),
            path: dir.path().join("k.pub"),
        }],
        roots: vec![RootConfig {
            name: "test".into(),
            trusted_root: dir.path().join("root.json"),
        }],
        pins: Vec::new(),
    };
    let rules = vec![
        rule(
            "keyed",
            "r.test/keyed",
            AuthorityConfig {
                key: Some("release".into()),
                ..Default::default()
            },
        ),
        rule(
            "keyless",
            "r.test/keyless",
            AuthorityConfig {
                keyless: Some(KeylessConfig {
                    root: "test".into(),
                    issuer: Some("https://issuer.test".into()),
                    issuer_regex: None,
                    subject: None,
                    subject_regex: Some("^builder@".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ];
    let policy = Policy::new(&NamePolicyConfig::default(), &trust, &rules).unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));

    let payload = simple_signing_payload("r.test/keyed", &digest);
    let keyed: Evidence = vec![SignatureLayer {
        signature: key.sign(&payload),
        payload,
        ..SignatureLayer::default()
    }]
    .into();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let payload = simple_signing_payload("r.test/keyless", &digest);
    let leaf = sigstore.issue_leaf(
        "builder@example.test",
        "https://issuer.test",
        now - 60,
        now + 600,
    );
    let signature = leaf.sign(&payload);
    let keyless: Evidence = vec![SignatureLayer {
        bundle: Some(sigstore.set_bundle(&payload, &signature, &leaf.cert_pem, now)),
        certificate: Some(leaf.cert_pem.clone()),
        signature,
        payload,
        chain: None,
    }]
    .into();
    assert_eq!(
        policy.evaluate("r.test/keyed", &digest, &keyed).decision,
        portcullis_policy::Decision::Allow
    );
    assert_eq!(
        policy
            .evaluate("r.test/keyless", &digest, &keyless)
            .decision,
        portcullis_policy::Decision::Allow
    );
    c.bench_function("verify keyed signature", |b| {
        b.iter(|| policy.evaluate("r.test/keyed", &digest, &keyed))
    });
    c.bench_function("verify keyless signature (SET, chain, identity)", |b| {
        b.iter(|| policy.evaluate("r.test/keyless", &digest, &keyless))
    });
    provenance(c, &sigstore, &trust, &digest);
}

/// Cold cost of a cosign v3 image: a keyless sign/v1 bundle plus a SLSA v1 attestation bundle
/// (Rekor v1 SET, inclusion proof and checkpoint each), under a rule that requires the
/// attestation with two CEL conditions.
fn provenance(c: &mut Criterion, sigstore: &TestSigstore, trust: &TrustConfig, digest: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let leaf = sigstore.issue_leaf(
        "builder@example.test",
        "https://issuer.test",
        now - 60,
        now + 600,
    );
    let builder = "https://github.com/acme/builder/.github/workflows/build.yml@refs/heads/main";
    let predicate = slsa_v1_predicate(
        builder,
        "https://github.com/acme/app",
        "refs/heads/main",
        &"ab".repeat(20),
        "build.yml",
    );
    let evidence = Evidence {
        bundles: vec![
            sigstore
                .dsse_bundle(Signer::Keyless(&leaf), &cosign_sign_v1_statement(digest))
                .build()
                .into_bytes(),
            sigstore
                .dsse_bundle(
                    Signer::Keyless(&leaf),
                    &statement(
                        "r.test/prov",
                        digest,
                        "https://slsa.dev/provenance/v1",
                        &predicate,
                    ),
                )
                .build()
                .into_bytes(),
        ],
        ..Evidence::default()
    };
    let rule = RuleConfig {
        attestations: vec![AttestationConfig {
            predicate_type: "https://slsa.dev/provenance/v1".into(),
            conditions: vec![
                format!("predicate.runDetails.builder.id == {builder:?}"),
                r#"predicate.buildDefinition.externalParameters.workflow.repository.startsWith("https://github.com/acme/")"#.into(),
            ],
            ..Default::default()
        }],
        ..rule("prov", "r.test/prov", AuthorityConfig {
            keyless: Some(KeylessConfig {
                root: "test".into(),
                issuer: Some("https://issuer.test".into()),
                subject: Some("builder@example.test".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let policy = Policy::new(&NamePolicyConfig::default(), trust, &[rule]).unwrap();
    let v = policy.evaluate("r.test/prov", digest, &evidence);
    assert_eq!(
        v.decision,
        portcullis_policy::Decision::Allow,
        "{}",
        v.message
    );
    c.bench_function(
        "verify cosign v3 signature + SLSA attestation bundles",
        |b| b.iter(|| policy.evaluate("r.test/prov", digest, &evidence)),
    );
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
