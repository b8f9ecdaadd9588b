//! The verification gate: nothing is served unless the policy proves it.
//!
//! For a manifest digest, gather its evidence (`evidence`: cosign `.sig`/`.att` tags and
//! Sigstore bundles among its referrers, read through [`content`] and cached like
//! any content), and let the policy decide; under `verify_base`, the base image too. Verdicts
//! are cached under the policy's fingerprint; a transient upstream failure is never cached.
//!
//! Only a verdict opens the gate. A verified index vouches for the manifests it lists; a
//! manifest that passed opens the gate for the blobs it references, with the sizes its
//! descriptors promise, in that repository only. Verification material (a cosign `.sig`/`.att`
//! artifact, a referrer bundle) is served only when its subject passed in the same repository
//! and each of its blobs was fetched here, under a size cap, and parsed as what it claims.

use std::sync::Arc;

mod base;
mod evidence;
pub mod tags;

use portcullis_cache::Digest;
use portcullis_policy::{Decision, Evidence, Verdict};

use crate::app::App;
use crate::content::manifests::invalid;
use crate::content::{self, Accept};
use crate::error::ProxyError;
use crate::oci::cosign::EvidenceArtifact;
use crate::oci::{Document, Reference};
use crate::route::Target;

/// Decides on a manifest, from the verdict cache or by fetching its evidence.
pub async fn verdict(
    app: &App,
    target: &Target,
    digest: &Digest,
) -> Result<Arc<Verdict>, ProxyError> {
    verdict_in(app, target, digest, &[]).await
}

/// [`verdict`], for a manifest reached through the base-image `chain` (`name@digest`s).
pub(crate) fn verdict_in<'a>(
    app: &'a App,
    target: &'a Target,
    digest: &'a Digest,
    chain: &'a [String],
) -> futures_util::future::BoxFuture<'a, Result<Arc<Verdict>, ProxyError>> {
    Box::pin(decide(app, target, digest, chain))
}

async fn decide(
    app: &App,
    target: &Target,
    digest: &Digest,
    chain: &[String],
) -> Result<Arc<Verdict>, ProxyError> {
    let key = verdict_key(app, &target.name, digest);
    if let Some(v) = app.verdicts.get(&key).or_else(|| app.denials.get(&key)) {
        return Ok(v);
    }
    if let Some(raw) = app.store.meta("verdict", &key)? {
        // Denials written by earlier versions are decided again, like expired ones.
        let held = serde_json::from_slice::<Verdict>(&raw)
            .ok()
            .filter(|v| v.decision != Decision::Deny);
        if let Some(v) = held {
            let v = Arc::new(v);
            app.verdicts.insert(key, Arc::clone(&v));
            return Ok(v);
        }
    }
    // Concurrent requests for one manifest (under one policy) share one decision.
    app.deciding
        .run(key.clone(), || async {
            let v = Arc::new(evaluate(app, target, digest, chain, None).await?);
            remember(app, key, &v)?;
            Ok(v)
        })
        .await
}

/// Decides on a manifest afresh, whatever verdict is held, and remembers the result: for an
/// import, whose evidence has just arrived (and whose manifest, `bytes`, is not stored until it
/// passed), and for `verify`.
pub async fn redecide(
    app: &App,
    target: &Target,
    digest: &Digest,
    bytes: Option<&[u8]>,
) -> Result<Arc<Verdict>, ProxyError> {
    let v = Arc::new(evaluate(app, target, digest, &[], bytes).await?);
    remember(app, verdict_key(app, &target.name, digest), &v)?;
    Ok(v)
}

/// The policy's verdict over the evidence gathered for `digest` (and its base, under
/// `verify_base`, read from `bytes` or else the manifest as content holds or fetches it).
async fn evaluate(
    app: &App,
    target: &Target,
    digest: &Digest,
    chain: &[String],
    bytes: Option<&[u8]>,
) -> Result<Verdict, ProxyError> {
    let evidence = if app.policy.rules_for(&target.name).is_empty() {
        Evidence::default() // [policy] default decides; nothing to fetch
    } else {
        evidence::gather(app, target, digest).await?
    };
    let mut v = app
        .policy
        .evaluate(&target.name, &digest.to_string(), &evidence);
    if let Some(mode) = app.policy.verify_base(&target.name) {
        base::check(app, target, digest, bytes, &mut v, mode, chain).await?;
    }
    Ok(v)
}

/// The verdict held for `name@digest` under the current policy, if any.
pub fn held_verdict(app: &App, name: &str, digest: &Digest) -> Option<Verdict> {
    let raw = app
        .store
        .meta("verdict", &verdict_key(app, name, digest))
        .ok()??;
    serde_json::from_slice(&raw).ok()
}

/// The key verdicts (and what is kept with them) are held under: policy fingerprint, name,
/// digest.
pub(crate) fn verdict_key(app: &App, name: &str, digest: &Digest) -> String {
    format!("{}\0{name}\0{digest}", app.policy.fingerprint())
}

/// Keeps a verdict: a pass or a warning for as long as the policy is in force (in RocksDB), a
/// denial in memory for `tag_ttl`, since the evidence that would lift it can arrive upstream.
fn remember(app: &App, key: String, v: &Arc<Verdict>) -> Result<(), ProxyError> {
    if v.decision == Decision::Deny {
        app.store.delete_meta("verdict", &key)?;
        app.verdicts.invalidate(&key);
        app.denials.insert(key, Arc::clone(v));
        return Ok(());
    }
    app.denials.invalidate(&key);
    let raw = serde_json::to_vec(&**v).map_err(|e| ProxyError::Internal(e.to_string()))?;
    app.store.put_meta("verdict", &key, &raw)?;
    app.verdicts.insert(key, Arc::clone(v));
    Ok(())
}

/// Applies a verdict: denies, warns, or records; then opens the gate for what the manifest
/// references, and lets a verified index vouch for its children.
pub fn enforce(
    app: &App,
    target: &Target,
    digest: &Digest,
    doc: &Document,
    verdict: &Verdict,
) -> Result<(), ProxyError> {
    let audited = verdict
        .rules
        .iter()
        .any(|r| !r.passed && r.mode == portcullis_policy::Mode::Audit);
    count(app, verdict);
    match verdict.decision {
        Decision::Deny => {
            tracing::warn!(name = %target.name, %digest, verdict = %verdict.message, "denied");
            return Err(ProxyError::Denied(verdict.message.clone()));
        }
        Decision::Warn => {
            tracing::warn!(name = %target.name, %digest, verdict = %verdict.message, "served unverified")
        }
        Decision::Allow if audited => {
            tracing::info!(name = %target.name, %digest, verdict = %verdict.message, "audit")
        }
        Decision::Allow => {
            tracing::debug!(name = %target.name, %digest, verdict = %verdict.message, "verified")
        }
    }
    // Gates and vouchers are written once per manifest and policy, not on every request.
    let key = verdict_key(app, &target.name, digest);
    if app.gated.contains_key(&key) {
        return Ok(());
    }
    open_gate(app, target, &doc.blobs().map_err(invalid(target, digest))?)?;
    if verified(verdict) {
        let children = doc.children().map_err(invalid(target, digest))?;
        for child in children.iter().map(|c| &c.digest) {
            let vouched = Verdict {
                digest: child.to_string(),
                message: format!(
                    "{}@{child} vouched for by the verified index {digest}",
                    target.name
                ),
                ..verdict.clone()
            };
            remember(
                app,
                verdict_key(app, &target.name, child),
                &Arc::new(vouched),
            )?;
        }
        crate::attest::summarise(app, target, digest, doc, verdict)?;
    }
    app.gated.insert(key, ());
    Ok(())
}

/// Whether a verdict is a verification that passed: allowed by rules (not by `[policy]
/// default`), none of them failed in audit mode. Only such a verdict vouches for an index's
/// children and gets a signed summary.
pub fn verified(verdict: &Verdict) -> bool {
    let audited = verdict
        .rules
        .iter()
        .any(|r| !r.passed && r.mode == portcullis_policy::Mode::Audit);
    // A base image that failed under an audit-mode `verify_base` leaves the decision at Allow;
    // the image is served, but it did not pass.
    let base_failed = std::iter::successors(verdict.base.as_deref(), |b| b.base.as_deref())
        .any(|b| b.decision == Decision::Deny);
    verdict.decision == Decision::Allow && !verdict.rules.is_empty() && !audited && !base_failed
}

fn count(app: &App, verdict: &Verdict) {
    use crate::metrics::VerdictLabels;
    use portcullis_policy::Mode;
    if verdict.rules.is_empty() {
        let outcome = match verdict.decision {
            Decision::Allow => "allow",
            Decision::Warn => "warn",
            Decision::Deny => "deny",
        };
        let labels = VerdictLabels {
            rule: "default".into(),
            outcome,
        };
        app.metrics.verdicts.get_or_create(&labels).inc();
    }
    for r in &verdict.rules {
        let outcome = match (r.passed, r.mode) {
            (true, _) | (false, Mode::Audit) => "allow",
            (false, Mode::Warn) => "warn",
            (false, Mode::Enforce) => "deny",
        };
        let labels = VerdictLabels {
            rule: r.rule.clone(),
            outcome,
        };
        app.metrics.verdicts.get_or_create(&labels).inc();
    }
}

/// Serves verification material: its subject must have passed in this repository, and every
/// blob it names is fetched here (under the size cap), hash-checked and parsed as what its
/// descriptor says before the gate opens for it. Nothing else opens a gate without a verdict.
pub async fn admit_evidence(
    app: &App,
    target: &Target,
    digest: &Digest,
    artifact: &EvidenceArtifact,
) -> Result<(), ProxyError> {
    let subject = &artifact.subject;
    // A cosign tag names its subject, not the bytes: the same artifact under another subject's
    // tag is admitted (or not) afresh.
    let key = format!("{}\0{subject}", verdict_key(app, &target.name, digest));
    if app.gated.contains_key(&key) {
        return Ok(());
    }
    let what = format!("{}@{digest}", target.name);
    let refused = |why: String| {
        tracing::warn!(name = %target.name, %digest, %subject, why, "evidence refused");
        ProxyError::Denied(format!(
            "{what} is verification material for {subject}, which {why}"
        ))
    };
    match content::by_digest(app, target, subject, &Accept::default()).await {
        Ok(_) => {}
        Err(ProxyError::ManifestUnknown(_)) => {
            return Err(refused(format!("is not a manifest in {}", target.name)))
        }
        Err(e) => return Err(e),
    }
    let v = verdict(app, target, subject).await?;
    if v.decision == Decision::Deny {
        return Err(refused(format!("did not pass: {}", v.message)));
    }
    let checked = evidence::material(app, target, artifact).await?;
    open_gate(app, target, &checked)?;
    app.gated.insert(key, ());
    Ok(())
}

/// Lets the blobs `refs` be served for this repository under this policy, at their sizes.
pub fn open_gate(app: &App, target: &Target, refs: &[Reference]) -> Result<(), ProxyError> {
    for r in refs {
        let size = r.size.to_string();
        app.store
            .put_meta(GATE, &gate_key(app, target, &r.digest), size.as_bytes())?;
    }
    Ok(())
}

/// Gate records hold the size the verified descriptor promised (earlier records held nothing,
/// hence a namespace of their own).
pub const GATE: &str = "gate.sized";

fn gate_key(app: &App, target: &Target, digest: &Digest) -> String {
    format!("{}\0{}\0{digest}", app.policy.fingerprint(), target.name)
}

/// Blob gating: a blob is served only if a manifest that passed the gate in this repository
/// references it. The answer is the size its descriptor promised.
pub fn check_blob(app: &App, target: &Target, digest: &Digest) -> Result<u64, ProxyError> {
    let held = app.store.meta(GATE, &gate_key(app, target, digest))?;
    if let Some(size) = held.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()) {
        return Ok(size);
    }
    Err(ProxyError::Denied(format!(
        "blob {digest} is not referenced by any manifest of {} that passed verification; pull the image by tag or digest through portcullis first",
        target.name
    )))
}
