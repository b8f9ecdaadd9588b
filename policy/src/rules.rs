//! Rules: which images they cover, which authorities may vouch, and the verdict.
//!
//! Every rule that matches a name must pass. Within a rule, any one authority suffices, or
//! `threshold` distinct ones. Each authority is checked against the same fetched signatures, and a
//! key or an identity is always checked on the same signature layer as the binding.

use globset::GlobSet;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::config::{AuthorityConfig, Mode, RuleConfig};
use crate::keyless::{self, IdentityMatcher};
use crate::names::{compile_globs, DefaultAction};
use crate::signature::SignatureLayer;
use crate::trust::TrustStore;
use crate::PolicyError;

/// A compiled `[[rule]]`.
pub struct Rule {
    pub name: String,
    pub mode: Mode,
    pub threshold: usize,
    images: GlobSet,
    authorities: Vec<Authority>,
}

enum Authority {
    Key(String),
    Keyless {
        root: String,
        matcher: IdentityMatcher,
    },
}

/// What the proxy does with an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    /// Serve, with a warning logged.
    Warn,
    Deny,
}

/// The full verdict, with reasons: what `portcullis verify` prints and denials quote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub name: String,
    pub digest: String,
    pub decision: Decision,
    /// One entry per matching rule; empty when `[policy] default` decided.
    pub rules: Vec<RuleResult>,
    /// The people-readable summary.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleResult {
    pub rule: String,
    pub mode: Mode,
    pub passed: bool,
    pub threshold: usize,
    pub authorities: Vec<AuthorityResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorityResult {
    pub authority: String,
    pub accepted: bool,
    /// Why it accepted (the identity) or refused (per signature).
    pub detail: String,
}

impl Rule {
    pub fn compile(cfg: &RuleConfig, trust: &TrustStore) -> Result<Rule, PolicyError> {
        let ctx = format!("[[rule]] {:?}", cfg.name);
        let bad = |m: String| PolicyError::Rule(format!("{ctx}: {m}"));
        if cfg.images.is_empty() {
            return Err(bad("images is empty".into()));
        }
        if cfg.authorities.is_empty() {
            return Err(bad("has no [[rule.authority]]".into()));
        }
        let authorities = cfg
            .authorities
            .iter()
            .map(|a| Authority::compile(a, trust).map_err(&bad))
            .collect::<Result<Vec<_>, _>>()?;
        let threshold = cfg.threshold.unwrap_or(1);
        if threshold == 0 || threshold > authorities.len() {
            return Err(bad(format!(
                "threshold {threshold} must be between 1 and the {} authorities",
                authorities.len()
            )));
        }
        Ok(Rule {
            name: cfg.name.clone(),
            mode: cfg.mode,
            threshold,
            images: compile_globs(&cfg.images)?,
            authorities,
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.images.is_match(name)
    }

    fn evaluate(&self, digest: &str, layers: &[SignatureLayer], trust: &TrustStore) -> RuleResult {
        let authorities: Vec<AuthorityResult> = self
            .authorities
            .iter()
            .map(|a| a.evaluate(digest, layers, trust))
            .collect();
        let accepted = authorities.iter().filter(|a| a.accepted).count();
        RuleResult {
            rule: self.name.clone(),
            mode: self.mode,
            passed: accepted >= self.threshold,
            threshold: self.threshold,
            authorities,
        }
    }
}

impl Authority {
    fn compile(cfg: &AuthorityConfig, trust: &TrustStore) -> Result<Authority, String> {
        match (&cfg.key, &cfg.keyless) {
            (Some(key), None) => {
                if !trust.keys.contains_key(key) {
                    return Err(format!("authority key {key:?} is not a [[trust.key]]"));
                }
                Ok(Authority::Key(key.clone()))
            }
            (None, Some(k)) => {
                if !trust.roots.contains_key(&k.root) {
                    return Err(format!("keyless root {:?} is not a [[trust.root]]", k.root));
                }
                let re = |r: &Option<String>| {
                    r.as_deref()
                        .map(Regex::new)
                        .transpose()
                        .map_err(|e| format!("bad regex: {e}"))
                };
                let matcher = IdentityMatcher {
                    issuer: k.issuer.clone(),
                    issuer_regex: re(&k.issuer_regex)?,
                    subject: k.subject.clone(),
                    subject_regex: re(&k.subject_regex)?,
                };
                if matcher.issuer.is_none() && matcher.issuer_regex.is_none() {
                    return Err("a keyless authority needs issuer or issuer_regex".into());
                }
                if matcher.subject.is_none() && matcher.subject_regex.is_none() {
                    return Err("a keyless authority needs subject or subject_regex".into());
                }
                Ok(Authority::Keyless {
                    root: k.root.clone(),
                    matcher,
                })
            }
            _ => Err("an authority is either key = \"…\" or keyless = { … }, exactly one".into()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Authority::Key(k) => format!("key {k:?}"),
            Authority::Keyless { root, matcher } => {
                format!("keyless {root:?} ({})", matcher.describe())
            }
        }
    }

    fn evaluate(
        &self,
        digest: &str,
        layers: &[SignatureLayer],
        trust: &TrustStore,
    ) -> AuthorityResult {
        let mut reasons = Vec::new();
        for layer in layers {
            let checked = layer.check_binding(digest).and_then(|()| match self {
                Authority::Key(name) => layer
                    .check_key(&trust.keys[name])
                    .map(|()| format!("signed with key {name:?}")),
                Authority::Keyless { root, matcher } => {
                    let id = keyless::verify(layer, &trust.roots[root])?;
                    matcher.check(&id)?;
                    Ok(format!(
                        "signed by {} (issuer {})",
                        id.subjects.join(", "),
                        id.issuer.unwrap_or_default()
                    ))
                }
            });
            match checked {
                Ok(detail) => {
                    return AuthorityResult {
                        authority: self.describe(),
                        accepted: true,
                        detail,
                    }
                }
                Err(why) if !reasons.contains(&why) => reasons.push(why),
                Err(_) => {}
            }
        }
        let detail = if layers.is_empty() {
            "no signature found".to_owned()
        } else {
            reasons.join("; ")
        };
        AuthorityResult {
            authority: self.describe(),
            accepted: false,
            detail,
        }
    }
}

/// Evaluates every rule in `rules` (already filtered to those matching `name`).
pub fn verdict(
    name: &str,
    digest: &str,
    rules: &[&Rule],
    layers: &[SignatureLayer],
    trust: &TrustStore,
    default: DefaultAction,
) -> Verdict {
    if rules.is_empty() {
        let (decision, message) = match default {
            DefaultAction::Deny => (Decision::Deny, format!(
                "{name} matches no [[rule]] and [policy] default = \"deny\". To pull it, add a rule, e.g.\n  [[rule]]\n  name = \"…\"\n  images = [\"{name}\"]\n  [[rule.authority]]\n  key = \"<a [[trust.key]] name>\"   # or keyless = {{ root = \"public-good\", issuer = \"…\", subject = \"…\" }}\nand check it with `portcullis verify {name}@{digest}`"
            )),
            DefaultAction::Warn => (Decision::Warn, format!(
                "{name} matches no [[rule]]: served without signature verification ([policy] default = \"warn\")"
            )),
            DefaultAction::Allow => (Decision::Allow, format!(
                "{name} matches no [[rule]]: served ([policy] default = \"allow\")"
            )),
        };
        return Verdict {
            name: name.into(),
            digest: digest.into(),
            decision,
            rules: Vec::new(),
            message,
        };
    }
    let results: Vec<RuleResult> = rules
        .iter()
        .map(|r| r.evaluate(digest, layers, trust))
        .collect();
    let mut decision = Decision::Allow;
    for r in results.iter().filter(|r| !r.passed) {
        match r.mode {
            Mode::Enforce => decision = Decision::Deny,
            Mode::Warn if decision == Decision::Allow => decision = Decision::Warn,
            _ => {}
        }
    }
    let message = describe(name, digest, &results, decision);
    Verdict {
        name: name.into(),
        digest: digest.into(),
        decision,
        rules: results,
        message,
    }
}

fn describe(name: &str, digest: &str, results: &[RuleResult], decision: Decision) -> String {
    let head = match decision {
        Decision::Allow => format!("{name}@{digest} verified"),
        Decision::Warn => format!("{name}@{digest} failed verification (served: mode warn)"),
        Decision::Deny => format!("{name}@{digest} denied"),
    };
    let mut parts = vec![head];
    for r in results {
        let state = if r.passed { "passed" } else { "failed" };
        let mode = match r.mode {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Audit => "audit",
        };
        let tried = r
            .authorities
            .iter()
            .map(|a| {
                let verb = if a.accepted { "accepted" } else { "refused" };
                format!("{} {verb}: {}", a.authority, a.detail)
            })
            .collect::<Vec<_>>()
            .join("; ");
        parts.push(format!(
            "rule {:?} ({mode}) {state}, needs {} of {}: {tried}",
            r.rule,
            r.threshold,
            r.authorities.len()
        ));
    }
    parts.join(" | ")
}
