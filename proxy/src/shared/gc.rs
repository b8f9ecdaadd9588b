//! `portcullis cache gc --shared`: deletes from the bucket what no kept manifest references.
//!
//! Kept: every manifest a tag mapping or referrer list written within `keep` names, every
//! manifest written within `keep` (what was pulled by digest, which leaves no record), and
//! everything those reference, transitively (an index's manifests, a manifest's config and
//! layers). Deleted: other content older than `grace` (younger content may belong to a pull
//! still under way, whose tag mapping is not written yet), older records, and leases well past
//! their time. Any failure to read the bucket stops the collection before anything is deleted:
//! what cannot be read cannot be known to be unreferenced.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use portcullis_cache::shared::{Key, Shared, SharedError};
use portcullis_cache::{now_ms, Digest};
use serde::Deserialize;

use crate::oci::Document;

/// What a collection found and did.
#[derive(Debug, Default)]
pub struct Collected {
    pub kept_manifests: usize,
    pub kept_blobs: usize,
    pub deleted_manifests: usize,
    pub deleted_blobs: usize,
    pub deleted_records: usize,
    pub deleted_leases: usize,
}

impl std::fmt::Display for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kept {} manifests and {} blobs; deleted {} manifests, {} blobs, {} records, {} leases",
            self.kept_manifests,
            self.kept_blobs,
            self.deleted_manifests,
            self.deleted_blobs,
            self.deleted_records,
            self.deleted_leases
        )
    }
}

#[derive(Deserialize)]
struct TagRecord {
    digest: String,
}

#[derive(Deserialize)]
struct ReferrersRecord {
    index: ReferrersIndex,
}

#[derive(Deserialize)]
struct ReferrersIndex {
    manifests: Vec<Referrer>,
}

#[derive(Deserialize)]
struct Referrer {
    digest: String,
}

/// Collects the bucket, keeping what records written within `keep` reach and whatever is
/// younger than `grace`.
/// `max_manifest` is the configuration's `[server] max_manifest_size`: larger objects are not
/// read (they keep nothing).
pub async fn collect(
    bucket: &Shared,
    keep: Duration,
    grace: Duration,
    max_manifest: u64,
) -> Result<Collected, SharedError> {
    let now = now_ms();
    let mut done = Collected::default();
    let mut roots = Vec::new();
    let mut stale_records = Vec::new();
    for kind in ["tag", "referrers"] {
        for (key, modified) in bucket.list(&format!("records/{kind}")).await? {
            if now.saturating_sub(modified) > keep.as_millis() as u64 {
                stale_records.push(key);
                continue;
            }
            let Some(got) = readable(bucket.get_small(&key, 1 << 20).await)? else {
                continue;
            };
            // An unreadable record keeps nothing.
            match kind {
                "tag" => roots.extend(
                    serde_json::from_slice::<TagRecord>(&got.bytes)
                        .ok()
                        .map(|r| r.digest),
                ),
                _ => roots.extend(
                    serde_json::from_slice::<ReferrersRecord>(&got.bytes)
                        .map(|r| r.index.manifests.into_iter().map(|m| m.digest).collect())
                        .unwrap_or_else(|_| Vec::new()),
                ),
            }
        }
    }
    let manifests: HashMap<String, (Key, u64)> = by_hex(bucket.list("manifests/sha256").await?);
    let blobs = by_hex(bucket.list("blobs/sha256").await?);

    // Walk from the roots through the manifests the bucket holds (hash-checked and read as
    // strictly as when served; one that fails references nothing).
    let mut kept: HashSet<String> = HashSet::new();
    let recent = manifests
        .iter()
        .filter(|(_, (_, modified))| now.saturating_sub(*modified) <= keep.as_millis() as u64)
        .map(|(hex, _)| hex.clone());
    let mut queue: Vec<String> = roots
        .iter()
        .filter_map(|d| d.parse::<Digest>().ok())
        .map(|d| d.hex().to_owned())
        .chain(recent)
        .collect();
    while let Some(hex) = queue.pop() {
        if !kept.insert(hex.clone()) {
            continue;
        }
        let Some((key, _)) = manifests.get(&hex) else {
            continue;
        };
        let Some(got) = readable(bucket.get_small(key, max_manifest).await)? else {
            continue;
        };
        if Digest::of(&got.bytes).hex() != hex {
            continue;
        }
        if let Ok(doc) = Document::parse(&got.bytes, got.content_type.as_deref()) {
            queue.extend(doc.all_refs().iter().map(|d| d.hex().to_owned()));
        }
    }

    let old = |modified: u64| now.saturating_sub(modified) >= grace.as_millis() as u64;
    for (hex, (key, modified)) in &manifests {
        if kept.contains(hex) {
            done.kept_manifests += 1;
        } else if old(*modified) {
            bucket.delete(key).await?;
            done.deleted_manifests += 1;
        }
    }
    for (hex, (key, modified)) in &blobs {
        if kept.contains(hex) {
            done.kept_blobs += 1;
        } else if old(*modified) {
            bucket.delete(key).await?;
            done.deleted_blobs += 1;
        }
    }
    for key in stale_records {
        bucket.delete(&key).await?;
        done.deleted_records += 1;
    }
    // A lease is rewritten when taken over: one far older than its time is abandoned.
    let lease_ttl = bucket.config().lease_ttl.as_millis() as u64;
    for (key, modified) in bucket.list("leases").await? {
        if now.saturating_sub(modified) > 2 * lease_ttl {
            bucket.delete(&key).await?;
            done.deleted_leases += 1;
        }
    }
    Ok(done)
}

/// Objects by the hex digest their key ends with.
fn by_hex(listed: Vec<(Key, u64)>) -> HashMap<String, (Key, u64)> {
    listed
        .into_iter()
        .filter_map(|(key, modified)| {
            let hex = key.filename()?.to_owned();
            Some((hex, (key, modified)))
        })
        .collect()
}

/// An object too large to be one of ours reads as none (it keeps nothing); any other failure
/// stops the collection.
fn readable<T>(got: Result<Option<T>, SharedError>) -> Result<Option<T>, SharedError> {
    match got {
        Err(SharedError::Refused { .. }) => Ok(None),
        other => other,
    }
}
