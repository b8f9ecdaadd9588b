//! The verification summary itself: an in-toto Statement v1 whose predicate is a SLSA
//! Verification Summary Attestation v1 (<https://slsa.dev/spec/v1.0/verification_summary>),
//! signed as a DSSE envelope the way cosign signs attestations (PAE, ECDSA P-256 SHA-256,
//! `keyid` empty).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use portcullis_cache::Digest;
use portcullis_policy::{Mode, Verdict};
use serde_json::{json, Value};

use super::key::Key;

/// `predicateType` of a SLSA verification summary, v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/verification_summary/v1";
/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// DSSE `payloadType` of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// `policy.uri`: the policy is portcullis' own (rules, lists and trust material), named by its
/// fingerprint in `policy.digest`.
pub const POLICY_URI: &str = "portcullis:policy";
/// Predicate types of SLSA build provenance: a rule that required one, met, is a build-track
/// check at level 1.
const SLSA_PROVENANCE: &str = "https://slsa.dev/provenance/";

/// A piece of evidence the verdict was reached from: where to fetch it, and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub uri: String,
    pub digest: Digest,
}

/// What one summary says.
pub struct Facts<'a> {
    /// `registry/repository`.
    pub name: &'a str,
    pub digest: &'a Digest,
    pub fingerprint: &'a str,
    pub verifier_id: &'a str,
    /// RFC 3339, UTC.
    pub time_verified: &'a str,
    pub inputs: &'a [Input],
    pub verified_levels: Vec<&'static str>,
}

/// The statement's bytes: what the envelope signs and carries.
pub fn statement(f: &Facts<'_>) -> Vec<u8> {
    let inputs: Vec<Value> = f
        .inputs
        .iter()
        .map(|i| json!({ "uri": i.uri, "digest": { "sha256": i.digest.hex() } }))
        .collect();
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": [{ "name": f.name, "digest": { "sha256": f.digest.hex() } }],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "verifier": {
                "id": f.verifier_id,
                "version": { "portcullis": env!("CARGO_PKG_VERSION") },
            },
            "timeVerified": f.time_verified,
            "resourceUri": format!("oci://{}@{}", f.name, f.digest),
            "policy": { "uri": POLICY_URI, "digest": { "sha256": f.fingerprint } },
            "inputAttestations": inputs,
            "verificationResult": "PASSED",
            "verifiedLevels": f.verified_levels,
            "slsaVersion": "1.0",
        },
    });
    serde_json::to_vec(&statement).expect("a JSON value serializes")
}

/// `verifiedLevels`: SLSA Build L1 when an enforced rule required SLSA provenance and it was
/// met (provenance exists, signed by an identity the rule trusts, its conditions held); else
/// L0. Nothing portcullis checks says more (L2 and L3 are properties of the build platform).
pub fn verified_levels(verdict: &Verdict) -> Vec<&'static str> {
    let provenance = verdict
        .rules
        .iter()
        .filter(|r| r.passed && r.mode == Mode::Enforce)
        .flat_map(|r| &r.attestations)
        .any(|a| a.satisfied && a.predicate_type.starts_with(SLSA_PROVENANCE));
    vec![if provenance {
        "SLSA_BUILD_LEVEL_1"
    } else {
        "SLSA_BUILD_LEVEL_0"
    }]
}

/// DSSE's pre-authentication encoding: `DSSEv1 SP len(type) SP type SP len(body) SP body`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The DSSE envelope of `statement`, signed with `key`: the JSON cosign writes as an `.att`
/// layer and a bundle carries as `dsseEnvelope`.
pub fn envelope(key: &Key, statement: &[u8]) -> Value {
    let sig = key.sign(&pae(PAYLOAD_TYPE, statement));
    json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": B64.encode(statement),
        "signatures": [{ "keyid": "", "sig": B64.encode(sig) }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_the_dsse_v1_encoding() {
        // The example of the DSSE spec (protocol.md).
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    /// A verdict with one rule of `mode` that passed, having required `attestations`
    /// (predicate type, met).
    fn verdict(mode: &str, attestations: &[(&str, bool)]) -> Verdict {
        let attestations: Vec<Value> = attestations
            .iter()
            .map(|(t, ok)| json!({ "predicate_type": t, "satisfied": ok, "detail": "" }))
            .collect();
        serde_json::from_value(json!({
            "name": "r.test/a", "digest": "sha256:00", "decision": "allow", "message": "",
            "rules": [{ "rule": "r", "mode": mode, "passed": true, "threshold": 1,
                        "authorities": [], "attestations": attestations }],
        }))
        .unwrap()
    }

    #[test]
    fn build_level_1_only_for_required_provenance_that_was_met() {
        let l1 = ["SLSA_BUILD_LEVEL_1"];
        let l0 = ["SLSA_BUILD_LEVEL_0"];
        let v1 = "https://slsa.dev/provenance/v1";
        assert_eq!(verified_levels(&verdict("enforce", &[(v1, true)])), l1);
        assert_eq!(
            verified_levels(&verdict(
                "enforce",
                &[("https://slsa.dev/provenance/v0.2", true)]
            )),
            l1
        );
        assert_eq!(verified_levels(&verdict("enforce", &[])), l0);
        assert_eq!(verified_levels(&verdict("enforce", &[(v1, false)])), l0);
        assert_eq!(verified_levels(&verdict("warn", &[(v1, true)])), l0);
        let sbom = "https://spdx.dev/Document";
        assert_eq!(verified_levels(&verdict("enforce", &[(sbom, true)])), l0);
    }

    #[test]
    fn statements_name_the_digest_the_policy_and_the_inputs() {
        let digest = Digest::of(b"image");
        let input = Input {
            uri: format!("oci://r.test/a@{}", Digest::of(b"sig")),
            digest: Digest::of(b"sig"),
        };
        let facts = Facts {
            name: "r.test/a",
            digest: &digest,
            fingerprint: "ab12",
            verifier_id: "https://portcullis.test",
            time_verified: "2026-01-02T03:04:05Z",
            inputs: std::slice::from_ref(&input),
            verified_levels: vec!["SLSA_BUILD_LEVEL_0"],
        };
        let v: Value = serde_json::from_slice(&statement(&facts)).unwrap();
        assert_eq!(v["_type"], STATEMENT_TYPE);
        assert_eq!(v["subject"][0]["name"], "r.test/a");
        assert_eq!(v["subject"][0]["digest"]["sha256"], digest.hex());
        let p = &v["predicate"];
        assert_eq!(p["resourceUri"], format!("oci://r.test/a@{digest}"));
        assert_eq!(p["policy"]["digest"]["sha256"], "ab12");
        assert_eq!(
            p["verifier"]["version"]["portcullis"],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(p["inputAttestations"][0]["uri"], input.uri);
        assert_eq!(p["verificationResult"], "PASSED");
    }
}
