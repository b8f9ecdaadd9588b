//! In-toto statements: the payload of every DSSE envelope we accept, their binding to the image
//! (`subject`), and what the well-known predicates say about where an image came from.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD: &str = "application/vnd.in-toto+json";
/// What cosign v3's `sign` writes: a statement that only says "signed".
pub const COSIGN_SIGN: &str = "https://sigstore.dev/cosign/sign/v1";

const STATEMENT_TYPES: &[&str] = &[
    "https://in-toto.io/Statement/v1",
    "https://in-toto.io/Statement/v0.1",
];

/// A parsed in-toto statement (v1, or v0.1 as legacy cosign writes).
#[derive(Debug, Clone, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub kind: String,
    #[serde(default)]
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    #[serde(default)]
    pub predicate: Value,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Subject {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub digest: std::collections::BTreeMap<String, String>,
}

/// Where an image came from, as a provenance predicate says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub builder: Option<String>,
    pub source: Option<String>,
    pub commit: Option<String>,
}

/// Why a DSSE payload is not a statement about this image (a reason in the verdict).
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error("DSSE payload type {0:?} is not an in-toto statement")]
    PayloadType(String),
    #[error("DSSE payload is not an in-toto statement: {0}")]
    Json(#[source] serde_json::Error),
    #[error("unknown in-toto statement type {0:?}")]
    Kind(String),
    #[error("attestation subject mismatch: the {predicate_type} statement is about {named:?}, not {digest} (copied from another image?)")]
    Subject {
        predicate_type: String,
        named: Vec<String>,
        digest: String,
    },
}

impl Statement {
    /// Parses a DSSE payload of type `payload_type` as an in-toto statement.
    pub fn parse(payload_type: &str, payload: &[u8]) -> Result<Statement, StatementError> {
        if payload_type != IN_TOTO_PAYLOAD {
            return Err(StatementError::PayloadType(payload_type.to_owned()));
        }
        let s: Statement = serde_json::from_slice(payload).map_err(StatementError::Json)?;
        if !STATEMENT_TYPES.contains(&s.kind.as_str()) {
            return Err(StatementError::Kind(s.kind));
        }
        Ok(s)
    }

    /// The binding: one of the statement's subjects must be the manifest being served.
    pub fn check_subject(&self, digest: &str) -> Result<(), StatementError> {
        let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        if self.subject.iter().any(|s| {
            s.digest
                .get(alg)
                .is_some_and(|d| d.eq_ignore_ascii_case(hex))
        }) {
            return Ok(());
        }
        let named: Vec<String> = self
            .subject
            .iter()
            .flat_map(|s| s.digest.iter().map(|(a, d)| format!("{a}:{d}")))
            .collect();
        Err(StatementError::Subject {
            predicate_type: self.predicate_type.clone(),
            named,
            digest: digest.to_owned(),
        })
    }

    /// A short name for the predicate, for people.
    pub fn kind_name(&self) -> &'static str {
        match self.predicate_type.as_str() {
            COSIGN_SIGN => "cosign signature",
            t if t.starts_with("https://slsa.dev/provenance/") => "SLSA provenance",
            t if t.starts_with("https://spdx.dev/Document") => "SPDX SBOM",
            t if t.starts_with("https://cyclonedx.org/bom") => "CycloneDX SBOM",
            "https://cosign.sigstore.dev/attestation/v1" => "cosign custom predicate",
            "https://cosign.sigstore.dev/attestation/vuln/v1" => "vulnerability scan",
            _ => "attestation",
        }
    }

    /// The builder, source repository and commit of a SLSA provenance predicate (v1, or v0.2
    /// as the GitHub SLSA generator and Tekton Chains write them).
    pub fn provenance(&self) -> Option<Provenance> {
        let p = &self.predicate;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let commit_of = |d: &Value| {
            ["gitCommit", "sha1", "sha256"]
                .iter()
                .find_map(|k| text(&d[*k]))
        };
        match self.predicate_type.as_str() {
            "https://slsa.dev/provenance/v1" => {
                let deps = p["buildDefinition"]["resolvedDependencies"].as_array();
                let first_dep = deps.and_then(|d| d.first());
                let workflow = &p["buildDefinition"]["externalParameters"]["workflow"];
                Some(Provenance {
                    builder: text(&p["runDetails"]["builder"]["id"]),
                    source: text(&workflow["repository"])
                        .or_else(|| first_dep.and_then(|d| text(&d["uri"]))),
                    commit: first_dep.and_then(|d| commit_of(&d["digest"])),
                })
            }
            "https://slsa.dev/provenance/v0.2" | "https://slsa.dev/provenance/v0.1" => {
                let config = &p["invocation"]["configSource"];
                let material = p["materials"].as_array().and_then(|m| m.first());
                Some(Provenance {
                    builder: text(&p["builder"]["id"]),
                    source: text(&config["uri"]).or_else(|| material.and_then(|m| text(&m["uri"]))),
                    commit: commit_of(&config["digest"])
                        .or_else(|| material.and_then(|m| commit_of(&m["digest"]))),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn statement(predicate_type: &str, predicate: Value) -> Statement {
        let raw = json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": "x", "digest": {"sha256": "ab"}}],
            "predicateType": predicate_type,
            "predicate": predicate,
        });
        Statement::parse(IN_TOTO_PAYLOAD, raw.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn subject_binds_the_digest() {
        let s = statement(COSIGN_SIGN, json!({}));
        assert!(s.check_subject("sha256:ab").is_ok());
        let err = s.check_subject("sha256:cd").unwrap_err().to_string();
        assert!(err.contains("subject mismatch"), "{err}");
    }

    #[test]
    fn reads_slsa_v1_and_v02() {
        let v1 = statement(
            "https://slsa.dev/provenance/v1",
            json!({
                "buildDefinition": {
                    "externalParameters": {"workflow": {"repository": "https://github.com/acme/app"}},
                    "resolvedDependencies": [{"uri": "git+https://github.com/acme/app@refs/heads/main", "digest": {"gitCommit": "c0ffee"}}]
                },
                "runDetails": {"builder": {"id": "https://github.com/acme/builder"}}
            }),
        );
        assert_eq!(
            v1.provenance().unwrap(),
            Provenance {
                builder: Some("https://github.com/acme/builder".into()),
                source: Some("https://github.com/acme/app".into()),
                commit: Some("c0ffee".into()),
            }
        );
        let v02 = statement(
            "https://slsa.dev/provenance/v0.2",
            json!({
                "builder": {"id": "https://tekton.dev/chains/v2"},
                "materials": [{"uri": "git+https://github.com/acme/app.git", "digest": {"sha1": "beef"}}]
            }),
        );
        let p = v02.provenance().unwrap();
        assert_eq!(p.builder.as_deref(), Some("https://tekton.dev/chains/v2"));
        assert_eq!(p.commit.as_deref(), Some("beef"));
    }

    #[test]
    fn refuses_other_payloads() {
        assert!(Statement::parse("text/plain", b"{}").is_err());
        assert!(Statement::parse(
            IN_TOTO_PAYLOAD,
            b"{\"_type\":\"x\",\"predicateType\":\"y\"}"
        )
        .is_err());
    }
}
