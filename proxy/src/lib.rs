//! portcullis: a pull-through OCI registry proxy that verifies on fetch.
//!
//! This crate is the HTTP side. It speaks the pull half of the OCI distribution API to clients
//! and to upstream registries, hash-checks every manifest and blob as it flows, and keeps what
//! passed in the content store (`portcullis-cache`). Trust decisions come from
//! `portcullis-policy`.
//!
//! # Layout
//! - [`config`]: the TOML configuration and the embedded default.
//! - [`auth`]: optional client authentication and per-user pull grants.
//! - [`route`]: request paths, name validation, and routing to upstreams.
//! - [`upstream`]: the upstream client (rustls, token flow, redirects, timeouts).
//! - [`handlers`]: the registry routes.
//! - [`oci`]: the strict reader for manifests, indexes and cosign verification material.
//! - [`fetch`] and [`body`]: single-flight blob fetches and the verify-while-streaming body.
//! - [`error`]: the one place errors become OCI error JSON.
//! - [`server`], [`tls`] and [`log`]: the listeners, the request stack, HTTPS and the request log.
//! - [`reload`]: SIGHUP and file changes swap in a new configuration; [`metrics`]: Prometheus.
//! - [`airgap`]: import, export and mirror of OCI layouts; `cache ls` and `cache gc`.
//! - [`verify`]: `portcullis verify`, the policy's verdict on one image, with reasons.

pub mod airgap;
pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod fetch;
pub mod handlers;
pub mod linger;
pub mod log;
pub mod metrics;
pub mod oci;
pub mod reload;
pub mod route;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod verify;

pub use app::App;
pub use config::Config;
