//! Rule semantics on real signatures minted at test time: thresholds, regex and URI identities,
//! several signature layers, and checks bound to one layer.

use portcullis_policy::{
    AuthorityConfig, Decision, KeyConfig, KeylessConfig, Mode, NamePolicyConfig, Policy,
    RootConfig, RuleConfig, SignatureLayer, TrustConfig,
};
use portcullis_testkit::cosign::{simple_signing_payload, CosignKey, TestSigstore};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

struct Fixture {
    _dir: tempfile::TempDir,
    keys: Vec<CosignKey>,
    sigstore: TestSigstore,
    trust: TrustConfig,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = vec![CosignKey::generate(), CosignKey::generate()];
    let mut trust = TrustConfig::default();
    for (i, k) in keys.iter().enumerate() {
        let path = dir.path().join(format!("k{i}.pub"));
        k.write_public(&path);
        trust.keys.push(KeyConfig {
            name: format!("k{i}"),
            path,
        });
    }
    let sigstore = TestSigstore::new();
    let root = dir.path().join("root.json");
    std::fs::write(&root, sigstore.trusted_root_json()).unwrap();
    trust.roots.push(RootConfig {
        name: "test".into(),
        trusted_root: root,
    });
    Fixture {
        _dir: dir,
        keys,
        sigstore,
        trust,
    }
}

fn key(name: &str) -> AuthorityConfig {
    AuthorityConfig {
        key: Some(name.into()),
        ..Default::default()
    }
}

fn keyless(issuer: &str, subject_regex: &str) -> AuthorityConfig {
    AuthorityConfig {
        keyless: Some(KeylessConfig {
            root: "test".into(),
            issuer: Some(issuer.into()),
            issuer_regex: None,
            subject: None,
            subject_regex: Some(subject_regex.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn policy(f: &Fixture, threshold: Option<usize>, authorities: Vec<AuthorityConfig>) -> Policy {
    let rule = RuleConfig {
        name: "r".into(),
        images: vec!["reg.test/**".into()],
        mode: Mode::Enforce,
        threshold,
        authorities,
        ..Default::default()
    };
    Policy::new(&NamePolicyConfig::default(), &f.trust, &[rule]).unwrap()
}

fn keyed_layer(k: &CosignKey, digest: &str) -> SignatureLayer {
    let payload = simple_signing_payload("reg.test/app", digest);
    SignatureLayer {
        signature: k.sign(&payload),
        payload,
        ..SignatureLayer::default()
    }
}

fn keyless_layer(f: &Fixture, identity: &str, issuer: &str) -> SignatureLayer {
    ci_layer(f, identity, issuer, &[])
}

/// A keyless layer whose leaf carries Fulcio CI `claims` (see `TestSigstore::issue_ci_leaf`).
fn ci_layer(f: &Fixture, identity: &str, issuer: &str, claims: &[(u64, &str)]) -> SignatureLayer {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let payload = simple_signing_payload("reg.test/app", DIGEST);
    let leaf = f
        .sigstore
        .issue_ci_leaf(identity, issuer, (now - 60, now + 600), claims);
    let signature = leaf.sign(&payload);
    SignatureLayer {
        bundle: Some(
            f.sigstore
                .set_bundle(&payload, &signature, &leaf.cert_pem, now),
        ),
        certificate: Some(leaf.cert_pem.clone()),
        signature,
        payload,
        chain: None,
    }
}

#[test]
fn a_threshold_needs_distinct_authorities() {
    let f = fixture();
    let p = policy(&f, Some(2), vec![key("k0"), key("k1")]);
    let one = [keyed_layer(&f.keys[0], DIGEST)];
    let v = p.evaluate("reg.test/app", DIGEST, &one.to_vec().into());
    assert_eq!(v.decision, Decision::Deny);
    assert!(v.message.contains("needs 2 of 2"), "{}", v.message);
    let both = [
        keyed_layer(&f.keys[0], DIGEST),
        keyed_layer(&f.keys[1], DIGEST),
    ];
    assert_eq!(
        p.evaluate("reg.test/app", DIGEST, &both.to_vec().into())
            .decision,
        Decision::Allow
    );
    // The same key twice is still one authority.
    let twice = [
        keyed_layer(&f.keys[0], DIGEST),
        keyed_layer(&f.keys[0], DIGEST),
    ];
    assert_eq!(
        p.evaluate("reg.test/app", DIGEST, &twice.to_vec().into())
            .decision,
        Decision::Deny
    );
}

#[test]
fn a_key_must_sign_the_layer_that_binds_the_digest() {
    let f = fixture();
    let p = policy(&f, None, vec![key("k0")]);
    // One layer binds the digest but is signed by an unknown key; another is signed by the
    // trusted key but for another image. Neither alone proves anything.
    let layers = [
        keyed_layer(&f.keys[1], DIGEST),
        keyed_layer(&f.keys[0], OTHER),
    ];
    let v = p.evaluate("reg.test/app", DIGEST, &layers.to_vec().into());
    assert_eq!(v.decision, Decision::Deny);
    assert!(
        v.message.contains("signature by an unknown key"),
        "{}",
        v.message
    );
    assert!(
        v.message.contains("digest mismatch in the payload"),
        "{}",
        v.message
    );
}

#[test]
fn uri_subjects_such_as_spiffe_ids_match_by_regex() {
    let f = fixture();
    let p = policy(
        &f,
        None,
        vec![keyless(
            "https://spire.test",
            "^spiffe://prod\\.test/ns/ci/",
        )],
    );
    let good = [keyless_layer(
        &f,
        "spiffe://prod.test/ns/ci/sa/builder",
        "https://spire.test",
    )];
    let v = p.evaluate("reg.test/app", DIGEST, &good.to_vec().into());
    assert_eq!(v.decision, Decision::Allow, "{}", v.message);
    assert!(
        v.message.contains("spiffe://prod.test/ns/ci/sa/builder"),
        "{}",
        v.message
    );
    let bad = [keyless_layer(
        &f,
        "spiffe://dev.test/ns/ci/sa/builder",
        "https://spire.test",
    )];
    let v = p.evaluate("reg.test/app", DIGEST, &bad.to_vec().into());
    assert!(v.message.contains("identity mismatch"), "{}", v.message);
    let wrong_issuer = [keyless_layer(
        &f,
        "spiffe://prod.test/ns/ci/sa/b",
        "https://evil.test",
    )];
    let v = p.evaluate("reg.test/app", DIGEST, &wrong_issuer.to_vec().into());
    assert!(
        v.message.contains("issuer \"https://evil.test\""),
        "{}",
        v.message
    );
}

#[test]
fn a_keyed_signature_cannot_satisfy_a_keyless_authority() {
    let f = fixture();
    let p = policy(&f, None, vec![keyless("https://issuer.test", ".*")]);
    let v = p.evaluate(
        "reg.test/app",
        DIGEST,
        &vec![keyed_layer(&f.keys[0], DIGEST)].into(),
    );
    assert_eq!(v.decision, Decision::Deny);
    assert!(v.message.contains("no certificate"), "{}", v.message);
}

#[test]
fn a_root_from_another_instance_is_refused() {
    let f = fixture();
    let p = policy(&f, None, vec![keyless("https://issuer.test", ".*")]);
    let stranger = fixture();
    let v = p.evaluate(
        "reg.test/app",
        DIGEST,
        &vec![keyless_layer(&stranger, "a@b.test", "https://issuer.test")].into(),
    );
    assert_eq!(v.decision, Decision::Deny);
    assert!(v.message.contains("SET invalid"), "{}", v.message);
}

#[test]
fn bad_rules_are_refused_at_load() {
    let f = fixture();
    let bad = |authorities: Vec<AuthorityConfig>, threshold: Option<usize>| {
        let rule = RuleConfig {
            name: "r".into(),
            images: vec!["x/**".into()],
            mode: Mode::Enforce,
            threshold,
            authorities,
            ..Default::default()
        };
        Policy::new(&NamePolicyConfig::default(), &f.trust, &[rule])
            .err()
            .unwrap()
            .to_string()
    };
    assert!(bad(vec![key("nope")], None).contains("not a [[trust.key]]"));
    assert!(bad(vec![key("k0")], Some(2)).contains("threshold"));
    assert!(bad(vec![], None).contains("no [[rule.authority]]"));
    assert!(bad(vec![AuthorityConfig::default()], None).contains("exactly one"));
}

#[test]
fn ci_claims_and_spiffe_ids_are_matched() {
    let f = fixture();
    let spiffe = "spiffe://acme.test/ns/ci/sa/builder";
    let layer = |claims: &[(u64, &str)]| ci_layer(&f, spiffe, "https://issuer.test", claims);
    let authority = AuthorityConfig {
        keyless: Some(KeylessConfig {
            root: "test".into(),
            issuer: Some("https://issuer.test".into()),
            subject: Some(spiffe.into()),
            claims: [
                ("github_workflow_repository", "acme/app"),
                ("source_repository_ref", "refs/heads/main"),
                ("build_trigger", "push"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let p = policy(&f, None, vec![authority]);
    // 1.5: workflow repository (legacy, raw); 1.14: source ref and 1.20: trigger (UTF8String).
    let good = [layer(&[
        (5, "acme/app"),
        (14, "refs/heads/main"),
        (20, "push"),
    ])];
    let v = p.evaluate("reg.test/app", DIGEST, &good.to_vec().into());
    assert_eq!(v.decision, Decision::Allow, "{}", v.message);
    let fork = [layer(&[
        (5, "evil/app"),
        (14, "refs/heads/main"),
        (20, "push"),
    ])];
    let v = p.evaluate("reg.test/app", DIGEST, &fork.to_vec().into());
    assert_eq!(v.decision, Decision::Deny);
    assert!(
        v.message
            .contains("claim github_workflow_repository is Some(\"evil/app\")"),
        "{}",
        v.message
    );
    let untriggered = [layer(&[(5, "acme/app"), (14, "refs/heads/main")])];
    let v = p.evaluate("reg.test/app", DIGEST, &untriggered.to_vec().into());
    assert!(v.message.contains("build_trigger is None"), "{}", v.message);

    let bad = RuleConfig {
        name: "r".into(),
        images: vec!["x/**".into()],
        authorities: vec![AuthorityConfig {
            keyless: Some(KeylessConfig {
                root: "test".into(),
                issuer: Some("i".into()),
                subject: Some("s".into()),
                claims: [("github_workflow_repo".to_owned(), "x".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = Policy::new(&NamePolicyConfig::default(), &f.trust, &[bad])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("unknown certificate claim \"github_workflow_repo\""),
        "{err}"
    );
}
