//! Test harness for portcullis: runs the real components that the proxy talks to, on loopback.
//!
//! Integration tests and benchmarks use it to start an upstream registry (distribution 2.8,
//! `docker-registry`), the portcullis binary itself, and a containerd daemon as a real client,
//! and to build OCI fixture images with `umoci` and move them with `skopeo`. Everything binds
//! 127.0.0.1 on free ports, lives under a caller-given work dir (or `/tmp`), and every process
//! started here is killed when its handle drops.
//!
//! The process-level API is blocking std code (no runtime needed, safe to call from inside a
//! `#[tokio::test]`); only [`http`] is async.
//!
//! # Layout
//! - `tools`: tool check, free ports, hashing.
//! - `process`: a child process with a log file and a readiness wait (private).
//! - `registry`: [`Registry`], the upstream (or distribution's own proxy mode, for benchmarks).
//! - `fixtures`: [`fixtures`] builds the images once per process; [`push`], [`skopeo_copy`].
//! - `proxy`: [`Proxy`], the portcullis binary under test.
//! - `containerd`: [`Containerd`] and `hosts.toml`.
//! - `fault`: [`FaultServer`], an in-process upstream that fails on purpose.
//! - [`http`]: a small async plain-HTTP client for asserting on responses.
//! - [`cosign`]: real offline cosign fixtures: key pairs, a test Sigstore (CA, log key,
//!   `trusted_root.json`, leaves, SET bundles) and [`push_signature`] for `sha256-<hex>.sig`.

mod containerd;
pub mod cosign;
mod fault;
mod fixtures;
pub mod http;
mod process;
mod proxy;
mod registry;
mod tools;

pub use containerd::{write_hosts_toml, Containerd};
pub use cosign::{push_signature, simple_signing_payload, CosignKey, Leaf, SigLayer, TestSigstore};
pub use fault::{Fault, FaultServer};
pub use fixtures::{
    fixtures, manifest_digest_in_registry, push, skopeo_copy, skopeo_copy_all, Fixtures, Image,
};
pub use proxy::{config_for, Proxy};
pub use registry::Registry;
pub use tools::{dir_files, free_port, require_tools, sha256_hex, tempdir};
