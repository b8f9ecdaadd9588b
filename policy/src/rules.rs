//! Rules: which images they cover, which authorities may vouch, and the verdict.
//!
//! Every rule that matches a name must pass. Within a rule, any one authority must sign the image
//! (or `threshold` distinct ones), and every `[[rule.attestation]]` must be met by an attestation
//! one of its authorities signed. All of it is checked against the same fetched evidence.

use globset::GlobSet;
use serde::{Deserialize, Serialize};

use crate::authority::AuthorityError;
use crate::authority::{Authority, Findings, Items};
use crate::conditions::Condition;
use crate::conditions::ConditionError;
use crate::config::{Mode, RuleConfig};
use crate::names::GlobError;
use crate::names::{compile_globs, DefaultAction};
use crate::statement::Provenance;
use crate::trust::TrustStore;

/// A compiled `[[rule]]`.
pub struct Rule {
    pub name: String,
    pub mode: Mode,
    pub threshold: usize,
    pub verify_base: bool,
    pub immutable_tags: bool,
    images: GlobSet,
    authorities: Vec<Authority>,
    attestations: Vec<Requirement>,
}

/// A compiled `[[rule.attestation]]`.
struct Requirement {
    predicate_type: String,
    /// Indexes into the rule's authorities.
    authorities: Vec<usize>,
    conditions: Vec<Condition>,
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
    /// Attestations some authority of a matching rule signed, whether or not a rule asked.
    #[serde(default)]
    pub attestations: Vec<FoundAttestation>,
    /// The base image's verdict, under `verify_base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Box<Verdict>>,
}

impl Verdict {
    /// A denial that no rule made (a refused name, a base image that cannot be found).
    pub fn denied(name: &str, digest: &str, message: String) -> Verdict {
        Verdict {
            name: name.into(),
            digest: digest.into(),
            decision: Decision::Deny,
            rules: Vec::new(),
            message,
            attestations: Vec::new(),
            base: None,
        }
    }

    /// Folds in the base image's verdict under a `verify_base` rule of `mode`: a base image
    /// that is denied fails this image as the rule's mode says.
    pub fn with_base(&mut self, base: Verdict, mode: Mode) {
        if base.decision == Decision::Deny {
            let why = base.message.split(" | ").collect::<Vec<_>>().join("; ");
            let before = self.decision;
            match mode {
                Mode::Enforce => self.decision = Decision::Deny,
                Mode::Warn if self.decision == Decision::Allow => self.decision = Decision::Warn,
                _ => {}
            }
            let mut parts: Vec<String> = self.message.split(" | ").map(str::to_owned).collect();
            if before != self.decision {
                parts[0] = match self.decision {
                    Decision::Deny => format!("{}@{} denied", self.name, self.digest),
                    _ => format!(
                        "{}@{} failed verification (served: mode warn)",
                        self.name, self.digest
                    ),
                };
            }
            parts.push(format!("base image failed (verify_base): {why}"));
            self.message = parts.join(" | ");
        }
        self.base = Some(Box::new(base));
    }
}

/// A verified attestation: what it is, who signed it, and what provenance says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundAttestation {
    pub predicate_type: String,
    pub kind: String,
    pub signer: String,
    pub provenance: Option<Provenance>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleResult {
    pub rule: String,
    pub mode: Mode,
    pub passed: bool,
    pub threshold: usize,
    pub authorities: Vec<AuthorityResult>,
    #[serde(default)]
    pub attestations: Vec<AttestationResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttestationResult {
    pub predicate_type: String,
    pub satisfied: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorityResult {
    pub authority: String,
    pub accepted: bool,
    /// Why it accepted (the identity) or refused (per signature).
    pub detail: String,
}

/// A `[[rule]]` that cannot be compiled (the policy error names the rule).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("images is empty")]
    NoImages,
    #[error("has no [[rule.authority]]")]
    NoAuthority,
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    #[error("two authorities are named {0:?}")]
    DuplicateAuthority(String),
    #[error(
        "[[rule.attestation]] names authority {name:?}; this rule's authorities are {known:?}"
    )]
    UnknownAuthority { name: String, known: Vec<String> },
    #[error(transparent)]
    Condition(#[from] ConditionError),
    #[error("threshold {threshold} must be between 1 and the {authorities} authorities")]
    Threshold {
        threshold: usize,
        authorities: usize,
    },
    #[error("images: {0}")]
    Images(#[source] GlobError),
}

impl Rule {
    pub fn compile(cfg: &RuleConfig, trust: &TrustStore) -> Result<Rule, RuleError> {
        if cfg.images.is_empty() {
            return Err(RuleError::NoImages);
        }
        if cfg.authorities.is_empty() {
            return Err(RuleError::NoAuthority);
        }
        let authorities = cfg
            .authorities
            .iter()
            .enumerate()
            .map(|(i, a)| Authority::compile(a, i + 1, trust))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in authorities.iter().enumerate() {
            if authorities[..i].iter().any(|b| b.name == a.name) {
                return Err(RuleError::DuplicateAuthority(a.name.clone()));
            }
        }
        let attestations = cfg
            .attestations
            .iter()
            .map(|a| Requirement::compile(a, &authorities))
            .collect::<Result<Vec<_>, _>>()?;
        let threshold = cfg.threshold.unwrap_or(1);
        if threshold == 0 || threshold > authorities.len() {
            return Err(RuleError::Threshold {
                threshold,
                authorities: authorities.len(),
            });
        }
        Ok(Rule {
            name: cfg.name.clone(),
            mode: cfg.mode,
            threshold,
            verify_base: cfg.verify_base,
            immutable_tags: cfg.immutable_tags,
            images: compile_globs(&cfg.images).map_err(RuleError::Images)?,
            authorities,
            attestations,
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.images.is_match(name)
    }

    pub fn images(&self) -> &GlobSet {
        &self.images
    }

    /// The `[[trust.pins]]` sets this rule accepts as authorities.
    pub fn pin_sets(&self) -> impl Iterator<Item = &str> {
        self.authorities.iter().filter_map(Authority::pin_set)
    }

    fn evaluate(
        &self,
        items: &Items<'_>,
        trust: &TrustStore,
        found: &mut Vec<FoundAttestation>,
    ) -> RuleResult {
        let findings: Vec<Findings> = self
            .authorities
            .iter()
            .map(|a| a.examine(items, trust))
            .collect();
        let authorities: Vec<AuthorityResult> = self
            .authorities
            .iter()
            .zip(&findings)
            .map(|(a, f)| AuthorityResult {
                authority: a.describe(),
                accepted: f.signed.is_some(),
                detail: f.signed.clone().unwrap_or_else(|| {
                    if f.sig_reasons.is_empty() {
                        "no signature found".to_owned()
                    } else {
                        f.sig_reasons.join("; ")
                    }
                }),
            })
            .collect();
        for f in &findings {
            for (s, signer) in &f.attested {
                let a = FoundAttestation {
                    predicate_type: s.predicate_type.clone(),
                    kind: s.kind_name().to_owned(),
                    signer: signer.clone(),
                    provenance: s.provenance(),
                };
                if !found.contains(&a) {
                    found.push(a);
                }
            }
        }
        let attestations: Vec<AttestationResult> = self
            .attestations
            .iter()
            .map(|r| r.evaluate(&self.authorities, &findings))
            .collect();
        let accepted = authorities.iter().filter(|a| a.accepted).count();
        RuleResult {
            rule: self.name.clone(),
            mode: self.mode,
            passed: accepted >= self.threshold && attestations.iter().all(|a| a.satisfied),
            threshold: self.threshold,
            authorities,
            attestations,
        }
    }
}

impl Requirement {
    fn compile(
        cfg: &crate::config::AttestationConfig,
        authorities: &[Authority],
    ) -> Result<Requirement, RuleError> {
        let by_name = |n: &String| {
            authorities
                .iter()
                .position(|a| &a.name == n)
                .ok_or_else(|| RuleError::UnknownAuthority {
                    name: n.clone(),
                    known: authorities.iter().map(|a| a.name.clone()).collect(),
                })
        };
        let indexes = if cfg.authorities.is_empty() {
            (0..authorities.len()).collect()
        } else {
            cfg.authorities
                .iter()
                .map(by_name)
                .collect::<Result<_, _>>()?
        };
        Ok(Requirement {
            predicate_type: cfg.predicate_type.clone(),
            authorities: indexes,
            conditions: cfg
                .conditions
                .iter()
                .map(|c| Condition::compile(c))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Met by one attestation of the right type, signed by one of its authorities, that passes
    /// every condition.
    fn evaluate(&self, authorities: &[Authority], findings: &[Findings]) -> AttestationResult {
        let mut reasons = Vec::new();
        for &i in &self.authorities {
            for (s, signer) in &findings[i].attested {
                if s.predicate_type != self.predicate_type {
                    continue;
                }
                match self.conditions.iter().try_for_each(|c| c.check(s)) {
                    Ok(()) => {
                        return AttestationResult {
                            predicate_type: self.predicate_type.clone(),
                            satisfied: true,
                            detail: format!("signed by {} ({signer})", authorities[i].name),
                        }
                    }
                    Err(why) => reasons.push(format!("{}: {why}", authorities[i].name)),
                }
            }
            for why in &findings[i].att_reasons {
                reasons.push(format!("{}: {why}", authorities[i].name));
            }
        }
        let names: Vec<&str> = self
            .authorities
            .iter()
            .map(|&i| authorities[i].name.as_str())
            .collect();
        let mut detail = format!(
            "no {} attestation signed by {names:?} passes",
            self.predicate_type
        );
        if !reasons.is_empty() {
            detail = format!("{detail}: {}", reasons.join("; "));
        }
        AttestationResult {
            predicate_type: self.predicate_type.clone(),
            satisfied: false,
            detail,
        }
    }
}

/// Evaluates every rule in `rules` (already filtered to those matching `name`).
pub fn verdict(
    name: &str,
    digest: &str,
    rules: &[&Rule],
    evidence: &crate::Evidence,
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
            attestations: Vec::new(),
            base: None,
        };
    }
    let items = Items::new(name, digest, evidence);
    let mut found = Vec::new();
    let results: Vec<RuleResult> = rules
        .iter()
        .map(|r| r.evaluate(&items, trust, &mut found))
        .collect();
    let mut decision = Decision::Allow;
    for r in results.iter().filter(|r| !r.passed) {
        match r.mode {
            Mode::Enforce => decision = Decision::Deny,
            Mode::Warn if decision == Decision::Allow => decision = Decision::Warn,
            _ => {}
        }
    }
    let mut message = describe(name, digest, &results, decision);
    if decision == Decision::Deny && evidence.is_empty() {
        message.push_str(" | ");
        message.push_str(&unsigned_hint(name, digest, rules));
    }
    Verdict {
        name: name.into(),
        digest: digest.into(),
        decision,
        rules: results,
        message,
        attestations: found,
        base: None,
    }
}

/// For an image with no signature of any kind: say so, and how a reviewed pin lets it through.
fn unsigned_hint(name: &str, digest: &str, rules: &[&Rule]) -> String {
    let head = format!(
        "{name}@{digest} carries no signature, attestation or bundle at all, so no key or identity can vouch for it"
    );
    match rules.iter().find_map(|r| r.pin_sets().next()) {
        Some(set) => format!(
            "{head}. If you reviewed this digest, pin it: `portcullis pin {name}@{digest} --pins {set}` (with the same --config as the server)"
        ),
        None => format!(
            "{head}. If you reviewed this digest, pin it: add a [[trust.pins]] set and a [[rule.authority]] pinned = \"<set>\" to a rule covering {name}, then `portcullis pin {name}@{digest} --pins <set>`"
        ),
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
        let attested: String = r
            .attestations
            .iter()
            .map(|a| {
                let verb = if a.satisfied { "met" } else { "not met" };
                format!("; attestation {} {verb}: {}", a.predicate_type, a.detail)
            })
            .collect();
        parts.push(format!(
            "rule {:?} ({mode}) {state}, needs {} of {}: {tried}{attested}",
            r.rule,
            r.threshold,
            r.authorities.len()
        ));
    }
    parts.join(" | ")
}
