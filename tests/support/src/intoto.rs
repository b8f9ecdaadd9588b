//! in-toto statements and DSSE, as attestations about an OCI manifest carry them: the statement
//! bytes (subject = the manifest digest), the predicates cosign, the GitHub SLSA generator and
//! Tekton Chains write, and the DSSE pre-authentication encoding and envelope JSON.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// DSSE `payloadType` of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// `_type` of an in-toto Statement v1.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// `_type` of an in-toto Statement v0.1 (what `cosign attest` wrote before v3).
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";
/// The predicate type cosign v3 `sign` uses for a plain image signature.
pub const COSIGN_SIGN_V1: &str = "https://sigstore.dev/cosign/sign/v1";
/// SLSA provenance v1 predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// SLSA provenance v0.2 predicate type.
pub const SLSA_PROVENANCE_V02: &str = "https://slsa.dev/provenance/v0.2";

fn hex_of(manifest_digest: &str) -> &str {
    manifest_digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {manifest_digest}"))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("serialize string")
}

/// A statement's bytes in Go's field order (`_type`, `subject`, `predicateType`, `predicate`),
/// as cosign marshals it; `name` is left out of the subject when `None`.
fn statement_bytes(
    statement_type: &str,
    name: Option<&str>,
    manifest_digest: &str,
    predicate_type: &str,
    predicate: &Value,
) -> Vec<u8> {
    let name = name.map_or(String::new(), |n| format!("\"name\":{},", json_string(n)));
    format!(
        "{{\"_type\":{},\"subject\":[{{{name}\"digest\":{{\"sha256\":{}}}}}],\"predicateType\":{},\"predicate\":{}}}",
        json_string(statement_type),
        json_string(hex_of(manifest_digest)),
        json_string(predicate_type),
        predicate
    )
    .into_bytes()
}

/// An in-toto Statement v1 about `manifest_digest` (`sha256:<hex>`), subject named `name`
/// (usually the repository, e.g. `ghcr.io/acme/app`).
pub fn statement(
    name: &str,
    manifest_digest: &str,
    predicate_type: &str,
    predicate: &Value,
) -> Vec<u8> {
    statement_bytes(
        STATEMENT_V1,
        Some(name),
        manifest_digest,
        predicate_type,
        predicate,
    )
}

/// An in-toto Statement v0.1, as legacy `cosign attest` wrote into `.att` layers.
pub fn statement_v01(
    name: &str,
    manifest_digest: &str,
    predicate_type: &str,
    predicate: &Value,
) -> Vec<u8> {
    statement_bytes(
        STATEMENT_V01,
        Some(name),
        manifest_digest,
        predicate_type,
        predicate,
    )
}

/// Exactly what cosign v3 `sign` puts in its DSSE envelope for `manifest_digest`:
/// `{"_type":"https://in-toto.io/Statement/v1","subject":[{"digest":{"sha256":HEX}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{}}`
/// (the subject has no name).
pub fn cosign_sign_v1_statement(manifest_digest: &str) -> Vec<u8> {
    statement_bytes(
        STATEMENT_V1,
        None,
        manifest_digest,
        COSIGN_SIGN_V1,
        &json!({}),
    )
}

/// A SLSA provenance v1 predicate as the GitHub SLSA generator writes it: built by
/// `builder_id` from the workflow at `workflow_path` of `repository` (`https://github.com/o/r`)
/// at `git_ref` (`refs/heads/main`), commit `commit` (40 hex).
pub fn slsa_v1_predicate(
    builder_id: &str,
    repository: &str,
    git_ref: &str,
    commit: &str,
    workflow_path: &str,
) -> Value {
    json!({
        "buildDefinition": {
            "buildType": "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1",
            "externalParameters": {
                "workflow": { "ref": git_ref, "repository": repository, "path": workflow_path }
            },
            "internalParameters": {
                "github": { "event_name": "push", "repository_id": "1", "repository_owner_id": "1" }
            },
            "resolvedDependencies": [{
                "uri": format!("git+{repository}@{git_ref}"),
                "digest": { "gitCommit": commit }
            }]
        },
        "runDetails": {
            "builder": { "id": builder_id },
            "metadata": { "invocationId": format!("{repository}/actions/runs/1/attempts/1") }
        }
    })
}

/// A SLSA provenance v0.2 predicate as Tekton Chains (or the SLSA generator v1) writes it:
/// `builder.id`, `buildType`, the config source `config_uri` (`git+https://...@ref`) at
/// `commit` (sha1) with `entry_point`, and that source as the one material.
pub fn slsa_v02_predicate(
    builder_id: &str,
    build_type: &str,
    config_uri: &str,
    commit: &str,
    entry_point: &str,
) -> Value {
    json!({
        "builder": { "id": builder_id },
        "buildType": build_type,
        "invocation": {
            "configSource": { "uri": config_uri, "digest": { "sha1": commit }, "entryPoint": entry_point },
            "parameters": {},
            "environment": {}
        },
        "metadata": {
            "buildStartedOn": "2024-01-01T00:00:00Z",
            "completeness": { "parameters": false, "environment": false, "materials": false },
            "reproducible": false
        },
        "materials": [{ "uri": config_uri, "digest": { "sha1": commit } }]
    })
}

/// DSSE v1 pre-authentication encoding: `DSSEv1 <len> <type> <len> <payload>`, what is signed.
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

/// A one-signature DSSE envelope as JSON; `keyid` is written (empty, as cosign does) only when
/// given.
pub(crate) fn envelope(
    payload_type: &str,
    payload: &[u8],
    signature: &[u8],
    keyid: Option<&str>,
) -> Value {
    let mut sig = json!({ "sig": B64.encode(signature) });
    if let Some(keyid) = keyid {
        sig["keyid"] = keyid.into();
    }
    json!({ "payloadType": payload_type, "payload": B64.encode(payload), "signatures": [sig] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosign_sign_statement_is_cosigns_bytes() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            String::from_utf8(cosign_sign_v1_statement(&digest)).unwrap(),
            format!(
                r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{}"}}}}],"predicateType":"https://sigstore.dev/cosign/sign/v1","predicate":{{}}}}"#,
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn statements_parse_with_named_subject() {
        let pred = slsa_v1_predicate("b", "https://github.com/o/r", "refs/heads/main", "c", "w");
        let s: Value =
            serde_json::from_slice(&statement("o/r", "sha256:00", SLSA_PROVENANCE_V1, &pred))
                .unwrap();
        assert_eq!(s["subject"][0]["name"], "o/r");
        assert_eq!(s["subject"][0]["digest"]["sha256"], "00");
        assert_eq!(s["predicate"]["runDetails"]["builder"]["id"], "b");
        let old: Value =
            serde_json::from_slice(&statement_v01("o/r", "sha256:00", "p", &json!({}))).unwrap();
        assert_eq!(old["_type"], STATEMENT_V01);
    }

    #[test]
    fn pae_matches_the_dsse_spec_vector() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }
}
