//! Trust decisions for portcullis.
//!
//! Given a normalised image name (`registry/repository`), a manifest digest and the cosign
//! signature layers the proxy fetched for it, this crate decides whether the image may be served:
//! the allow-list and deny-list, the `[[rule]]`s that cover the name (keyed and keyless
//! authorities, checked offline against local keys and Sigstore trusted roots), and
//! `[policy] default` for names no rule covers. It knows nothing of HTTP or storage: the proxy
//! fetches, this crate decides.
//!
//! # Layout
//! - `names`: allow/deny globs and the default action.
//! - `config`: the `[[trust.*]]` and `[[rule]]` tables.
//! - `trust`: keys and trusted roots loaded from files (and the bundled public-good root).
//! - `signature`: a fetched signature layer, the payload binding and keyed checks.
//! - `keyless`: SET, chain-at-log-time and identity checks.
//! - `rules`: rule evaluation and the [`Verdict`].

mod config;
mod keyless;
mod names;
mod rules;
mod signature;
mod trust;

use sha2::{Digest as _, Sha256};

pub use config::{
    AuthorityConfig, KeyConfig, KeylessConfig, Mode, RootConfig, RuleConfig, TrustConfig,
};
pub use names::{compile_globs, DefaultAction, NameDecision, NamePolicy, NamePolicyConfig};
pub use rules::{AuthorityResult, Decision, Rule, RuleResult, Verdict};
pub use signature::SignatureLayer;
pub use trust::{TrustStore, BUILTIN_PUBLIC_GOOD};

/// A configuration the policy cannot be built from.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy glob {glob:?}: {source}")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("{0}")]
    Trust(String),
    #[error("{0}")]
    Rule(String),
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
        let names_policy = NamePolicy::new(names)?;
        let store = TrustStore::load(trust)?;
        let compiled = rules
            .iter()
            .map(|r| Rule::compile(r, &store))
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

    /// Decides on `name@digest` given the signature layers found for it.
    pub fn evaluate(&self, name: &str, digest: &str, layers: &[SignatureLayer]) -> Verdict {
        let rules = self.rules_for(name);
        rules::verdict(
            name,
            digest,
            &rules,
            layers,
            &self.trust,
            self.names.default_action(),
        )
    }
}
