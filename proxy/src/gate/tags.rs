//! Immutable tags (`immutable_tags = true` on a rule): the first digest a tag served verified
//! stays the only one served for it. A tag moved upstream, even to a digest that verifies (an
//! old signed release with a known hole, say), is refused under the rule's mode until a person
//! pins the new digest.
//!
//! The record (`tag.first`, by name and tag) outlives reloads and restarts, whatever the policy
//! fingerprint: a rollback must not become servable because the configuration changed. It is
//! dropped when no rule keeps that name's tags immutable any more (a reload that turns the option
//! off, which is how an operator accepts a move without pinning).

use portcullis_cache::Digest;
use portcullis_policy::{Decision, Mode, Verdict};

use crate::app::App;
use crate::error::ProxyError;
use crate::route::Target;

/// The store's meta namespace for first verified digests.
pub const FIRST: &str = "tag.first";

fn key(name: &str, tag: &str) -> String {
    format!("{name}\0{tag}")
}

/// Holds `tag` to its first verified digest: records it on first sight, and refuses (or warns
/// about) another, unless that one is pinned, which moves the record.
pub fn hold(
    app: &App,
    target: &Target,
    tag: &str,
    digest: &Digest,
    verdict: &Verdict,
) -> Result<(), ProxyError> {
    let Some(mode) = app.policy.immutable_tags(&target.name) else {
        return Ok(());
    };
    if verdict.decision != Decision::Allow || verdict.rules.is_empty() {
        return Ok(()); // denied already, or not verified: nothing to hold it to
    }
    let key = key(&target.name, tag);
    let digest_s = digest.to_string();
    let first = app
        .store
        .meta(FIRST, &key)?
        .and_then(|v| String::from_utf8(v).ok());
    let Some(first) = first.filter(|f| *f != digest_s) else {
        return Ok(app.store.put_meta(FIRST, &key, digest_s.as_bytes())?);
    };
    if let Some(set) = app.policy.pinned_by(&target.name, &digest_s) {
        tracing::info!(name = %target.name, tag, old = %first, new = %digest, pins = set,
            "immutable tag moved to a pinned digest");
        return Ok(app.store.put_meta(FIRST, &key, digest_s.as_bytes())?);
    }
    let message = format!(
        "{}:{tag} is immutable (immutable_tags): it first served {first}, and now points at {digest}. If the move is expected, pin the new digest: `portcullis pin {}@{digest} --pins <set>`",
        target.name, target.name
    );
    match mode {
        Mode::Enforce => {
            tracing::warn!(name = %target.name, tag, first = %first, new = %digest, "moved immutable tag denied");
            Err(ProxyError::Denied(message))
        }
        Mode::Warn => {
            tracing::warn!(name = %target.name, tag, first = %first, new = %digest, "moved immutable tag served (mode warn)");
            Ok(())
        }
        Mode::Audit => {
            tracing::info!(name = %target.name, tag, first = %first, new = %digest, "moved immutable tag served (mode audit)");
            Ok(())
        }
    }
}

/// A test for records that still belong to a name whose tags a rule keeps immutable.
pub fn still_held(app: &App) -> impl Fn(&str) -> bool + Send + 'static {
    let immutable = app.policy.immutable_names();
    move |key| {
        key.split_once('\0')
            .is_some_and(|(name, _)| immutable(name))
    }
}
