//! Crossing an air gap: OCI image layouts in and out, verified on arrival.
//!
//! - [`layout`]: reading and writing OCI image layouts (directories or tars).
//! - [`import`]: `portcullis import`, the same gate as a pull, for content that came on a disk.
//! - [`export`]: `portcullis export`, images and their signatures from the cache.
//! - [`mirror`]: `portcullis mirror`, pull and verify a list, then export it.
//! - [`admin`]: `portcullis cache ls` and `cache gc`.

pub mod admin;
pub mod export;
pub mod import;
pub mod layout;
pub mod mirror;
