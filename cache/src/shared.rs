//! The shared tier: one S3-compatible bucket that a fleet of replicas fills and reads, below
//! each replica's own store. It is storage, not authority: what it holds is keyed by digest and
//! every caller hashes what it reads back, as it would an upstream's bytes.
//!
//! # Layout under the configured prefix
//! - `blobs/sha256/<hex>` and `manifests/sha256/<hex>` (with its `Content-Type`): content.
//! - `leases/sha256/<hex>`: who is fetching a blob upstream right now, until when.
//! - `records/<kind>/<hex>`: small JSON records (tag mappings, referrer lists), named by the
//!   SHA-256 of their key, replaced only by a writer that read the version it replaces.
//!
//! Writes of content are conditional creates (`If-None-Match: *`): racing replicas write once.
//! Blobs above [`SINGLE_PUT_MAX`] go up in parts and are completed only once the parts hashed
//! to the digest; a replica that dies mid-upload leaves no visible object.

use std::collections::VecDeque;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt as _, PutMode,
    PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{now_ms, Digest, Hasher};

pub use object_store::path::Path as Key;
pub use object_store::UpdateVersion;

/// Blobs up to this size go up in one conditional `PUT`; larger ones in parts of this size.
pub const SINGLE_PUT_MAX: u64 = 8 << 20;
/// Parts of one upload sent at once: each holds [`SINGLE_PUT_MAX`] bytes in memory.
const PARTS_IN_FLIGHT: usize = 3;

/// `[cache.shared]`: where the bucket is and how long to wait for it. Credentials come from the
/// usual `AWS_*` environment variables or from the `*_file` keys, never from this file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// Any S3-compatible store's address (`http://` only when written so); AWS's by default.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub session_token_file: Option<PathBuf>,
    /// Longest wait for one small request, or between two chunks of a blob, before the tier is
    /// taken as down.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a replica's claim to fetch a blob upstream holds others back.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// After a failure, the tier is skipped this long (every request would otherwise wait).
    #[serde(default = "default_retry_after", with = "humantime_serde")]
    pub retry_after: Duration,
}

impl SharedConfig {
    /// Checks what can be checked without the network.
    pub fn check(&self) -> Result<(), SharedError> {
        split_url(&self.url).map(|_| ())
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_retry_after() -> Duration {
    Duration::from_secs(10)
}

/// What went wrong with the bucket.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("[cache.shared] {0}")]
    Config(String),
    #[error("cannot read {}: {source}", path.display())]
    Secret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] object_store::Error),
    #[error("the bucket did not answer within {0:?}")]
    Timeout(Duration),
    #[error("reading {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}: {what}")]
    Refused { key: String, what: String },
}

/// An object read back, and the version a conditional replace must name.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Bytes,
    pub content_type: Option<String>,
    pub version: UpdateVersion,
}

/// A claim on fetching one blob upstream, released by [`Shared::release`].
#[derive(Debug)]
pub struct Lease {
    key: Path,
}

/// The answer to a claim.
#[derive(Debug)]
pub enum Claim {
    Mine(Lease),
    /// Another replica holds it until this time (ms since the epoch).
    Held {
        until_ms: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct LeaseBody {
    holder: String,
    until_ms: u64,
}

/// The bucket, as the store sees it.
pub struct Shared {
    store: Arc<AmazonS3>,
    prefix: Path,
    config: SharedConfig,
    holder: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shared({})", self.config.url)
    }
}

impl Shared {
    /// A client for the configured bucket; nothing is sent until first use. `holder` names this
    /// replica in leases.
    pub fn open(config: &SharedConfig, holder: &str) -> Result<Shared, SharedError> {
        let (bucket, prefix) = split_url(&config.url)?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            // Our own timeouts bound each small request and each gap in a stream; a whole-request
            // limit would cut long blob downloads.
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(config.timeout)
                    .with_timeout_disabled(),
            )
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: config.timeout,
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(path) = &config.access_key_id_file {
            builder = builder.with_access_key_id(secret(path)?);
        }
        if let Some(path) = &config.secret_access_key_file {
            builder = builder.with_secret_access_key(secret(path)?);
        }
        if let Some(path) = &config.session_token_file {
            builder = builder.with_token(secret(path)?);
        }
        let store = builder
            .build()
            .map_err(|e| SharedError::Config(e.to_string()))?;
        Ok(Shared {
            store: Arc::new(store),
            prefix: Path::from(prefix),
            config: config.clone(),
            holder: holder.to_owned(),
        })
    }

    pub fn config(&self) -> &SharedConfig {
        &self.config
    }

    pub fn blob_key(&self, digest: &Digest) -> Path {
        self.key(&format!("blobs/sha256/{}", digest.hex()))
    }

    pub fn manifest_key(&self, digest: &Digest) -> Path {
        self.key(&format!("manifests/sha256/{}", digest.hex()))
    }

    /// The record of `kind` for `id` (any string: it is hashed into the name).
    pub fn record_key(&self, kind: &str, id: &str) -> Path {
        self.key(&format!(
            "records/{kind}/{}",
            hex::encode(Sha256::digest(id.as_bytes()))
        ))
    }

    fn lease_key(&self, digest: &Digest) -> Path {
        self.key(&format!("leases/sha256/{}", digest.hex()))
    }

    fn key(&self, rest: &str) -> Path {
        self.prefix
            .parts()
            .chain(Path::from(rest).parts())
            .collect()
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &Path) -> Result<bool, SharedError> {
        match self.timed(self.store.head(key)).await {
            Ok(_) => Ok(true),
            Err(SharedError::Store(object_store::Error::NotFound { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A small object, whole, if it exists and is at most `max` bytes (a larger one is refused
    /// before its body is read).
    pub async fn get_small(&self, key: &Path, max: u64) -> Result<Option<Fetched>, SharedError> {
        let got = match self.timed(self.store.get(key)).await {
            Ok(got) => got,
            Err(SharedError::Store(object_store::Error::NotFound { .. })) => return Ok(None),
            Err(e) => return Err(e),
        };
        if got.meta.size > max {
            return Err(SharedError::Refused {
                key: key.to_string(),
                what: format!("{} bytes, more than the {max} expected", got.meta.size),
            });
        }
        let content_type = got
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let mut bytes = Vec::new();
        let mut stream = got.into_stream();
        while let Some(chunk) = tokio::time::timeout(self.config.timeout, stream.next())
            .await
            .map_err(|_| SharedError::Timeout(self.config.timeout))?
        {
            let chunk = chunk?;
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(SharedError::Refused {
                    key: key.to_string(),
                    what: format!("more than the {max} bytes expected"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(Fetched {
            bytes: bytes.into(),
            content_type,
            version,
        }))
    }

    /// A blob's body as a stream, with its size, if it exists. The caller hashes it; each gap
    /// between chunks is bounded by the timeout.
    pub async fn get_stream(
        &self,
        key: &Path,
    ) -> Result<Option<(u64, BoxStream<'static, Result<Bytes, SharedError>>)>, SharedError> {
        let got = match self
            .timed(self.store.get_opts(key, GetOptions::default()))
            .await
        {
            Ok(got) => got,
            Err(SharedError::Store(object_store::Error::NotFound { .. })) => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = got.meta.size;
        let timeout = self.config.timeout;
        let stream = got.into_stream().map_err(SharedError::from);
        let stream = futures_util::stream::unfold(stream, move |mut s| async move {
            match tokio::time::timeout(timeout, s.next()).await {
                Ok(Some(item)) => Some((item, s)),
                Ok(None) => None,
                Err(_) => Some((Err(SharedError::Timeout(timeout)), s)),
            }
        });
        Ok(Some((size, stream.boxed())))
    }

    /// Creates `key` with `bytes` unless it exists. `Ok(false)`: it already did.
    pub async fn create(
        &self,
        key: &Path,
        bytes: Bytes,
        content_type: Option<&str>,
    ) -> Result<bool, SharedError> {
        let mut attributes = Attributes::new();
        if let Some(ct) = content_type {
            attributes.insert(Attribute::ContentType, ct.to_owned().into());
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..PutOptions::default()
        };
        match self
            .timed(self.store.put_opts(key, PutPayload::from(bytes), opts))
            .await
        {
            Ok(_) => Ok(true),
            Err(SharedError::Store(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            )) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces a record, if it is still at `version` (or creates it, with `None`). `Ok(false)`:
    /// another replica wrote it first.
    pub async fn replace(
        &self,
        key: &Path,
        bytes: Bytes,
        version: Option<UpdateVersion>,
    ) -> Result<bool, SharedError> {
        let Some(version) = version else {
            return self.create(key, bytes, None).await;
        };
        let opts = PutOptions {
            mode: PutMode::Update(version),
            ..PutOptions::default()
        };
        match self
            .timed(self.store.put_opts(key, PutPayload::from(bytes), opts))
            .await
        {
            Ok(_) => Ok(true),
            // Gone since it was read (collected): as good as replaced by someone else.
            Err(SharedError::Store(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. },
            )) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a held blob file, hashing it again as it goes: the object becomes visible only if
    /// the bytes read are `size` bytes that hash to `digest`. `Ok(false)`: it already existed.
    pub async fn upload_blob(
        &self,
        digest: &Digest,
        file: std::fs::File,
        path: PathBuf,
        size: u64,
    ) -> Result<bool, SharedError> {
        let key = self.blob_key(digest);
        let refused = |what: String| SharedError::Refused {
            key: key.to_string(),
            what,
        };
        if size <= SINGLE_PUT_MAX {
            let (bytes, (_, hasher, _)) = read_part(file, path, size).await?;
            if hasher.finish() != *digest || bytes.len() as u64 != size {
                return Err(refused(
                    "the held file no longer hashes to its digest".into(),
                ));
            }
            return self.create(&key, bytes, None).await;
        }
        // Parts cannot be created conditionally: a replica that finds the object already there
        // skips it, and two that race write the same verified bytes.
        if self.exists(&key).await? {
            return Ok(false);
        }
        let mut upload = self.timed(self.store.put_multipart(&key)).await?;
        // Parts go up a few at a time (stores take one connection's worth per part), read and
        // hashed in order; the upload is completed only once every part is up and the whole
        // file matched.
        let mut parts: VecDeque<tokio::task::JoinHandle<object_store::Result<()>>> =
            VecDeque::new();
        let mut reader = Some((file, Hasher::new(), 0u64));
        let result = async {
            loop {
                let (file, hasher, done) = reader.take().expect("reader returned each round");
                if done == size {
                    while let Some(part) = parts.pop_front() {
                        self.part_done(part).await?;
                    }
                    if hasher.finish() != *digest {
                        return Err(refused(
                            "the held file no longer hashes to its digest".into(),
                        ));
                    }
                    self.timed(upload.complete()).await?;
                    return Ok(true);
                }
                let want = (size - done).min(SINGLE_PUT_MAX);
                let path = path.clone();
                let (part, file, hasher) = tokio::task::spawn_blocking(move || {
                    read_chunk(file, hasher, want)
                        .map_err(|source| SharedError::File { path, source })
                })
                .await
                .map_err(|e| SharedError::Config(format!("reader task: {e}")))??;
                let n = part.len() as u64;
                if n != want {
                    return Err(refused(format!(
                        "the held file ended at {} bytes",
                        done + n
                    )));
                }
                if parts.len() >= PARTS_IN_FLIGHT {
                    let oldest = parts.pop_front().expect("parts in flight");
                    self.part_done(oldest).await?;
                }
                parts.push_back(tokio::spawn(upload.put_part(PutPayload::from(part))));
                reader = Some((file, hasher, done + n));
            }
        }
        .await;
        if result.is_err() {
            for part in parts {
                part.abort();
            }
            let _ = self.timed(upload.abort()).await;
        }
        result
    }

    /// Waits for one part of a multipart upload, within the timeout.
    async fn part_done(
        &self,
        part: tokio::task::JoinHandle<object_store::Result<()>>,
    ) -> Result<(), SharedError> {
        match tokio::time::timeout(self.config.timeout, part).await {
            Ok(Ok(done)) => done.map_err(SharedError::from),
            Ok(Err(e)) => Err(SharedError::Config(format!("part upload task: {e}"))),
            Err(_) => Err(SharedError::Timeout(self.config.timeout)),
        }
    }

    /// Claims the upstream fetch of `digest` for this replica, taking over a claim whose time
    /// ran out.
    pub async fn claim(&self, digest: &Digest) -> Result<Claim, SharedError> {
        let key = self.lease_key(digest);
        let until_ms = now_ms() + self.config.lease_ttl.as_millis() as u64;
        let body = |until_ms| {
            Bytes::from(
                serde_json::to_vec(&LeaseBody {
                    holder: self.holder.clone(),
                    until_ms,
                })
                .expect("a lease serializes"),
            )
        };
        if self.create(&key, body(until_ms), None).await? {
            return Ok(Claim::Mine(Lease { key }));
        }
        let Some(held) = self.get_small(&key, 4096).await? else {
            // Released in between: try once more next time round.
            return Ok(Claim::Held { until_ms: 0 });
        };
        let current: Option<LeaseBody> = serde_json::from_slice(&held.bytes).ok();
        match current {
            Some(lease) if lease.until_ms > now_ms() => Ok(Claim::Held {
                until_ms: lease.until_ms,
            }),
            // Expired or unreadable: take it over, unless another replica just did.
            _ => {
                if self
                    .replace(&key, body(until_ms), Some(held.version))
                    .await?
                {
                    Ok(Claim::Mine(Lease { key }))
                } else {
                    Ok(Claim::Held { until_ms: 0 })
                }
            }
        }
    }

    /// Whether the store honours `If-None-Match: *`: a second create of one key must fail.
    /// Garage 2.5, for one, overwrites: then leases and records are last-writer-wins.
    pub async fn honours_conditional_create(&self) -> Result<bool, SharedError> {
        let key = self.record_key("probe", &self.holder);
        let first = self.create(&key, Bytes::from_static(b"1"), None).await?;
        let second = self.create(&key, Bytes::from_static(b"2"), None).await?;
        self.delete(&key).await?;
        Ok(first && !second)
    }

    /// Gives a claim up: others waiting may fetch (or find the blob landed). A claim that ran
    /// out and was taken over is another replica's now, and stays.
    pub async fn release(&self, lease: Lease) -> Result<(), SharedError> {
        let Some(held) = self.get_small(&lease.key, 4096).await? else {
            return Ok(());
        };
        let mine = serde_json::from_slice::<LeaseBody>(&held.bytes)
            .is_ok_and(|body| body.holder == self.holder);
        if !mine {
            return Ok(());
        }
        self.delete(&lease.key).await
    }

    /// Deletes an object (one that failed its hash check, or garbage).
    pub async fn delete(&self, key: &Path) -> Result<(), SharedError> {
        match self.timed(self.store.delete(key)).await {
            Ok(()) | Err(SharedError::Store(object_store::Error::NotFound { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every object under `kind/` (e.g. `blobs`, `records/tags`): key and last-modified time
    /// (ms since the epoch).
    pub async fn list(&self, kind: &str) -> Result<Vec<(Path, u64)>, SharedError> {
        let prefix = self.key(kind);
        let mut listing = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        // Each page within the timeout, however long the whole listing takes.
        while let Some(meta) = tokio::time::timeout(self.config.timeout, listing.next())
            .await
            .map_err(|_| SharedError::Timeout(self.config.timeout))?
        {
            let meta = meta?;
            out.push((
                meta.location,
                meta.last_modified.timestamp_millis().max(0) as u64,
            ));
        }
        Ok(out)
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, SharedError> {
        match tokio::time::timeout(self.config.timeout, fut).await {
            Ok(r) => r.map_err(SharedError::from),
            Err(_) => Err(SharedError::Timeout(self.config.timeout)),
        }
    }
}

/// `s3://bucket/prefix` split into the bucket and the prefix.
fn split_url(url: &str) -> Result<(&str, &str), SharedError> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| SharedError::Config(format!("url {url:?} must start with s3://")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(SharedError::Config(format!("url {url:?} names no bucket")));
    }
    Ok((bucket, prefix.trim_matches('/')))
}

fn secret(path: &std::path::Path) -> Result<String, SharedError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| SharedError::Secret {
            path: path.to_owned(),
            source,
        })
}

type Read = (std::fs::File, Hasher, u64);

async fn read_part(
    file: std::fs::File,
    path: PathBuf,
    size: u64,
) -> Result<(Bytes, Read), SharedError> {
    tokio::task::spawn_blocking(move || {
        let (bytes, file, hasher) = read_chunk(file, Hasher::new(), size)
            .map_err(|source| SharedError::File { path, source })?;
        let n = bytes.len() as u64;
        Ok((bytes, (file, hasher, n)))
    })
    .await
    .map_err(|e| SharedError::Config(format!("reader task: {e}")))?
}

/// Up to `want` bytes from `file`, hashed on the way.
fn read_chunk(
    file: std::fs::File,
    mut hasher: Hasher,
    want: u64,
) -> std::io::Result<(Bytes, std::fs::File, Hasher)> {
    let mut buf = Vec::with_capacity(want as usize);
    let mut taken = file.take(want);
    taken.read_to_end(&mut buf)?;
    hasher.update(&buf);
    Ok((buf.into(), taken.into_inner(), hasher))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        assert_eq!(split_url("s3://b/p/q/").unwrap(), ("b", "p/q"));
        assert_eq!(split_url("s3://b").unwrap(), ("b", ""));
        assert!(split_url("https://b/p").is_err());
        assert!(split_url("s3:///p").is_err());
    }
}
