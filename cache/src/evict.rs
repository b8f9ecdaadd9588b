//! Eviction: keep the store under its size, least recently used first, never evicting content a
//! kept manifest references.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use rocksdb::IteratorMode;

use crate::{keys, Digest, Error, Store};

/// What one eviction pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evicted {
    pub items: usize,
    pub bytes: u64,
}

struct Candidate {
    digest: Digest,
    is_manifest: bool,
    last_access: u64,
}

impl Store {
    /// Evicts until the store fits `max_size`, or until everything left is referenced.
    pub fn evict_to_fit(&self) -> Result<Evicted, Error> {
        self.evict_until(self.max_size)
    }

    /// [`evict_to_fit`](Self::evict_to_fit) when over size and no other eviction runs.
    pub fn evict_if_over(&self) -> Result<Option<Evicted>, Error> {
        if self.total.load(Ordering::Relaxed) <= self.max_size
            || self.evicting.swap(true, Ordering::AcqRel)
        {
            return Ok(None);
        }
        let result = self.evict_to_fit();
        self.evicting.store(false, Ordering::Release);
        result.map(Some)
    }

    /// Evicts until at most `limit` bytes are held.
    pub fn evict_until(&self, limit: u64) -> Result<Evicted, Error> {
        let mut done = Evicted::default();
        if self.total.load(Ordering::Relaxed) <= limit {
            return Ok(done);
        }
        let (mut candidates, mut refcount, refs_of) = self.census()?;
        candidates.sort_by_key(|c| c.last_access);
        let mut progress = true;
        while progress && self.total.load(Ordering::Relaxed) > limit {
            progress = false;
            for c in candidates.iter_mut().filter(|c| c.last_access != u64::MAX) {
                if self.total.load(Ordering::Relaxed) <= limit {
                    break;
                }
                if refcount.get(&c.digest).copied().unwrap_or(0) > 0 {
                    continue;
                }
                done.bytes += self.delete(&c.digest, c.is_manifest)?;
                done.items += 1;
                progress = true;
                c.last_access = u64::MAX; // gone
                for r in refs_of.get(&c.digest).into_iter().flatten() {
                    if let Some(n) = refcount.get_mut(r) {
                        *n = n.saturating_sub(1);
                    }
                }
                tracing::info!(digest = %c.digest, manifest = c.is_manifest, "evicted");
            }
        }
        Ok(done)
    }

    /// Removes blobs no held manifest references (left by interrupted imports or evicted
    /// manifests).
    pub fn gc_unreferenced(&self) -> Result<Evicted, Error> {
        let (candidates, refcount, _) = self.census()?;
        let mut done = Evicted::default();
        for c in candidates.iter().filter(|c| !c.is_manifest) {
            if refcount.get(&c.digest).copied().unwrap_or(0) == 0 {
                done.bytes += self.delete(&c.digest, false)?;
                done.items += 1;
            }
        }
        Ok(done)
    }

    #[allow(clippy::type_complexity)]
    fn census(
        &self,
    ) -> Result<
        (
            Vec<Candidate>,
            HashMap<Digest, u32>,
            HashMap<Digest, Vec<Digest>>,
        ),
        Error,
    > {
        let mut candidates = Vec::new();
        let mut refcount: HashMap<Digest, u32> = HashMap::new();
        let mut refs_of = HashMap::new();
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, _) = item?;
            let (digest, is_manifest) = if let Some(d) = keys::digest_of(&k, keys::MANIFEST) {
                (d, true)
            } else if let Some(d) = keys::digest_of(&k, keys::BLOB) {
                (d, false)
            } else {
                continue;
            };
            if is_manifest {
                if let Some(m) = self.read_manifest(&digest)? {
                    for r in &m.refs {
                        *refcount.entry(r.clone()).or_default() += 1;
                    }
                    refs_of.insert(digest.clone(), m.refs);
                }
            }
            let last_access = self.last_access(&digest);
            candidates.push(Candidate {
                digest,
                is_manifest,
                last_access,
            });
        }
        Ok((candidates, refcount, refs_of))
    }
}
