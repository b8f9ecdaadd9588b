//! The policy's readers of untrusted evidence JSON, through `Policy::evaluate` as the gate calls
//! it: the input is at once a Sigstore bundle from the referrers, the DSSE envelope of a legacy
//! `.att` layer and the simple-signing payload of a `.sig` layer. The policy trusts a key and a
//! test Sigstore root (`fuzz/fixtures`, minted by the testkit with the seeds), so seeds verify
//! and mutations reach the in-toto statement, its subject binding and a CEL condition.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_cache::Digest;
use portcullis_policy::{
    AttestationConfig, AttestationLayer, AuthorityConfig, Evidence, KeyConfig, KeylessConfig,
    NamePolicyConfig, Policy, RootConfig, RuleConfig, SignatureLayer, TrustConfig, Verdict,
};

const NAME: &str = "ghcr.io/acme/app";
/// The manifest the seeds sign.
const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let key = dir.join("cosign.pub");
        std::fs::write(&key, include_bytes!("../fixtures/cosign.pub")).unwrap();
        let root = dir.join("trusted_root.json");
        std::fs::write(&root, include_bytes!("../fixtures/trusted_root.json")).unwrap();
        let trust = TrustConfig {
            keys: vec![KeyConfig {
                name: "key".into(),
                path: key,
            }],
            roots: vec![RootConfig {
                name: "test".into(),
                trusted_root: root,
            }],
            pins: Vec::new(),
        };
        let rule = RuleConfig {
            name: "all".into(),
            images: vec!["**".into()],
            authorities: vec![
                AuthorityConfig {
                    key: Some("key".into()),
                    ..Default::default()
                },
                AuthorityConfig {
                    keyless: Some(KeylessConfig {
                        root: "test".into(),
                        issuer_regex: Some(".*".into()),
                        subject_regex: Some(".*".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
            attestations: vec![AttestationConfig {
                predicate_type: "https://slsa.dev/provenance/v1".into(),
                authorities: vec![],
                conditions: vec![
                    r#"predicate.runDetails.builder.id.startsWith("https://github.com/")"#.into(),
                ],
            }],
            ..Default::default()
        };
        Policy::new(&NamePolicyConfig::default(), &trust, &[rule]).expect("the fuzz policy")
    })
}

fuzz_target!(|data: &[u8]| {
    let policy = policy();
    let digest = Digest::of(MANIFEST).to_string();
    let evidence = Evidence {
        signatures: vec![SignatureLayer {
            payload: data.to_vec(),
            signature: String::new(),
            ..SignatureLayer::default()
        }],
        attestations: vec![AttestationLayer {
            envelope: data.to_vec(),
            ..AttestationLayer::default()
        }],
        bundles: vec![data.to_vec()],
    };
    let verdict = policy.evaluate(NAME, &digest, &evidence);
    let _ = verdict.report();
    // Verdicts are stored as JSON: what is written reads back.
    let stored = serde_json::to_vec(&verdict).expect("a verdict serialises");
    let read: Verdict = serde_json::from_slice(&stored).expect("a stored verdict reads back");
    assert_eq!(read.decision, verdict.decision);
    let _ = evidence.attestations[0].statement(&digest);
});
