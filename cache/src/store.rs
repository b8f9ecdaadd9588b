//! The store: records in RocksDB, blob bodies in files, the hot set in moka.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::blob::{Blob, BlobWriter};
use crate::{keys, Digest};

/// Blobs at most this large are also kept in memory once read.
const HOT_BLOB_MAX: u64 = 256 * 1024;

/// Where and how big.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    /// Evict least recently used content above this many bytes on disk.
    pub max_size: u64,
    /// Bytes of manifests and small blobs held in memory.
    pub hot_bytes: u64,
}

/// Failures of the store itself (disk, database), or content that does not hash to its digest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cache database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("cache file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("corrupt cache record {0}")]
    Corrupt(String),
}

/// A stored manifest: its original bytes, never re-serialised.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub bytes: Bytes,
    /// Digests this manifest references (config, layers, child manifests).
    pub refs: Vec<Digest>,
}

/// A tag mapping and when it was last confirmed upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagRecord {
    pub digest: String,
    pub media_type: String,
    pub fetched_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct ManifestHeader {
    media_type: String,
    refs: Vec<String>,
}

/// The content store. Cheap to share behind an `Arc`.
pub struct Store {
    pub(crate) db: DB,
    blob_dir: PathBuf,
    tmp_dir: PathBuf,
    pub(crate) hot: moka::sync::Cache<Digest, Bytes>,
    pub(crate) total: AtomicU64,
    pub(crate) max_size: u64,
    pub(crate) evicting: AtomicBool,
}

impl Store {
    /// Opens (or creates) the store under `cfg.dir`. Leftovers of interrupted writes are removed:
    /// they were never visible.
    pub fn open(cfg: &StoreConfig) -> Result<Arc<Store>, Error> {
        let blob_dir = cfg.dir.join("blobs").join("sha256");
        let tmp_dir = cfg.dir.join("tmp");
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
        }
        for d in [&blob_dir, &tmp_dir] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, cfg.dir.join("index"))?;
        let hot = moka::sync::Cache::builder()
            .max_capacity(cfg.hot_bytes)
            .weigher(|_: &Digest, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .build();
        let store = Store {
            db,
            blob_dir,
            tmp_dir,
            hot,
            total: AtomicU64::new(0),
            max_size: cfg.max_size,
            evicting: AtomicBool::new(false),
        };
        store.adopt_and_count()?;
        Ok(Arc::new(store))
    }

    /// Bytes of content held on disk.
    pub fn size(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Stores a manifest after checking that `bytes` hash to `digest`.
    pub fn put_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        bytes: &Bytes,
        refs: &[Digest],
    ) -> Result<(), Error> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let key = keys::manifest(digest);
        let fresh = self.db.get_pinned(&key)?.is_none();
        let header = ManifestHeader {
            media_type: media_type.to_owned(),
            refs: refs.iter().map(ToString::to_string).collect(),
        };
        let mut value = serde_json::to_vec(&header).expect("header serialises");
        value.push(b'\n');
        value.extend_from_slice(bytes);
        self.db.put(key, value)?;
        if fresh {
            self.total.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        self.touch(digest);
        Ok(())
    }

    /// A stored manifest, if held. Counts as an access.
    pub fn manifest(&self, digest: &Digest) -> Result<Option<Manifest>, Error> {
        let found = self.read_manifest(digest)?;
        if found.is_some() {
            self.touch(digest);
        }
        Ok(found)
    }

    /// A stored manifest, without recording an access (for bookkeeping).
    pub(crate) fn read_manifest(&self, digest: &Digest) -> Result<Option<Manifest>, Error> {
        let Some(raw) = self.db.get_pinned(keys::manifest(digest))? else {
            return Ok(None);
        };
        let corrupt = || Error::Corrupt(format!("manifest {digest}"));
        let nl = raw.iter().position(|b| *b == b'\n').ok_or_else(corrupt)?;
        let header: ManifestHeader = serde_json::from_slice(&raw[..nl]).map_err(|_| corrupt())?;
        let bytes = Bytes::copy_from_slice(&raw[nl + 1..]);
        let refs = header
            .refs
            .iter()
            .map(|r| r.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt())?;
        Ok(Some(Manifest {
            media_type: header.media_type,
            bytes,
            refs,
        }))
    }

    /// Records that `repo` upstream was seen to hold `digest`.
    pub fn link(&self, repo: &str, digest: &Digest) -> Result<(), Error> {
        Ok(self.db.put(keys::link(repo, digest), [])?)
    }

    /// Whether any repository under `registry` holds anything (one seek).
    pub fn holds_registry(&self, registry: &str) -> Result<bool, Error> {
        let prefix = format!("l/{registry}/").into_bytes();
        let mode = IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        match self.db.iterator(mode).next() {
            Some(item) => Ok(item?.0.starts_with(&prefix)),
            None => Ok(false),
        }
    }

    pub fn is_linked(&self, repo: &str, digest: &Digest) -> Result<bool, Error> {
        Ok(self.db.get_pinned(keys::link(repo, digest))?.is_some())
    }

    pub fn put_tag(&self, repo: &str, tag: &str, record: &TagRecord) -> Result<(), Error> {
        let value = serde_json::to_vec(record).expect("tag record serialises");
        Ok(self.db.put(keys::tag(repo, tag), value)?)
    }

    /// Forgets a tag mapping (what it pointed at stays, until eviction).
    pub fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), Error> {
        Ok(self.db.delete(keys::tag(repo, tag))?)
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Result<Option<TagRecord>, Error> {
        let Some(raw) = self.db.get_pinned(keys::tag(repo, tag))? else {
            return Ok(None);
        };
        serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|_| Error::Corrupt(format!("tag {repo}:{tag}")))
    }

    /// Stores an opaque record under `namespace`/`key` (the caller's own bookkeeping, such as
    /// verdicts). The store does not interpret it, but counts its bytes towards `max_size`:
    /// records are content too, and clients can make them.
    pub fn put_meta(&self, namespace: &str, key: &str, value: &[u8]) -> Result<(), Error> {
        let k = keys::meta(namespace, key);
        let old = self.db.get_pinned(&k)?.map(|v| record_bytes(&k, v.len()));
        self.db.put(&k, value)?;
        self.total
            .fetch_add(record_bytes(&k, value.len()), Ordering::Relaxed);
        if let Some(old) = old {
            self.total.fetch_sub(old, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn meta(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get(keys::meta(namespace, key))?)
    }

    pub fn delete_meta(&self, namespace: &str, key: &str) -> Result<(), Error> {
        let k = keys::meta(namespace, key);
        if let Some(old) = self.db.get_pinned(&k)?.map(|v| record_bytes(&k, v.len())) {
            self.db.delete(&k)?;
            self.total.fetch_sub(old, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Deletes the records of `namespace` whose key `keep` refuses (records of a policy no longer
    /// in force, say); how many went.
    pub fn retain_meta(&self, namespace: &str, keep: impl Fn(&str) -> bool) -> Result<u64, Error> {
        let prefix = keys::meta(namespace, "");
        let mode = IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        let mut gone = 0;
        for item in self.db.iterator(mode) {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if !keep(&String::from_utf8_lossy(rest)) {
                self.db.delete(&k)?;
                self.total
                    .fetch_sub(record_bytes(&k, v.len()), Ordering::Relaxed);
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// Every tag mapping held: `(repository, tag key, record)`.
    pub fn tags(&self) -> Result<Vec<(String, String, TagRecord)>, Error> {
        let mut out = Vec::new();
        let prefix = b"t/";
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator(mode) {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(prefix) else {
                break;
            };
            let text = String::from_utf8_lossy(rest);
            let Some((repo, tag)) = text.split_once('\0') else {
                continue;
            };
            if let Ok(rec) = serde_json::from_slice(&v) {
                out.push((repo.to_owned(), tag.to_owned(), rec));
            }
        }
        Ok(out)
    }

    /// Last access of `digest`, milliseconds since the epoch (0 if never recorded).
    pub fn accessed_ms(&self, digest: &Digest) -> u64 {
        self.last_access(digest)
    }

    /// Starts writing a blob. Nothing is visible until [`BlobWriter::commit`] has checked the
    /// digest; a writer dropped before that leaves nothing behind.
    pub fn blob_writer(
        self: &Arc<Self>,
        digest: &Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobWriter, Error> {
        BlobWriter::create(Arc::clone(self), digest.clone(), expected_size)
    }

    /// A stored blob, if held: from memory when small and hot, else an open file.
    pub fn blob(&self, digest: &Digest) -> Result<Option<Blob>, Error> {
        if let Some(bytes) = self.hot.get(digest) {
            self.touch(digest);
            return Ok(Some(Blob::Memory(bytes)));
        }
        let Some(raw) = self.db.get_pinned(keys::blob(digest))? else {
            return Ok(None);
        };
        let size = decode_u64(&raw).ok_or_else(|| Error::Corrupt(format!("blob {digest}")))?;
        let path = self.blob_path(digest);
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        self.touch(digest);
        if size <= HOT_BLOB_MAX {
            let bytes = Bytes::from(fs::read(&path).map_err(io_err(&path))?);
            if bytes.len() as u64 == size {
                self.hot.insert(digest.clone(), bytes.clone());
                return Ok(Some(Blob::Memory(bytes)));
            }
        }
        Ok(Some(Blob::File { file, size }))
    }

    /// Whether a blob is held, without opening it.
    pub fn has_blob(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        Ok(self
            .db
            .get_pinned(keys::blob(digest))?
            .and_then(|raw| decode_u64(&raw)))
    }

    /// Where a committed blob lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir.join(digest.hex())
    }

    pub(crate) fn tmp_path(&self, digest: &Digest) -> PathBuf {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir
            .join(format!("{}.{}.{n}", digest.hex(), std::process::id()))
    }

    /// Makes a verified blob file visible: record first written after the file is in place.
    pub(crate) fn commit_blob(&self, digest: &Digest, tmp: &Path, size: u64) -> Result<(), Error> {
        let dest = self.blob_path(digest);
        fs::rename(tmp, &dest).map_err(io_err(&dest))?;
        let fresh = self.db.get_pinned(keys::blob(digest))?.is_none();
        self.db.put(keys::blob(digest), size.to_be_bytes())?;
        if fresh {
            self.total.fetch_add(size, Ordering::Relaxed);
        }
        self.touch(digest);
        Ok(())
    }

    /// Records an access for LRU. Losing these in a crash is harmless, so they skip the WAL.
    pub fn touch(&self, digest: &Digest) {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        let _ = self
            .db
            .put_opt(keys::access(digest), now_ms().to_be_bytes(), &opts);
    }

    pub(crate) fn last_access(&self, digest: &Digest) -> u64 {
        self.db
            .get_pinned(keys::access(digest))
            .ok()
            .flatten()
            .and_then(|raw| decode_u64(&raw))
            .unwrap_or(0)
    }

    pub(crate) fn delete(&self, digest: &Digest, is_manifest: bool) -> Result<u64, Error> {
        let (key, size) = if is_manifest {
            let size = self
                .read_manifest(digest)?
                .map_or(0, |m| m.bytes.len() as u64);
            (keys::manifest(digest), size)
        } else {
            (keys::blob(digest), self.has_blob(digest)?.unwrap_or(0))
        };
        let mut batch = WriteBatch::default();
        batch.delete(key);
        batch.delete(keys::access(digest));
        self.db.write(batch)?;
        self.hot.invalidate(digest);
        if !is_manifest {
            let path = self.blob_path(digest);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                _ => {}
            }
        }
        self.total.fetch_sub(size, Ordering::Relaxed);
        Ok(size)
    }

    /// Counts what is held, and adopts blob files whose record was lost in a crash after the
    /// rename (a file only reaches `blobs/` after its digest was checked).
    fn adopt_and_count(&self) -> Result<(), Error> {
        let mut total = 0u64;
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, v) = item?;
            if k.starts_with(keys::MANIFEST.as_bytes()) {
                let nl = v.iter().position(|b| *b == b'\n').unwrap_or(0);
                total += (v.len() - nl).saturating_sub(1) as u64;
            } else if k.starts_with(keys::BLOB.as_bytes()) {
                total += decode_u64(&v).unwrap_or(0);
            } else if k.starts_with(keys::META.as_bytes()) {
                total += record_bytes(&k, v.len());
            }
        }
        let entries = fs::read_dir(&self.blob_dir).map_err(io_err(&self.blob_dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Ok(digest) = format!("sha256:{}", name.to_string_lossy()).parse::<Digest>() else {
                continue;
            };
            if self.db.get_pinned(keys::blob(&digest))?.is_none() {
                let size = entry.metadata().map_err(io_err(&entry.path()))?.len();
                self.db.put(keys::blob(&digest), size.to_be_bytes())?;
                total += size;
            }
        }
        self.total.store(total, Ordering::Relaxed);
        Ok(())
    }
}

/// What a record counts towards `max_size`: its key and value.
fn record_bytes(key: &[u8], value_len: usize) -> u64 {
    (key.len() + value_len) as u64
}

pub(crate) fn io_err(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn decode_u64(raw: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

/// Milliseconds since the epoch, the clock tag mappings and access times use.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}
