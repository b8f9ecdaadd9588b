//! portcullis: a pull-through OCI registry proxy that verifies on fetch.
//!
//! This crate is the HTTP side. It speaks the pull half of the OCI distribution API to clients
//! and to upstream registries, hash-checks every manifest and blob as it flows, and keeps what
//! passed in the content store (`portcullis-cache`). Trust decisions come from
//! `portcullis-policy`.
//!
//! # Layout
//! A pull goes down one pipeline, and every other path (`verify`, `mirror`, `export`, `import`)
//! joins it at the gate:
//!
//! ```text
//! server (listeners, TLS) -> stack (layers) -> handlers -> gate -> content -> upstream / cache
//!                              verify, pin, airgap ---^        ^--- oci (strict reader)
//! ```
//! - [`server`], [`tls`], [`conns`]: the listeners, HTTPS, connection limits; [`stack`]: the request path as ordered tower
//!   layers (log, configuration snapshot, probes, metrics, headers, authentication, route and
//!   admit); [`auth`]: clients' credentials; [`route`]: request paths, name validation, routing to upstreams.
//! - [`handlers`]: the registry routes, thin: parse, call the gate and content, map errors.
//! - [`gate`]: the verification gate: evidence from every source, the verdict (`verify_base`
//!   included), blob gates, verification material admitted for a subject that passed.
//! - [`content`]: manifests, tags (TTL, revalidation, stale, offline), referrer lists and small
//!   evidence blobs, each with how it was obtained; [`oci`]: the strict reader for manifests,
//!   indexes and cosign material.
//! - [`fetch`] and [`body`]: single-flight blob fetches and the verify-first (or streaming) body;
//!   [`coalesce`]: single flight for verdicts and evidence blobs.
//! - [`upstream`]: the upstream client (rustls, token flow, redirects, timeouts).
//! - [`error`]: the one place errors become OCI error JSON; [`config`]: the TOML configuration.
//! - [`reload`]: SIGHUP and file changes swap in a new configuration; [`metrics`]: Prometheus.
//! - [`airgap`]: import, export and mirror of OCI layouts; `cache ls` and `cache gc`.
//! - [`verify`]: `portcullis verify`, the policy's verdict on one image, with reasons.
//! - [`attest`]: signed verification summaries (SLSA VSAs) of what passed, served in the
//!   referrers and under the cosign `.att` tag.
//! - [`pin`]: `portcullis pin`, reviewed digests recorded in a pins file, and `pin --check`.

pub mod airgap;
pub mod app;
pub mod attest;
pub mod auth;
pub mod body;
pub mod coalesce;
pub mod config;
pub mod conns;
pub mod content;
pub mod error;
pub mod fetch;
pub mod gate;
pub mod handlers;
pub mod linger;
pub mod metrics;
pub mod oci;
pub mod pin;
pub mod reload;
pub mod route;
pub mod server;
pub mod shared;
pub mod stack;
pub mod tls;
pub mod upstream;
pub mod verify;

pub use app::App;
pub use config::Config;
