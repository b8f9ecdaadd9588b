//! The content store of portcullis.
//!
//! It holds content that has already been proven to hash to its digest: manifests, blobs, tag
//! mappings with their fetch time, and the size and access bookkeeping that eviction needs. It
//! knows nothing of HTTP or of trust: callers hand it bytes and a digest, and it refuses to store
//! anything that does not hash to that digest.
//!
//! # Layout
//! - [`Digest`]: the parsed `sha256:<hex>` newtype, and [`Hasher`] to check bytes against it.
//! - [`Store`]: RocksDB for records (manifests, tags, links, sizes, access times), plain files for
//!   blob bodies (written to `tmp/`, fsynced, renamed into `blobs/` only once verified), and a moka
//!   cache for the hot set. See `docs/decisions/0001-blob-storage.md`.
//! - [`BlobWriter`]: the streaming write side of a blob.
//! - eviction: least recently used first, never a blob that a kept manifest references.
//! - [`shared`]: the bucket a fleet of replicas shares below their own stores.

mod blob;
mod digest;
mod evict;
mod keys;
pub mod shared;
mod store;

pub use blob::{Blob, BlobWriter};
pub use digest::{Digest, DigestError, Hasher};
pub use evict::Evicted;
pub use store::{now_ms, Error, Manifest, Store, StoreConfig, TagRecord};
