//! The shared tier as the content layer uses it ([`portcullis_cache::shared`] underneath).
//!
//! The bucket is another untrusted source: whatever is read back is hash-checked by the caller
//! and anything that fails is logged, counted, deleted and fetched from the upstream instead.
//! It is also optional at run time: every failure is a metric and a log line, after which the
//! tier is skipped for `retry_after`, so a bucket that is down or slow costs clients nothing but
//! the replicas' sharing.

pub mod gc;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use portcullis_cache::shared::{
    Claim, Fetched, Lease, Shared, SharedConfig, SharedError, UpdateVersion,
};
use portcullis_cache::{now_ms, Digest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::metrics::{Metrics, SharedLabel};

/// How soon a replica waiting on another's fetch first looks whether the blob has landed; it
/// then waits twice as long each time, up to [`LEASE_POLL_MAX`].
const LEASE_POLL: Duration = Duration::from_millis(100);
const LEASE_POLL_MAX: Duration = Duration::from_secs(1);
/// Blob uploads running at once: each holds up to four parts (8 MiB each) in memory, and more
/// would only split the bucket's bandwidth.
const MAX_UPLOADS: usize = 2;
/// Uploads waiting their turn (an open file each, no buffer). Past it an upload is skipped:
/// that costs sharing only.
const MAX_QUEUED_UPLOADS: usize = 64;
/// Small writes (manifests, evidence, records) running at once, for the same reasons.
const MAX_WRITES: usize = 64;
/// The largest record written or read (tag mappings are tiny; referrer lists are capped).
const MAX_RECORD: usize = 1 << 20;

/// The bucket, with its health and metrics.
pub struct Tier {
    bucket: Shared,
    metrics: Metrics,
    /// Until when (ms since the epoch) the tier is skipped after a failure.
    down_until_ms: AtomicU64,
    uploads: Arc<Semaphore>,
    queued_uploads: Arc<Semaphore>,
    writes: Arc<Semaphore>,
    /// Whether the store honours conditional creates: 0 not known yet, 1 yes, 2 no.
    conditional: AtomicU8,
}

/// How a replica stands towards fetching a blob upstream.
pub enum Claimed {
    /// This replica fetches; release the lease once the blob is in the bucket.
    Mine(Lease),
    /// Another replica put it in the bucket while this one waited.
    Landed,
    /// Fetch without a lease: the tier is down, or the other replica's time ran out.
    Alone,
}

/// A record as read, with what replacing it must name.
pub struct Record<T> {
    pub value: T,
    version: UpdateVersion,
}

impl Tier {
    pub fn open(config: &SharedConfig, metrics: Metrics) -> Result<Tier, SharedError> {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "replica".into());
        // Unique per process start, so that a restarted replica does not release its
        // predecessor's claims as its own.
        let holder = format!("{host}/{}/{}", std::process::id(), now_ms());
        Ok(Tier {
            bucket: Shared::open(config, &holder)?,
            metrics,
            down_until_ms: AtomicU64::new(0),
            uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
            queued_uploads: Arc::new(Semaphore::new(MAX_QUEUED_UPLOADS)),
            writes: Arc::new(Semaphore::new(MAX_WRITES)),
            conditional: AtomicU8::new(0),
        })
    }

    pub fn config(&self) -> &SharedConfig {
        self.bucket.config()
    }

    /// Where content of `kind` lives: manifests apart, every other kind (blobs, evidence) by
    /// its digest among the blobs.
    fn content_key(&self, kind: &str, digest: &Digest) -> portcullis_cache::shared::Key {
        match kind {
            "manifest" => self.bucket.manifest_key(digest),
            _ => self.bucket.blob_key(digest),
        }
    }

    /// Whether the tier is in use (not skipped after a recent failure): what `/readyz` reports.
    pub fn up(&self) -> bool {
        now_ms() >= self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Finds out, in the background, whether the store honours conditional creates, and says
    /// so once if it does not: content stays safe (keyed by digest, hash-checked), but two
    /// replicas may then both hold a lease and records become last-writer-wins.
    pub fn probe_conditional_writes(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tier = Arc::clone(self);
        runtime.spawn(async move {
            match tier.bucket.honours_conditional_create().await {
                Ok(true) => tier.conditional.store(1, Ordering::Relaxed),
                Ok(false) => {
                    tier.conditional.store(2, Ordering::Relaxed);
                    tracing::warn!(url = %tier.config().url,
                        "the shared tier's store ignores conditional writes (If-None-Match): \
                         replicas may fetch a blob upstream more than once and records are \
                         last-writer-wins; content is still hash-checked");
                }
                Err(e) => tier.failed("probe", &e),
            }
        });
    }

    /// `/readyz`'s `conditional_writes`: `None` until probed.
    pub fn conditional_writes(&self) -> Option<bool> {
        match self.conditional.load(Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    fn failed(&self, kind: &'static str, e: &SharedError) {
        let retry = self.config().retry_after;
        self.down_until_ms
            .store(now_ms() + retry.as_millis() as u64, Ordering::Relaxed);
        self.metrics
            .shared_errors
            .get_or_create(&SharedLabel { kind })
            .inc();
        tracing::warn!(kind, error = %e, retry_in = ?retry,
            "shared tier failed: serving from this replica and the upstream");
    }

    fn found(&self, kind: &'static str, hit: bool) {
        let family = if hit {
            &self.metrics.shared_hits
        } else {
            &self.metrics.shared_misses
        };
        family.get_or_create(&SharedLabel { kind }).inc();
    }

    /// A content object that did not hash to its key: logged, counted and deleted, so the next
    /// replica writes the real one.
    pub fn refused(self: &Arc<Self>, kind: &'static str, digest: &Digest, why: &str) {
        tracing::warn!(kind, %digest, why, "shared tier object refused: fetching from the upstream");
        self.metrics
            .shared_refused
            .get_or_create(&SharedLabel { kind })
            .inc();
        let key = self.content_key(kind, digest);
        self.spawn_write(move |tier| async move {
            if let Err(e) = tier.bucket.delete(&key).await {
                tier.failed(kind, &e);
            }
        });
    }

    /// Runs a background write if fewer than [`MAX_WRITES`] run: past that, the write is
    /// dropped (a slow bucket must not pile up tasks and memory; a dropped write costs sharing).
    fn spawn_write<F, Fut>(self: &Arc<Self>, write: F)
    where
        F: FnOnce(Arc<Tier>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            tracing::debug!("shared tier write skipped: {MAX_WRITES} already running");
            return;
        };
        let fut = write(Arc::clone(self));
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }

    /// A manifest (`kind` "manifest") or small blob (any other kind) of at most `max` bytes,
    /// unchecked: the caller hashes it.
    pub async fn small(&self, kind: &'static str, digest: &Digest, max: u64) -> Option<Fetched> {
        if !self.up() {
            return None;
        }
        let key = self.content_key(kind, digest);
        match self.bucket.get_small(&key, max).await {
            Ok(got) => {
                self.found(kind, got.is_some());
                if let Some(got) = &got {
                    self.metrics
                        .shared_bytes_read
                        .inc_by(got.bytes.len() as u64);
                }
                got
            }
            Err(e @ SharedError::Refused { .. }) => {
                tracing::warn!(kind, %digest, error = %e, "shared tier object refused");
                self.metrics
                    .shared_refused
                    .get_or_create(&SharedLabel { kind })
                    .inc();
                None
            }
            Err(e) => {
                self.failed(kind, &e);
                None
            }
        }
    }

    /// Writes checked content in the background; a failure only costs sharing.
    pub fn put_small(
        self: &Arc<Self>,
        kind: &'static str,
        digest: &Digest,
        bytes: Bytes,
        content_type: Option<String>,
    ) {
        if !self.up() {
            return;
        }
        let key = self.content_key(kind, digest);
        self.spawn_write(move |tier| async move {
            let len = bytes.len() as u64;
            match tier
                .bucket
                .create(&key, bytes, content_type.as_deref())
                .await
            {
                Ok(true) => {
                    tier.metrics.shared_bytes_written.inc_by(len);
                }
                Ok(false) => {}
                Err(e) => tier.failed(kind, &e),
            }
        });
    }

    /// A blob's body, unchecked (the caller hashes it as it streams), if the bucket holds it.
    pub async fn blob(
        &self,
        digest: &Digest,
    ) -> Option<(u64, BoxStream<'static, Result<Bytes, SharedError>>)> {
        if !self.up() {
            return None;
        }
        match self.bucket.get_stream(&self.bucket.blob_key(digest)).await {
            Ok(got) => {
                self.found("blob", got.is_some());
                got
            }
            Err(e) => {
                self.failed("blob", &e);
                None
            }
        }
    }

    /// Counts bytes read from a blob stream, and reports a stream that broke off.
    pub fn read_blob_bytes(&self, n: usize) {
        self.metrics.shared_bytes_read.inc_by(n as u64);
    }

    pub fn blob_failed(&self, e: &SharedError) {
        self.failed("blob", e);
    }

    /// Claims the upstream fetch of `digest`, or waits (at most until `deadline`) while another
    /// replica holds it, until the blob lands in the bucket or the claim runs out. A waiter
    /// looks for the blob with a backoff and asks for the claim again only once it expired: a
    /// fleet of waiters must not flood the bucket.
    pub async fn claim(&self, digest: &Digest, deadline: Instant) -> Claimed {
        let key = self.bucket.blob_key(digest);
        let mut waited = false;
        loop {
            if !self.up() {
                return Claimed::Alone;
            }
            let until_ms = match self.bucket.claim(digest).await {
                Ok(Claim::Mine(lease)) => return Claimed::Mine(lease),
                Ok(Claim::Held { until_ms }) => until_ms,
                Err(e) => {
                    self.failed("lease", &e);
                    return Claimed::Alone;
                }
            };
            if !waited {
                waited = true;
                self.metrics.shared_lease_waits.inc();
                tracing::debug!(%digest, "another replica is fetching this blob: waiting");
            }
            let mut pause = LEASE_POLL;
            loop {
                if Instant::now() + pause >= deadline {
                    return Claimed::Alone;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LEASE_POLL_MAX);
                match self.bucket.exists(&key).await {
                    Ok(true) => return Claimed::Landed,
                    Ok(false) => {}
                    Err(e) => {
                        self.failed("lease", &e);
                        return Claimed::Alone;
                    }
                }
                if now_ms() >= until_ms {
                    break; // the holder's time ran out (or it let go): claim again
                }
            }
        }
    }

    /// Uploads a blob just verified and committed here, then gives the lease up; in the
    /// background, off every client's path.
    pub fn upload(
        self: &Arc<Self>,
        digest: Digest,
        file: std::fs::File,
        path: std::path::PathBuf,
        size: u64,
        lease: Option<Lease>,
    ) {
        let queued = match Arc::clone(&self.queued_uploads).try_acquire_owned() {
            Ok(queued) if self.up() => queued,
            _ => {
                tracing::debug!(%digest, "blob not shared: the tier is down or busy");
                if let Some(lease) = lease {
                    self.release(lease);
                }
                return;
            }
        };
        let tier = Arc::clone(self);
        tokio::spawn(async move {
            let _queued = queued;
            let Ok(_running) = Arc::clone(&tier.uploads).acquire_owned().await else {
                return;
            };
            let started = Instant::now();
            match tier.bucket.upload_blob(&digest, file, path, size).await {
                Ok(true) => {
                    tier.metrics.shared_bytes_written.inc_by(size);
                    tracing::debug!(%digest, size, ms = started.elapsed().as_millis() as u64,
                        "blob shared");
                }
                Ok(false) => {}
                Err(e) => tier.failed("blob", &e),
            }
            if let Some(lease) = lease {
                if let Err(e) = tier.bucket.release(lease).await {
                    tier.failed("lease", &e);
                }
            }
        });
    }

    /// Gives a lease up without uploading (the fetch failed).
    pub fn release(self: &Arc<Self>, lease: Lease) {
        let tier = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = tier.bucket.release(lease).await {
                tier.failed("lease", &e);
            }
        });
    }

    /// The record of `kind` for `id`, if any and readable.
    pub async fn record<T: DeserializeOwned>(
        &self,
        kind: &'static str,
        id: &str,
    ) -> Option<Record<T>> {
        if !self.up() {
            return None;
        }
        match self
            .bucket
            .get_small(&self.bucket.record_key(kind, id), MAX_RECORD as u64)
            .await
        {
            Ok(Some(got)) => match serde_json::from_slice(&got.bytes) {
                Ok(value) => {
                    self.found(kind, true);
                    Some(Record {
                        value,
                        version: got.version,
                    })
                }
                Err(e) => {
                    tracing::warn!(kind, error = %e, "unreadable shared record ignored");
                    self.metrics
                        .shared_refused
                        .get_or_create(&SharedLabel { kind })
                        .inc();
                    None
                }
            },
            Ok(None) => {
                self.found(kind, false);
                None
            }
            // Too large to be one of ours: ignored, not a reason to skip the tier.
            Err(e @ SharedError::Refused { .. }) => {
                tracing::warn!(kind, error = %e, "oversized shared record ignored");
                self.metrics
                    .shared_refused
                    .get_or_create(&SharedLabel { kind })
                    .inc();
                None
            }
            Err(e) => {
                self.failed(kind, &e);
                None
            }
        }
    }

    /// Writes a record, replacing `read` only if nobody replaced it since (a replica that
    /// loses the race keeps the other's, which is as recent). In the background.
    pub fn write_record<T: Serialize>(
        self: &Arc<Self>,
        kind: &'static str,
        id: &str,
        value: &T,
        read: Option<Record<T>>,
    ) {
        if !self.up() {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(value) else {
            return;
        };
        if bytes.len() > MAX_RECORD {
            tracing::debug!(kind, bytes = bytes.len(), "record too large to share");
            return;
        }
        let key = self.bucket.record_key(kind, id);
        let version = read.map(|r| r.version);
        self.spawn_write(move |tier| async move {
            let len = bytes.len() as u64;
            match tier.bucket.replace(&key, bytes.into(), version).await {
                Ok(true) => {
                    tier.metrics.shared_bytes_written.inc_by(len);
                }
                Ok(false) => {
                    tracing::debug!(kind, "shared record written by another replica first")
                }
                Err(e) => tier.failed(kind, &e),
            }
        });
    }

    /// Creates the record of `kind` for `id` as `value` unless the fleet has one already; the
    /// record now in the bucket (this one or the earlier), or `None` when the tier is down.
    pub async fn first_record(&self, kind: &'static str, id: &str, value: &str) -> Option<String> {
        if !self.up() {
            return None;
        }
        let key = self.bucket.record_key(kind, id);
        match self
            .bucket
            .create(&key, Bytes::from(value.to_owned()), None)
            .await
        {
            Ok(true) => return Some(value.to_owned()),
            Ok(false) => {}
            Err(e) => {
                self.failed(kind, &e);
                return None;
            }
        }
        match self.bucket.get_small(&key, 1024).await {
            Ok(Some(got)) => {
                self.found(kind, true);
                String::from_utf8(got.bytes.to_vec()).ok()
            }
            Ok(None) => None,
            Err(e) => {
                self.failed(kind, &e);
                None
            }
        }
    }

    /// The bucket itself, for `portcullis cache gc --shared`.
    pub fn bucket(&self) -> &Shared {
        &self.bucket
    }
}
