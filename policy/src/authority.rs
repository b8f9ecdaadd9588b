//! Authorities (`[[rule.authority]]`): a key or a keyless identity, and what each one vouches for
//! among the evidence fetched for a manifest: legacy `.sig` layers, legacy `.att` layers and
//! Sigstore bundles from the referrers. A key or identity is always checked on the same item as
//! its binding to the image. Keyless checks are shared between authorities of one root, so each
//! item is verified once per root, however many identities a policy names.
//!
//! The checks fail with typed errors (`BundleError`, `KeylessError`, `SignatureError`, …, each
//! with its cause); here they become the reasons a verdict lists, as their messages.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;
use sigstore_verify::types::Bundle;
use x509_cert::der::Decode;
use x509_cert::Certificate;

use crate::bundle::{self, Content};
use crate::config::AuthorityConfig;
use crate::keyless::{self, Identity, IdentityMatcher};
use crate::statement::{Statement, COSIGN_SIGN};
use crate::trust::TrustStore;
use crate::Evidence;

/// A `[[rule.authority]]` that cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("authority pinned {0:?} is not a [[trust.pins]]")]
    UnknownPins(String),
    #[error("authority key {0:?} is not a [[trust.key]]")]
    UnknownKey(String),
    #[error("keyless root {0:?} is not a [[trust.root]]")]
    UnknownRoot(String),
    #[error("unknown certificate claim {0:?}; known: {known}", known = crate::claims::NAMES.join(", "))]
    UnknownClaim(String),
    #[error("bad regex: {0}")]
    Regex(#[from] regex::Error),
    #[error("a keyless authority needs issuer or issuer_regex")]
    NoIssuer,
    #[error("a keyless authority needs subject or subject_regex")]
    NoSubject,
    #[error("an authority is exactly one of key = \"…\", keyless = {{ … }} or pinned = \"…\"")]
    Kind,
}

pub(crate) enum Kind {
    Key(String),
    /// A `[[trust.pins]]` set: vouches for the digests it lists under this exact name.
    Pinned(String),
    Keyless {
        root: String,
        matcher: IdentityMatcher,
    },
}

pub(crate) struct Authority {
    pub name: String,
    kind: Kind,
}

/// What one authority found: a signature it accepts, the attestations it signed, and why the
/// rest failed.
#[derive(Default)]
pub(crate) struct Findings {
    pub signed: Option<String>,
    pub attested: Vec<(Arc<Statement>, String)>,
    pub sig_reasons: Vec<String>,
    pub att_reasons: Vec<String>,
}

/// The evidence for one manifest, parsed once for all rules and authorities.
pub(crate) struct Items<'e> {
    pub name: &'e str,
    pub digest: &'e str,
    evidence: &'e Evidence,
    /// Parsed bundles, or why not (a reason).
    bundles: Vec<Result<Bundle, String>>,
    /// Keyless results by (root, item): verified once per root.
    memo: RefCell<HashMap<(String, Item), Checked>>,
}

/// A keyless check's outcome: who signed, and what.
type Checked = Result<(Identity, Content), String>;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Item {
    Signature(usize),
    Attestation(usize),
    Bundle(usize),
}

impl<'e> Items<'e> {
    pub fn new(name: &'e str, digest: &'e str, evidence: &'e Evidence) -> Items<'e> {
        Items {
            name,
            digest,
            evidence,
            bundles: evidence
                .bundles
                .iter()
                .map(|b| bundle::parse(b).map_err(reason))
                .collect(),
            memo: RefCell::default(),
        }
    }

    fn all(&self) -> impl Iterator<Item = Item> {
        let e = self.evidence;
        (0..e.signatures.len())
            .map(Item::Signature)
            .chain((0..e.attestations.len()).map(Item::Attestation))
            .chain((0..e.bundles.len()).map(Item::Bundle))
    }
}

impl Authority {
    pub fn compile(
        cfg: &AuthorityConfig,
        nth: usize,
        trust: &TrustStore,
    ) -> Result<Authority, AuthorityError> {
        let kind = match (&cfg.key, &cfg.keyless, &cfg.pinned) {
            (None, None, Some(set)) => {
                if !trust.pins.contains_key(set) {
                    return Err(AuthorityError::UnknownPins(set.clone()));
                }
                Kind::Pinned(set.clone())
            }
            (Some(key), None, None) => {
                if !trust.keys.contains_key(key) {
                    return Err(AuthorityError::UnknownKey(key.clone()));
                }
                Kind::Key(key.clone())
            }
            (None, Some(k), None) => {
                if !trust.roots.contains_key(&k.root) {
                    return Err(AuthorityError::UnknownRoot(k.root.clone()));
                }
                if let Some(bad) = k
                    .claims
                    .keys()
                    .find(|c| !crate::claims::NAMES.contains(&c.as_str()))
                {
                    return Err(AuthorityError::UnknownClaim(bad.clone()));
                }
                let re = |r: &Option<String>| r.as_deref().map(Regex::new).transpose();
                let matcher = IdentityMatcher {
                    issuer: k.issuer.clone(),
                    issuer_regex: re(&k.issuer_regex)?,
                    subject: k.subject.clone(),
                    subject_regex: re(&k.subject_regex)?,
                    claims: k.claims.clone(),
                };
                if matcher.issuer.is_none() && matcher.issuer_regex.is_none() {
                    return Err(AuthorityError::NoIssuer);
                }
                if matcher.subject.is_none() && matcher.subject_regex.is_none() {
                    return Err(AuthorityError::NoSubject);
                }
                Kind::Keyless {
                    root: k.root.clone(),
                    matcher,
                }
            }
            _ => return Err(AuthorityError::Kind),
        };
        let name = cfg.name.clone().unwrap_or_else(|| match &kind {
            Kind::Key(k) | Kind::Pinned(k) => k.clone(),
            Kind::Keyless { .. } => format!("keyless-{nth}"),
        });
        Ok(Authority { name, kind })
    }

    /// The pins set, for a pinned authority.
    pub fn pin_set(&self) -> Option<&str> {
        match &self.kind {
            Kind::Pinned(set) => Some(set),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Key(k) => format!("key {k:?}"),
            Kind::Pinned(p) => format!("pins {p:?}"),
            Kind::Keyless { root, matcher } => {
                format!("keyless {root:?} ({})", matcher.describe())
            }
        }
    }

    /// Everything this authority vouches for among `items`.
    pub fn examine(&self, items: &Items<'_>, trust: &TrustStore) -> Findings {
        let mut found = Findings::default();
        if let Kind::Pinned(set) = &self.kind {
            // A pin is about the bytes, not about evidence: it signs nothing and attests nothing.
            if trust.pins[set].contains(items.name, items.digest) {
                found.signed = Some(format!("digest pinned for {} in {set:?}", items.name));
            } else {
                found
                    .sig_reasons
                    .push(format!("{} is not pinned for {}", items.digest, items.name));
            }
            return found;
        }
        for item in items.all() {
            let checked = self.check(item, items, trust);
            let is_sig = matches!(item, Item::Signature(_));
            match checked {
                Ok((Content::Signature, who)) => {
                    found.signed.get_or_insert(who);
                }
                Ok((Content::Statement(s), who)) if s.predicate_type == COSIGN_SIGN => {
                    found.signed.get_or_insert(format!("{who} (bundle)"));
                }
                Ok((Content::Statement(s), who)) => found.attested.push((s, who)),
                Err(why) => {
                    let reasons = if is_sig || is_signature_bundle(item, items) {
                        &mut found.sig_reasons
                    } else {
                        &mut found.att_reasons
                    };
                    if !reasons.contains(&why) {
                        reasons.push(why);
                    }
                }
            }
        }
        found
    }

    /// Verifies one item for this authority: what it says, and who said it.
    fn check(
        &self,
        item: Item,
        items: &Items<'_>,
        trust: &TrustStore,
    ) -> Result<(Content, String), String> {
        let digest = items.digest;
        let e = items.evidence;
        match (&self.kind, item) {
            (Kind::Key(name), Item::Signature(i)) => {
                let layer = &e.signatures[i];
                layer.check_binding(digest).map_err(reason)?;
                layer.check_key(&trust.keys[name]).map_err(reason)?;
                Ok((Content::Signature, format!("signed with key {name:?}")))
            }
            (Kind::Key(name), Item::Attestation(i)) => {
                let layer = &e.attestations[i];
                layer.check_key(&trust.keys[name]).map_err(reason)?;
                let s = layer.statement(digest).map_err(reason)?;
                Ok((Content::Statement(Arc::new(s)), format!("key {name:?}")))
            }
            (Kind::Key(name), Item::Bundle(i)) => {
                let b = items.bundles[i].as_ref().map_err(Clone::clone)?;
                let content = trust
                    .keyed
                    .verify(b, digest, &trust.key_der[name])
                    .map_err(reason)?;
                Ok((content, format!("signed with key {name:?}")))
            }
            (Kind::Pinned(_), _) => Err("a pin vouches for no evidence".into()),
            (Kind::Keyless { root, matcher }, item) => {
                let (id, content) = items
                    .memo
                    .borrow_mut()
                    .entry((root.clone(), item))
                    .or_insert_with(|| keyless_check(item, items, trust, root))
                    .clone()?;
                matcher.check(&id)?;
                let who = format!(
                    "{} (issuer {})",
                    id.subjects.join(", "),
                    id.issuer.clone().unwrap_or_default()
                );
                Ok((content, who))
            }
        }
    }
}

/// Whether a failed item was meant as a signature (so its failure explains a missing one).
fn is_signature_bundle(item: Item, items: &Items<'_>) -> bool {
    let Item::Bundle(i) = item else { return false };
    match &items.bundles[i] {
        Ok(b) => match &b.content {
            sigstore_verify::types::SignatureContent::MessageSignature(_) => true,
            sigstore_verify::types::SignatureContent::DsseEnvelope(env) => {
                serde_json::from_slice::<serde_json::Value>(env.payload.as_bytes())
                    .is_ok_and(|v| v["predicateType"] == COSIGN_SIGN)
            }
            _ => true,
        },
        Err(_) => true,
    }
}

fn keyless_check(item: Item, items: &Items<'_>, trust: &TrustStore, root: &str) -> Checked {
    let root = &trust.roots[root];
    let e = items.evidence;
    match item {
        Item::Signature(i) => {
            let layer = &e.signatures[i];
            layer.check_binding(items.digest).map_err(reason)?;
            Ok((
                keyless::verify(layer, root).map_err(reason)?,
                Content::Signature,
            ))
        }
        Item::Attestation(i) => {
            let b = e.attestations[i].as_bundle().map_err(reason)?;
            from_bundle(&b, items.digest, root)
        }
        Item::Bundle(i) => {
            let b = items.bundles[i].as_ref().map_err(Clone::clone)?;
            from_bundle(b, items.digest, root)
        }
    }
}

fn from_bundle(b: &Bundle, digest: &str, root: &crate::trust::Root) -> Checked {
    let (cert, content) = root.bundles.verify_keyless(b, digest).map_err(reason)?;
    let cert = Certificate::from_der(&cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    Ok((keyless::identity(&cert).map_err(reason)?, content))
}

/// A check's error as the reason the verdict gives: its message, which names its cause.
fn reason(e: impl std::fmt::Display) -> String {
    e.to_string()
}
