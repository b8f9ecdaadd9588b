//! Immutable tags (`immutable_tags = true` on a rule): the first digest a tag served stays the
//! only one served for it. A tag moved upstream, even to a digest that verifies (an old signed
//! release with a known hole, say), is refused under the rule's mode until a person pins the tag
//! (`portcullis pin name:tag`) at the new digest: the tag's last pin is then what it must point
//! at, and nothing else, not even an earlier pin of it (a move back is a move too).
//!
//! The record (`tag.first`, by name and tag mapping key: a client accepting fewer manifest types
//! may be served a platform manifest instead of the index, and gets a record of its own) outlives
//! reloads and restarts, whatever the policy fingerprint: a rollback must not become servable
//! because the configuration changed. It is dropped when no rule keeps that name's tags immutable
//! any more (a reload that turns the option off, which is how an operator accepts a move without
//! pinning). A manifest listed by the recorded (or pinned) index counts as that index.
//!
//! With a shared tier, "first" is the fleet's: a replica's first sight of a tag is created in
//! the bucket only if no replica recorded one, else the recorded one is taken. A replica started
//! after a move therefore refuses it too. With the bucket down, a replica records its own.

use std::sync::Mutex;

use portcullis_cache::Digest;
use portcullis_policy::{Decision, Mode, Verdict};

use crate::app::App;
use crate::content::Accept;
use crate::error::ProxyError;
use crate::oci::Document;
use crate::route::Target;

/// The store's meta namespace for first digests.
pub const FIRST: &str = "tag.first";

/// Held while a record is read and written: two digests racing for "first" get one winner.
static RECORDING: Mutex<()> = Mutex::new(());

/// Holds `tag` to its pinned or first digest: records the first on sight, and refuses (or, under
/// a warn or audit rule, logs) any other.
pub async fn hold(
    app: &App,
    target: &Target,
    tag: &str,
    accept: &Accept,
    digest: &Digest,
    verdict: &Verdict,
) -> Result<(), ProxyError> {
    let Some(mode) = app.policy.immutable_tags(&target.name) else {
        return Ok(());
    };
    if verdict.decision == Decision::Deny {
        return Ok(()); // refused already
    }
    let expected = match app.policy.tag_pin(&target.name, tag) {
        Some(pinned) => Expected::Pinned(pinned.to_owned()),
        None => {
            let key = format!("{}\0{}", target.name, accept.tag_key(tag));
            let held = app.store.meta(FIRST, &key)?;
            let first = match (held, &app.shared) {
                (Some(first), _) => String::from_utf8_lossy(&first).into_owned(),
                (None, Some(tier)) => tier
                    .first_record("first", &key, &digest.to_string())
                    .await
                    .filter(|d| d.parse::<Digest>().is_ok())
                    .unwrap_or_else(|| digest.to_string()),
                (None, None) => digest.to_string(),
            };
            let _one = RECORDING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match app.store.meta(FIRST, &key)? {
                Some(first) => Expected::First(String::from_utf8_lossy(&first).into_owned()),
                None => {
                    app.store.put_meta(FIRST, &key, first.as_bytes())?;
                    Expected::First(first)
                }
            }
        }
    };
    let (held, why) = match &expected {
        Expected::Pinned(d) => (d, "is pinned at"),
        Expected::First(d) => (d, "first served"),
    };
    if same(app, held, digest) {
        return Ok(());
    }
    let message = format!(
        "{}:{tag} is immutable (immutable_tags): it {why} {held}, and now points at {digest}. If the move is expected, pin the tag at the new digest: `portcullis pin {}:{tag} --pins <set>` (after checking that {digest} is what it should be)",
        target.name, target.name
    );
    match mode {
        Mode::Enforce => {
            tracing::warn!(name = %target.name, tag, held = %held, new = %digest, "moved immutable tag denied");
            Err(ProxyError::Denied(message))
        }
        Mode::Warn => {
            tracing::warn!(name = %target.name, tag, held = %held, new = %digest, "moved immutable tag served (mode warn)");
            Ok(())
        }
        Mode::Audit => {
            tracing::info!(name = %target.name, tag, held = %held, new = %digest, "moved immutable tag served (mode audit)");
            Ok(())
        }
    }
}

enum Expected {
    Pinned(String),
    First(String),
}

/// `digest` is `held`, or a manifest the held index lists (what a client that accepts no
/// index is served for the same tag).
fn same(app: &App, held: &str, digest: &Digest) -> bool {
    if held == digest.to_string() {
        return true;
    }
    let Some(index) = held
        .parse::<Digest>()
        .ok()
        .and_then(|d| app.store.manifest(&d).ok().flatten())
    else {
        return false;
    };
    Document::parse(&index.bytes, Some(&index.media_type))
        .and_then(|doc| doc.children())
        .is_ok_and(|children| children.iter().any(|c| &c.digest == digest))
}

/// A test for records that still belong to a name whose tags a rule keeps immutable.
pub fn still_held(app: &App) -> impl Fn(&str) -> bool + Send + 'static {
    let immutable = app.policy.immutable_names();
    move |key| {
        key.split_once('\0')
            .is_some_and(|(name, _)| immutable(name))
    }
}
