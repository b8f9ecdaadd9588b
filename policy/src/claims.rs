//! Fulcio's CI claims (the certificate extensions under `1.3.6.1.4.1.57264.1`), by the names a
//! `[rule.authority.keyless] claims` table uses. Parsing is sigstore-crypto's; this only names
//! the fields so that a rule can pin any of them.

use std::collections::BTreeMap;

use sigstore_verify::crypto::{parse_certificate_info, FulcioCiClaims};
use sigstore_verify::types::DerCertificate;

/// Every claim name a rule may use, with where it comes from.
pub const NAMES: &[&str] = &[
    "build_signer_uri",
    "build_signer_digest",
    "runner_environment",
    "source_repository_uri",
    "source_repository_digest",
    "source_repository_ref",
    "source_repository_identifier",
    "source_repository_owner_uri",
    "source_repository_owner_identifier",
    "build_config_uri",
    "build_config_digest",
    "build_trigger",
    "run_invocation_uri",
    "source_repository_visibility_at_signing",
    "deployment_environment",
    "github_workflow_trigger",
    "github_workflow_sha",
    "github_workflow_name",
    "github_workflow_repository",
    "github_workflow_ref",
];

/// The claims a certificate (DER) makes, by name. Empty for a certificate that is not Fulcio's
/// or has no CI claims.
pub fn of(cert_der: &[u8]) -> BTreeMap<&'static str, String> {
    let Ok(info) = parse_certificate_info(&DerCertificate::from_bytes(cert_der)) else {
        return BTreeMap::new();
    };
    named(info.ci_claims)
}

fn named(c: FulcioCiClaims) -> BTreeMap<&'static str, String> {
    let g = c.deprecated_github;
    let all = [
        c.build_signer_uri,
        c.build_signer_digest,
        c.runner_environment,
        c.source_repository_uri,
        c.source_repository_digest,
        c.source_repository_ref,
        c.source_repository_identifier,
        c.source_repository_owner_uri,
        c.source_repository_owner_identifier,
        c.build_config_uri,
        c.build_config_digest,
        c.build_trigger,
        c.run_invocation_uri,
        c.source_repository_visibility_at_signing,
        c.deployment_environment,
        g.workflow_trigger,
        g.workflow_sha,
        g.workflow_name,
        g.workflow_repository,
        g.workflow_ref,
    ];
    NAMES
        .iter()
        .zip(all)
        .filter_map(|(name, value)| Some((*name, value?)))
        .collect()
}
