//! Single-flight blob fetches.
//!
//! The first request for a missing blob starts one upstream GET in a task of its own; every
//! request for the same blob while it runs joins it and streams from the file it writes, as the
//! bytes arrive (see [`crate::body`]). The fetch outlives the clients that started it, so a
//! client hanging up does not spoil the others. Receiving (async), writing (a blocking thread)
//! and hashing (the cache writer's own thread) run as a pipeline across cores.
//!
//! With a shared tier, the bucket comes before the upstream: a blob found there is hashed as it
//! is read, into a writer of its own, and released only once it matched (a mismatch is refused
//! and the upstream asked instead). Otherwise the replica claims the upstream fetch for the
//! fleet, or waits while another replica holds the claim and reads what it puts in the bucket.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::Method;
use http_body_util::BodyExt;
use portcullis_cache::{BlobWriter, Digest, Store};
use tokio::sync::{mpsc, watch};

use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::route::Target;
use crate::shared::{Claimed, Tier};
use crate::upstream::{content_length, status_error};

/// The slowest a blob is read from the shared tier (bytes a second) before the upstream is
/// asked instead.
const MIN_SHARED_RATE: u64 = 4 << 20;

/// Where a fetch stands.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Waiting for the upstream's response headers.
    Starting,
    /// Bytes are being received, hashed and written.
    Streaming { size: Option<u64>, written: u64 },
    /// All bytes matched the digest: the whole blob may be released.
    /// `committed` turns true once the blob is durable and visible in the store.
    Verified { size: u64, committed: bool },
    /// Nothing will be cached; clients must abort.
    Failed(Arc<ProxyError>),
}

/// Waits until a fetch has committed its blob to the store (`Ok`) or failed; `None` if the
/// fetch vanished without saying.
pub async fn until_committed(
    progress: &mut tokio::sync::watch::Receiver<Progress>,
) -> Option<Result<(), Arc<ProxyError>>> {
    let state = progress
        .wait_for(|p| {
            matches!(
                p,
                Progress::Verified {
                    committed: true,
                    ..
                } | Progress::Failed(_)
            )
        })
        .await
        .ok()?
        .clone();
    Some(match state {
        Progress::Failed(e) => Err(e),
        _ => Ok(()),
    })
}

/// One running fetch, as its followers see it.
pub struct Flight {
    /// The temporary file, then the committed one once renamed.
    pub paths: [PathBuf; 2],
    pub progress: watch::Receiver<Progress>,
    /// The repository (`registry/repository`) the fetch is for: another repository joining it
    /// must have the blob upstream too.
    pub name: String,
}

/// The running fetches, by digest.
pub struct Flights {
    running: Mutex<HashMap<Digest, Arc<Flight>>>,
    metrics: Metrics,
    shared: Option<Arc<Tier>>,
}

enum Chunk {
    Data(Bytes),
    End,
}

impl Flights {
    pub fn new(metrics: Metrics, shared: Option<Arc<Tier>>) -> Flights {
        Flights {
            running: Mutex::default(),
            metrics,
            shared,
        }
    }

    /// Joins the fetch of `digest`, starting it if none runs. The flag says whether it joined.
    /// `size` is what the verified manifest's descriptor promised: a fetch it starts aborts on
    /// any other length.
    pub fn join(
        self: &Arc<Self>,
        store: &Arc<Store>,
        target: &Target,
        digest: &Digest,
        size: u64,
    ) -> Result<(Arc<Flight>, bool), ProxyError> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(flight) = running.get(digest) {
            self.metrics.singleflight_joins.inc();
            return Ok((Arc::clone(flight), true));
        }
        let writer = store.blob_writer(digest, None)?;
        let (tx, rx) = watch::channel(Progress::Starting);
        let flight = Arc::new(Flight {
            paths: [writer.path().to_owned(), store.blob_path(digest)],
            progress: rx,
            name: target.name.clone(),
        });
        running.insert(digest.clone(), Arc::clone(&flight));
        drop(running);
        let job = Job {
            flights: Arc::clone(self),
            store: Arc::clone(store),
            target: target.clone(),
            digest: digest.clone(),
            size,
            progress: Arc::new(tx),
        };
        tokio::spawn(job.run(writer));
        Ok((flight, false))
    }
}

struct Job {
    flights: Arc<Flights>,
    store: Arc<Store>,
    target: Target,
    digest: Digest,
    /// The length the verified manifest promised.
    size: u64,
    progress: Arc<watch::Sender<Progress>>,
}

impl Job {
    async fn run(self, writer: BlobWriter) {
        let started = std::time::Instant::now();
        let result = self.fetch(writer).await;
        // Leave the running set before reporting, so that a request arriving after a failure
        // starts a fresh fetch instead of joining the failed one.
        self.flights
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.digest);
        match result {
            Ok(size) => {
                if let Err(e) = self.store.link(&self.target.name, &self.digest) {
                    tracing::error!(error = %e, "cannot record blob link");
                }
                tracing::debug!(digest = %self.digest, size, ms = started.elapsed().as_millis() as u64,
                    "blob verified and cached");
            }
            Err(e) => {
                tracing::warn!(name = %self.target.name, digest = %self.digest, error = %e,
                    "blob fetch failed; nothing cached");
                self.progress.send_replace(Progress::Failed(Arc::new(e)));
            }
        }
    }

    /// The blob from the bucket or the upstream. The bucket's part has bounds of its own, so
    /// that a slow bucket leaves the upstream fetch its whole time.
    async fn fetch(&self, writer: BlobWriter) -> Result<u64, ProxyError> {
        let Some(tier) = self.flights.shared.clone() else {
            return self.fetch_upstream_timed(writer).await;
        };
        if let Some(size) = self.fetch_shared(&tier).await? {
            return Ok(self.release_shared(writer, size));
        }
        // Wait for another replica's fetch at most half this fetch's time, then fetch anyway.
        let patience = tier
            .config()
            .lease_ttl
            .min(self.target.upstream.timeout / 2);
        let lease = match tier
            .claim(&self.digest, std::time::Instant::now() + patience)
            .await
        {
            Claimed::Mine(lease) => Some(lease),
            Claimed::Landed => {
                if let Some(size) = self.fetch_shared(&tier).await? {
                    return Ok(self.release_shared(writer, size));
                }
                None
            }
            Claimed::Alone => None,
        };
        let result = self.fetch_upstream_timed(writer).await;
        let path = self.store.blob_path(&self.digest);
        match (&result, std::fs::File::open(&path)) {
            (Ok(size), Ok(file)) => tier.upload(self.digest.clone(), file, path, *size, lease),
            _ => {
                if let Some(lease) = lease {
                    tier.release(lease);
                }
            }
        }
        result
    }

    /// A blob from the bucket, hashed as it is read into a writer of its own and committed only
    /// if it matched; nothing is published to followers until then. `None`: not there, or
    /// refused, or the bucket failed; the caller goes upstream. An error: this repository does
    /// not have the blob upstream.
    async fn fetch_shared(&self, tier: &Arc<Tier>) -> Result<Option<u64>, ProxyError> {
        let Some((size, stream)) = tier.blob(&self.digest).await else {
            return Ok(None);
        };
        if size != self.size {
            // The object may be right and the descriptor wrong: ignored, not deleted.
            tracing::warn!(digest = %self.digest, size, expected = self.size,
                "shared tier blob has another size than the verified manifest says: ignored");
            return Ok(None);
        }
        // The bucket holds every repository's blobs: one is served for this repository only if
        // it has it upstream too, as for a blob held here for another repository.
        if !self.store.is_linked(&self.target.name, &self.digest)? {
            match upstream_head(&self.target, &self.digest).await {
                Ok(_) => {}
                Err(e) if e.is_transient() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        // A bucket that dribbles is given up on for the upstream, not waited for.
        let budget =
            tier.config().timeout + Duration::from_secs_f64(size as f64 / MIN_SHARED_RATE as f64);
        match tokio::time::timeout(budget, self.read_shared(tier, stream)).await {
            Ok(got) => Ok(got),
            Err(_) => {
                tier.blob_failed(&portcullis_cache::shared::SharedError::Timeout(budget));
                Ok(None)
            }
        }
    }

    async fn fetch_upstream_timed(&self, writer: BlobWriter) -> Result<u64, ProxyError> {
        let upstream = &self.target.upstream;
        tokio::time::timeout(upstream.timeout, self.fetch_upstream(writer))
            .await
            .unwrap_or_else(|_| {
                Err(ProxyError::Unavailable(format!(
                    "{}: blob {} took longer than {:?}",
                    upstream.name, self.digest, upstream.timeout
                )))
            })
    }

    async fn read_shared(
        &self,
        tier: &Arc<Tier>,
        mut stream: futures_util::stream::BoxStream<
            'static,
            Result<Bytes, portcullis_cache::shared::SharedError>,
        >,
    ) -> Option<u64> {
        let writer = match self.store.blob_writer(&self.digest, Some(self.size)) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot write a blob from the shared tier");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel::<Chunk>(32);
        let what = format!(
            "blob {}@{} from the shared tier",
            self.target.name, self.digest
        );
        let store = Arc::clone(&self.store);
        let metrics = self.flights.metrics.clone();
        let write = tokio::task::spawn_blocking(move || {
            let result = write_all(writer, rx, None, &what);
            if result.is_ok() {
                evict_if_over(&store, &metrics);
            }
            result
        });
        let received = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                tier.read_blob_bytes(chunk.len());
                if tx.send(Chunk::Data(chunk)).await.is_err() {
                    break; // the writer failed; its error says why
                }
            }
            Ok(())
        }
        .await;
        if received.is_ok() {
            let _ = tx.send(Chunk::End).await;
        }
        drop(tx);
        let written = write.await;
        match (received, written) {
            (Err(e), _) => {
                tier.blob_failed(&e);
                None
            }
            (Ok(()), Ok(Ok(size))) => Some(size),
            (Ok(()), Ok(Err(ProxyError::BadUpstream(why)))) => {
                tier.refused("blob", &self.digest, &why);
                None
            }
            (Ok(()), Ok(Err(e))) => {
                tracing::error!(error = %e, "cannot hold a blob from the shared tier");
                None
            }
            (Ok(()), Err(e)) => {
                tracing::error!(error = %e, "shared tier blob writer");
                None
            }
        }
    }

    /// Followers of this flight see the blob committed from the bucket. The flight's own
    /// writer goes first, so that no follower opens its empty temporary file.
    fn release_shared(&self, writer: BlobWriter, size: u64) -> u64 {
        drop(writer);
        self.progress.send_replace(Progress::Verified {
            size,
            committed: true,
        });
        size
    }

    async fn fetch_upstream(&self, mut writer: BlobWriter) -> Result<u64, ProxyError> {
        let up = &self.target.upstream;
        let what = format!("blob {}@{}", self.target.name, self.digest);
        let resp = up
            .send(
                Method::GET,
                &self.target.repo,
                &format!("blobs/{}", self.digest),
                None,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(&up.name, resp.status(), &what, || {
                ProxyError::BlobUnknown(format!("{what} is not in the upstream"))
            }));
        }
        if let Some(said) = content_length(&resp).filter(|n| *n != self.size) {
            return Err(ProxyError::BadUpstream(format!(
                "{what}: the upstream says {said} bytes, the verified manifest {}; nothing was cached",
                self.size
            )));
        }
        let size = Some(self.size);
        writer.expect_size(size);
        self.progress
            .send_replace(Progress::Streaming { size, written: 0 });

        let (tx, rx) = mpsc::channel::<Chunk>(32);
        let progress = Arc::clone(&self.progress);
        let store = Arc::clone(&self.store);
        let metrics = self.flights.metrics.clone();
        let what2 = what.clone();
        let write = tokio::task::spawn_blocking(move || {
            let result = write_all(writer, rx, Some(&progress), &what2);
            if result.is_ok() {
                evict_if_over(&store, &metrics);
            }
            result
        });

        let mut body = resp.into_body();
        let received = async {
            loop {
                let frame = tokio::time::timeout(up.read_timeout, body.frame())
                    .await
                    .map_err(|_| {
                        ProxyError::Unavailable(format!(
                            "{}: {what} stalled for {:?}",
                            up.name, up.read_timeout
                        ))
                    })?;
                let Some(frame) = frame else {
                    return Ok(());
                };
                let frame = frame.map_err(|e| {
                    ProxyError::Unavailable(format!("{}: {what} broke off: {e}", up.name))
                })?;
                if let Ok(data) = frame.into_data() {
                    if tx.send(Chunk::Data(data)).await.is_err() {
                        return Ok(()); // the writer failed; its error says why
                    }
                }
            }
        }
        .await;
        if received.is_ok() {
            let _ = tx.send(Chunk::End).await;
        }
        drop(tx);
        let written = write
            .await
            .map_err(|e| ProxyError::Internal(format!("blob writer: {e}")))?;
        received.and(written)
    }
}

/// Hashes and writes every chunk, publishing progress (if given); verifies at the end,
/// releases the blob to followers, then commits it.
fn write_all(
    mut writer: BlobWriter,
    mut rx: mpsc::Receiver<Chunk>,
    progress: Option<&watch::Sender<Progress>>,
    what: &str,
) -> Result<u64, ProxyError> {
    let publish = |p: Progress| {
        if let Some(progress) = progress {
            progress.send_replace(p);
        }
    };
    // A full disk or a store error: the fetch fails cleanly (the temporary file goes with the
    // writer) and clients get a 503; a mismatch is the upstream's fault.
    let bad = |e: portcullis_cache::Error| match ProxyError::from(e) {
        ProxyError::BadUpstream(m) => ProxyError::BadUpstream(format!("{what}: {m}")),
        ProxyError::Unavailable(m) => ProxyError::Unavailable(format!("{what}: {m}")),
        other => ProxyError::Internal(format!("{what}: {other}")),
    };
    loop {
        match rx.blocking_recv() {
            Some(Chunk::Data(bytes)) => {
                writer.write(bytes).map_err(bad)?;
                let now = writer.written();
                if let Some(progress) = progress {
                    progress.send_modify(|p| {
                        if let Progress::Streaming { written, .. } = p {
                            *written = now;
                        }
                    });
                }
            }
            Some(Chunk::End) => break,
            None => {
                return Err(ProxyError::Unavailable(format!(
                    "{what}: upstream body ended early"
                )))
            }
        }
    }
    let t = std::time::Instant::now();
    let size = writer.verify().map_err(bad)?;
    tracing::debug!(verify_ms = t.elapsed().as_millis() as u64, "verified");
    publish(Progress::Verified {
        size,
        committed: false,
    });
    let size = writer.commit().map_err(bad)?;
    publish(Progress::Verified {
        size,
        committed: true,
    });
    Ok(size)
}

/// Keeps the store under its size after a write; off the client's path.
pub fn evict_if_over(store: &Store, metrics: &Metrics) {
    match store.evict_if_over() {
        Ok(Some(done)) => {
            metrics.evictions.inc_by(done.items as u64);
            tracing::info!(
                items = done.items,
                bytes = done.bytes,
                "evicted to fit the cache size"
            )
        }
        Ok(None) => {}
        Err(e) => tracing::error!(error = %e, "eviction failed"),
    }
}

/// The size of the blob in `target`'s repository upstream (a `HEAD`): whether content held for
/// another repository, here or in the shared tier, may be served for this one.
pub async fn upstream_head(target: &Target, digest: &Digest) -> Result<u64, ProxyError> {
    let up = &target.upstream;
    let what = format!("blob {}@{digest}", target.name);
    let resp = up
        .send(Method::HEAD, &target.repo, &format!("blobs/{digest}"), None)
        .await?;
    if !resp.status().is_success() {
        return Err(status_error(&up.name, resp.status(), &what, || {
            ProxyError::BlobUnknown(format!("{what} is not in the upstream"))
        }));
    }
    content_length(&resp)
        .ok_or_else(|| ProxyError::BadUpstream(format!("{what}: HEAD gave no Content-Length")))
}
