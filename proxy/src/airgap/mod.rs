//! Crossing an air gap: OCI image layouts in and out, verified on arrival.
//!
//! - [`layout`]: reading and writing OCI image layouts (directories or tars).
//! - [`import`]: `portcullis import`, the same gate as a pull, for content that came on a disk.
//! - [`export`]: `portcullis export`, images and their signatures from the cache.
//! - [`mirror`]: `portcullis mirror`, pull and verify a list, then export it.
//! - [`admin`]: `portcullis cache ls` and `cache gc`.
//!
//! Each command fails with an [`AirgapError`]; an image that is rejected or denied is no
//! failure of the command but a line of its report, with the reason.

pub mod admin;
pub mod export;
pub mod import;
pub mod layout;
pub mod mirror;

use portcullis_cache::{Digest, DigestError};

use crate::error::ProxyError;
use crate::oci::cosign::{Material, MaterialError};
use layout::LayoutError;

/// Why an air-gap command, or one image of it, could not be carried over.
#[derive(Debug, thiserror::Error)]
pub enum AirgapError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The cache cannot be read or written.
    #[error(transparent)]
    Cache(#[from] portcullis_cache::Error),
    /// Routing, the upstream, the content layer or the gate (including a denial by the gate).
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The policy's reason: a name refused, or an image denied.
    #[error("{0}")]
    Denied(String),
    #[error("{name}:{tag} is not held in the cache; pull it first")]
    TagNotHeld { name: String, tag: String },
    #[error("manifest {0} is not held; pull the image fully first")]
    ManifestNotHeld(Digest),
    #[error("blob {blob} of {manifest} is not held; pull the image fully first")]
    BlobNotHeld { blob: Digest, manifest: Digest },
    #[error("manifest {digest}: {source}")]
    Manifest {
        digest: Digest,
        #[source]
        source: crate::oci::Invalid,
    },
    #[error("{what}: blob {digest} is not {size} bytes")]
    EvidenceSize {
        what: String,
        digest: Digest,
        size: u64,
    },
    #[error("{what}: blob {digest} is not {material:?}: {source}")]
    EvidenceMaterial {
        what: String,
        digest: Digest,
        material: Material,
        #[source]
        source: MaterialError,
    },
    #[error("blob {digest}: {source}")]
    Commit {
        digest: Digest,
        #[source]
        source: portcullis_cache::Error,
    },
    #[error("blob {0}: the fetch ended without a result")]
    FetchVanished(Digest),
    #[error("bad tag glob {glob:?}: {source}")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("{upstream} answered {status} for the tags of {name}")]
    TagList {
        upstream: String,
        status: http::StatusCode,
        name: String,
    },
    #[error("tag list: {0}")]
    TagListJson(#[source] serde_json::Error),
    #[error("no tag of {name} matches {glob:?}")]
    NoTagMatches { name: String, glob: String },
    #[error("referrers index: {0}")]
    ReferrersIndex(#[source] serde_json::Error),
}
