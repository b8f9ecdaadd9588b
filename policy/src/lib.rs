//! Trust decisions for portcullis.
//!
//! Given a normalised image name (`registry/repository`), a manifest digest and the evidence the
//! proxy fetched for it (cosign `.sig`/`.att` layers, Sigstore bundles), this crate decides whether the image may be served:
//! the allow-list and deny-list, the `[[rule]]`s that cover the name (keyed and keyless
//! authorities, checked offline against local keys and Sigstore trusted roots), and
//! `[policy] default` for names no rule covers. It knows nothing of HTTP or storage: the proxy
//! fetches, this crate decides.
//!
//! # Layout
//! - `names`: allow/deny globs and the default action.
//! - `config`: the `[[trust.*]]` and `[[rule]]` tables.
//! - `trust`: keys, trusted roots and pins loaded from files (and the bundled public-good root).
//! - `pins`: reviewed digests by image name (`[[trust.pins]]`), an authority for unsigned images.
//! - `signature`: a fetched signature layer, the payload binding and keyed checks.
//! - `attestation`: a legacy `.att` layer (DSSE), keyed checks and its bundle equivalent.
//! - `bundle`: Sigstore bundles, verified with `sigstore-verify` (proofs, TSA, Rekor v2).
//! - `statement`: in-toto statements, their subject binding and provenance.
//! - `keyless`: SET, chain-at-log-time and identity checks for legacy signatures.
//! - `claims`: Fulcio CI claims by name.
//! - `conditions`: CEL conditions on attestations.
//! - `authority`: what each authority vouches for among the evidence.
//! - `rules`: rule evaluation and the [`Verdict`].
//! - `report`: the verdict's full chain, for people.

mod attestation;
mod authority;
mod bundle;
mod claims;
mod conditions;
mod config;
pub mod cosign;
mod keyless;
mod names;
mod pins;
mod report;
mod rules;
mod signature;
mod statement;
mod trust;

use sha2::{Digest as _, Sha256};

pub use attestation::AttestationLayer;
pub use authority::AuthorityError;
pub use bundle::MEDIA_TYPE_PREFIX as BUNDLE_MEDIA_TYPE_PREFIX;
pub use conditions::ConditionError;
pub use config::{
    AttestationConfig, AuthorityConfig, KeyConfig, KeylessConfig, Mode, PinsConfig, RootConfig,
    RuleConfig, TrustConfig,
};
pub use names::{
    compile_globs, DefaultAction, GlobError, NameDecision, NamePolicy, NamePolicyConfig,
};
pub use pins::{split_key as split_pins_key, PinSet, PinsError};
pub use rules::{
    AttestationResult, AuthorityResult, Decision, FoundAttestation, Rule, RuleError, RuleResult,
    Verdict,
};
pub use signature::SignatureLayer;
pub use statement::Provenance;
pub use trust::{RootError, TrustError, TrustStore, BUILTIN_PUBLIC_GOOD};

/// A configuration the policy cannot be built from: which part, and its cause as the source.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// `[policy] allow` or `deny`.
    #[error("[policy]: {0}")]
    Names(#[source] GlobError),
    /// Boxed: trust errors carry paths and the sigstore crate's large errors.
    #[error(transparent)]
    Trust(Box<TrustError>),
    #[error("[[rule]] {rule:?}: {source}")]
    Rule {
        rule: String,
        #[source]
        source: RuleError,
    },
}

impl From<TrustError> for PolicyError {
    fn from(e: TrustError) -> Self {
        PolicyError::Trust(Box::new(e))
    }
}

/// The whole policy: names, rules, trust, and the fingerprint verdicts are cached under.
pub struct Policy {
    pub names: NamePolicy,
    rules: Vec<Rule>,
    trust: TrustStore,
    fingerprint: String,
}

impl Policy {
    pub fn new(
        names: &NamePolicyConfig,
        trust: &TrustConfig,
        rules: &[RuleConfig],
    ) -> Result<Policy, PolicyError> {
        let names_policy = NamePolicy::new(names).map_err(PolicyError::Names)?;
        let store = TrustStore::load(trust)?;
        let compiled = rules
            .iter()
            .map(|r| {
                Rule::compile(r, &store).map_err(|source| PolicyError::Rule {
                    rule: r.name.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut hash = Sha256::new();
        hash.update(serde_json::to_vec(&(names, rules)).expect("policy serialises"));
        hash.update(&store.fingerprint);
        Ok(Policy {
            names: names_policy,
            rules: compiled,
            fingerprint: hex::encode(hash.finalize()),
            trust: store,
        })
    }

    /// A hash of the rules, lists and every byte of trust material: a verdict is only as good as
    /// the policy that made it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The rules covering `name`.
    pub fn rules_for(&self, name: &str) -> Vec<&Rule> {
        self.rules.iter().filter(|r| r.matches(name)).collect()
    }

    /// Decides on `name@digest` given the evidence found for it.
    pub fn evaluate(&self, name: &str, digest: &str, evidence: &Evidence) -> Verdict {
        let rules = self.rules_for(name);
        rules::verdict(
            name,
            digest,
            &rules,
            evidence,
            &self.trust,
            self.names.default_action(),
        )
    }

    /// Whether a rule covering `name` keeps its tags immutable, and the strictest mode among
    /// those that do (what serving a moved tag does).
    pub fn immutable_tags(&self, name: &str) -> Option<Mode> {
        strictest(
            self.rules_for(name)
                .iter()
                .filter(|r| r.immutable_tags)
                .map(|r| r.mode),
        )
    }

    /// A test for names whose tags some rule keeps immutable, owned (for background work).
    pub fn immutable_names(&self) -> impl Fn(&str) -> bool + Send + 'static {
        let sets: Vec<globset::GlobSet> = self
            .rules
            .iter()
            .filter(|r| r.immutable_tags)
            .map(|r| r.images().clone())
            .collect();
        move |name| sets.iter().any(|s| s.is_match(name))
    }

    /// The `[[trust.pins]]` set that pins `digest` for `name`, if any.
    pub fn pinned_by(&self, name: &str, digest: &str) -> Option<&str> {
        self.trust
            .pins
            .iter()
            .find(|(_, set)| set.contains(name, digest))
            .map(|(n, _)| n.as_str())
    }

    /// The digest `name:tag` was last pinned at (in the first set that pins the tag), if any.
    pub fn tag_pin(&self, name: &str, tag: &str) -> Option<&str> {
        self.trust
            .pins
            .values()
            .find_map(|set| set.for_tag(name, tag))
    }

    /// The pins sets by name: what `portcullis pin` edits and checks.
    pub fn pins(&self) -> &std::collections::BTreeMap<String, PinSet> {
        &self.trust.pins
    }

    /// Whether a rule covering `name` asks for its base image to be verified too, and the
    /// strictest mode among those that do (what a failing base image does).
    pub fn verify_base(&self, name: &str) -> Option<Mode> {
        strictest(
            self.rules_for(name)
                .iter()
                .filter(|r| r.verify_base)
                .map(|r| r.mode),
        )
    }
}

fn strictest(modes: impl Iterator<Item = Mode>) -> Option<Mode> {
    modes.min_by_key(|m| match m {
        Mode::Enforce => 0,
        Mode::Warn => 1,
        Mode::Audit => 2,
    })
}

/// Everything the proxy found for one manifest: legacy cosign signatures (`.sig`) and
/// attestations (`.att`), and Sigstore bundles from the referrers. All of it is unverified input.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub signatures: Vec<SignatureLayer>,
    pub attestations: Vec<AttestationLayer>,
    /// Bundle JSON (any version).
    pub bundles: Vec<Vec<u8>>,
}

impl From<Vec<SignatureLayer>> for Evidence {
    fn from(signatures: Vec<SignatureLayer>) -> Evidence {
        Evidence {
            signatures,
            ..Evidence::default()
        }
    }
}

impl Evidence {
    pub fn is_empty(&self) -> bool {
        self.signatures.is_empty() && self.attestations.is_empty() && self.bundles.is_empty()
    }
}
