//! The content layer: manifests by digest, tags resolved to digests, referrer lists and small
//! evidence blobs, each with how it was obtained. Below the gate and the handlers, above the
//! upstream client and the store: it hash-checks and reads strictly what it fetches, caches it,
//! and applies the tag rules (TTL, `HEAD` revalidation, stale serving, offline), but decides
//! nothing about trust. Offline, it answers from the store alone, which is how an import's
//! carried evidence reaches the same decision as a pull.

pub mod accept;
pub mod blobs;
pub mod manifests;
pub mod referrers;

pub use accept::Accept;
pub use manifests::{by_digest, offline_miss, resolve_tag};

/// How a piece of content was obtained: the request log's `cache` field, and whether a list may
/// be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Obtained {
    /// From the store, fresh (or offline, whatever its age).
    Hit,
    /// From the upstream, checked and now held.
    Miss,
    /// From the store past its TTL, because the upstream is down.
    Stale,
    /// From the shared tier (`[cache.shared]`), checked and now held.
    Shared,
}

impl Obtained {
    pub fn as_str(self) -> &'static str {
        match self {
            Obtained::Hit => "hit",
            Obtained::Miss => "miss",
            Obtained::Stale => "stale",
            Obtained::Shared => "shared",
        }
    }
}
