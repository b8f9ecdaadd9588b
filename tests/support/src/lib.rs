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
//! - `proxy`: [`Proxy`], the portcullis binary under test; [`Proxy::reload`] (SIGHUP, and the
//!   wait for its outcome).
//! - [`config`]: typed configs, [`ConfigBuilder`] and [`Rule`], built from the binary's own serde
//!   types ([`portcullis::Config`]) and written with [`to_toml`].
//! - `containerd`: [`Containerd`] and `hosts.toml`.
//! - `fault`: [`FaultServer`], an in-process upstream that fails on purpose.
//! - `s3`: [`S3Server`], moto's S3 API (`moto_server`, from `scripts/setup --test`) with one
//!   bucket, for the shared cache tier; [`Proxy::start_with_env`] gives the proxy its
//!   credentials.
//! - [`http`]: a small async plain-HTTP client for asserting on responses.
//! - [`cosign`]: real offline cosign fixtures: key pairs, a test Sigstore (CA, log key,
//!   `trusted_root.json`, leaves, SET bundles) and [`push_signature`] for `sha256-<hex>.sig`.
//! - [`bundle`]: Sigstore bundles v0.3 ([`TestSigstore::message_bundle`],
//!   [`TestSigstore::dsse_bundle`]) with real Rekor v1/v2 entries, proofs, checkpoints, SETs and
//!   RFC 3161 timestamps, and negative fixtures ([`Tamper`]); built on [`tlog`] ([`TestLog`]),
//!   [`tsa`] ([`TestTsa`]) and [`intoto`] (statements, SLSA predicates, DSSE PAE).
//! - [`attestation`]: legacy cosign `.att` layers, [`push_attestation`], and their bundle v0.1.
//! - `der`, `rekor_body`, `signer`: DER writing, canonical Rekor entry bodies, and what a
//!   [`Signer`] contributes (private).
//! - [`referrers`]: [`push_referrer`], an OCI 1.1 artifact with a `subject` and the referrers
//!   tag (`sha256-<hex>`) that lists it.
//! - [`vsa`]: portcullis' verification summaries checked by other implementations: a key from
//!   the OpenSSL CLI, bundles by sigstore-js (npm), DSSE envelopes by Python's `cryptography`.

pub mod attestation;
pub mod bundle;
pub mod config;
mod containerd;
pub mod cosign;
mod der;
mod fault;
mod fixtures;
pub mod http;
pub mod intoto;
mod process;
mod proxy;
pub mod referrers;
mod registry;
mod rekor_body;
mod s3;
mod signer;
pub mod tlog;
mod tools;
pub mod tsa;
pub mod vsa;

pub use attestation::{attestation_bundle_v01, push_attestation, AttLayer};
pub use bundle::{BundleBuilder, LogEntry, Signer, Tamper};
pub use config::{
    key_authority, keyless_authority, to_toml, write_cli_config, ConfigBuilder, ProxyConfig, Rule,
};
pub use containerd::{write_hosts_toml, Containerd};
pub use cosign::{push_signature, simple_signing_payload, CosignKey, Leaf, SigLayer, TestSigstore};
pub use fault::{Fault, FaultServer};
pub use fixtures::{
    fixtures, manifest_digest_in_registry, push, skopeo_copy, skopeo_copy_all, Fixtures, Image,
};
pub use proxy::{reload_by_sighup, Proxy};
pub use referrers::push_referrer;
pub use registry::Registry;
pub use s3::S3Server;
pub use tlog::TestLog;
pub use tools::{dir_files, free_port, require_tools, sha256_hex, tempdir};
pub use tsa::TestTsa;
