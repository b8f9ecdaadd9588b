//! The trust and rule tables of the configuration. The key names are a contract: docs and tests
//! outside the code rely on them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[[trust.key]]`, `[[trust.root]]` and `[[trust.pins]]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyConfig>,
    #[serde(default, rename = "root")]
    pub roots: Vec<RootConfig>,
    #[serde(default)]
    pub pins: Vec<PinsConfig>,
}

/// A file of reviewed digests by image name (`"registry/repo" = ["sha256:…"]`), written by
/// `portcullis pin`. A missing file is an empty set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PinsConfig {
    pub name: String,
    pub path: PathBuf,
}

/// A cosign public key (PEM: ECDSA P-256/384/521, Ed25519 or RSA).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub name: String,
    pub path: PathBuf,
}

/// A Sigstore `trusted_root.json`: Fulcio CAs and Rekor log keys. `builtin:public-good` is the
/// public Sigstore instance's root, bundled into the binary.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RootConfig {
    pub name: String,
    pub trusted_root: PathBuf,
}

/// What a failing rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse the image.
    #[default]
    Enforce,
    /// Serve it, and log a warning.
    Warn,
    /// Serve it, and record the verdict only.
    Audit,
}

/// `[[rule]]`: images it covers, who may vouch for them, and what a failure does.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Globs on `registry/repository`; `*` within a segment, `**` across segments.
    pub images: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    /// How many distinct authorities must accept the image (default 1).
    pub threshold: Option<usize>,
    #[serde(default, rename = "authority")]
    pub authorities: Vec<AuthorityConfig>,
    /// In-toto attestations the image must also carry.
    #[serde(default, rename = "attestation")]
    pub attestations: Vec<AttestationConfig>,
    /// Require the base image named by the `org.opencontainers.image.base.{name,digest}`
    /// annotations to pass its own rules too.
    #[serde(default)]
    pub verify_base: bool,
    /// The first digest a tag served verified stays the only one served for it: a tag moved
    /// upstream is refused (under this rule's mode) until the new digest is pinned.
    #[serde(default)]
    pub immutable_tags: bool,
}

/// `[[rule.attestation]]`: an in-toto attestation of `predicate_type`, signed by one of
/// `authorities` (names of the rule's `[[rule.authority]]`s; all of them when empty), whose
/// predicate satisfies every CEL expression in `conditions`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    pub predicate_type: String,
    #[serde(default)]
    pub authorities: Vec<String>,
    /// CEL over `predicate` (the statement's predicate), `predicateType` and `subject`.
    #[serde(default)]
    pub conditions: Vec<String>,
}

/// `[[rule.authority]]`: a key, a keyless identity, or a pins set. Exactly one of the three.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// What `[[rule.attestation]] authorities` call this authority; defaults to the key's name,
    /// or `keyless-<n>` (1-based) for a keyless one.
    pub name: Option<String>,
    /// The name of a `[[trust.key]]`.
    pub key: Option<String>,
    pub keyless: Option<KeylessConfig>,
    /// The name of a `[[trust.pins]]`: the digests reviewed for this image name.
    pub pinned: Option<String>,
}

/// A Fulcio certificate identity, checked offline against a `[[trust.root]]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeylessConfig {
    /// The name of a `[[trust.root]]`.
    pub root: String,
    pub issuer: Option<String>,
    pub issuer_regex: Option<String>,
    /// The certificate's SAN: an email, or a URI (workflow URLs, SPIFFE IDs).
    pub subject: Option<String>,
    pub subject_regex: Option<String>,
    /// Fulcio certificate claims that must equal these values, by name: the CI claims
    /// (`source_repository_uri`, `source_repository_ref`, `source_repository_digest`,
    /// `build_trigger`, `build_signer_uri`, `runner_environment`, …) and GitHub's legacy ones
    /// (`github_workflow_repository`, `github_workflow_ref`, `github_workflow_sha`,
    /// `github_workflow_trigger`, `github_workflow_name`).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}
