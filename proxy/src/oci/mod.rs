//! OCI and cosign documents, read the way the strictest client reads them.
//!
//! Everything portcullis takes from an upstream or a layout passes through here before it is
//! cached, decided on or served: [`strict`] refuses JSON that Go's `encoding/json` could read
//! differently, [`document`] reads manifests and indexes into `oci-spec`'s types and refuses
//! shape and media-type ambiguity, and [`cosign`] says which manifests carry only verification
//! material and checks that each of their blobs is what it claims.

pub mod cosign;
pub mod document;
pub mod strict;

pub use document::{Document, Invalid, Reference};
