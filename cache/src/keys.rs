//! RocksDB key layout. One keyspace, one prefix per record kind:
//! - `m/<digest>`: a manifest (header line + original bytes);
//! - `b/<digest>`: a blob's size (its body is a file);
//! - `a/<digest>`: last access, milliseconds since the epoch;
//! - `l/<repo>\0<digest>`: the repository `repo` was seen to hold `digest` upstream;
//! - `t/<repo>\0<tag>`: a tag mapping;
//! - `x/<namespace>/<key>`: opaque records of the caller's (verdicts, gates).

use crate::Digest;

pub const MANIFEST: &str = "m/";
pub const BLOB: &str = "b/";
pub const ACCESS: &str = "a/";
pub const META: &str = "x/";

pub fn manifest(d: &Digest) -> Vec<u8> {
    format!("{MANIFEST}{d}").into_bytes()
}

pub fn blob(d: &Digest) -> Vec<u8> {
    format!("{BLOB}{d}").into_bytes()
}

pub fn access(d: &Digest) -> Vec<u8> {
    format!("{ACCESS}{d}").into_bytes()
}

pub fn link(repo: &str, d: &Digest) -> Vec<u8> {
    format!("l/{repo}\0{d}").into_bytes()
}

pub fn tag(repo: &str, tag: &str) -> Vec<u8> {
    format!("t/{repo}\0{tag}").into_bytes()
}

/// The digest at the end of a `m/`, `b/` or `a/` key.
pub fn digest_of(key: &[u8], prefix: &str) -> Option<Digest> {
    std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

pub fn meta(namespace: &str, key: &str) -> Vec<u8> {
    format!("{META}{namespace}/{key}").into_bytes()
}
