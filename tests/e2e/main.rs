//! portcullis end to end: the binary under test against real peers on loopback (distribution
//! 2.8 as the upstream, skopeo, containerd, podman, Docker, curl, openssl), driven through
//! `portcullis-testkit`. One test binary with a module per area, so that the workspace links
//! one executable for all of them rather than one per file; run one area with
//! `cargo nextest run -p portcullis --test e2e signatures::` (or `airgap::`, `operations::`).
//!
//! - [`pull_through`]: real clients pull every image kind; the upstream stopped, tampered,
//!   killed mid-blob.
//! - [`api_edges`]: the registry API's edges over raw HTTP.
//! - [`faults`]: upstream faults injected in process (rate limits, 5xx, stalls, cut bodies,
//!   bearer tokens).
//! - [`upstream_security`]: private upstreams behind basic auth and behind a private CA.
//! - [`client_auth`]: client credentials, grants, the Basic challenge.
//! - [`signatures`]: cosign signatures, keyed and keyless, decide what is served.
//! - [`provenance`]: Sigstore bundles, attestations with CEL conditions, base images.
//! - [`referrers`]: the OCI referrers API and referrer artifacts as verification material.
//! - [`gate_doors`]: the gate's side doors, tried as an attacker with push access would.
//! - [`attest`]: portcullis' signed verification summaries, checked by sigstore-js and as cosign
//!   checks a keyed attestation, and the admission-controller examples that read them.
//! - [`pins`]: reviewed pins for unsigned images, `portcullis pin`, moved and immutable tags.
//! - [`shared_tier`]: replicas sharing one bucket (moto): once across the fleet, a tampered or
//!   stopped bucket, a replica killed mid-upload.
//! - [`airgap`]: mirror, export, import and offline serving.
//! - [`operations`]: TLS and mTLS, hot reload, metrics, health, logs, shutdown, and each
//!   shipped client config with the real client.
//! - [`config_examples`], [`deploy_examples`]: every shipped config and deployment example holds
//!   together.
//! - [`release`]: a release's blob signatures verify, and its image, signed with the release key,
//!   pulls through portcullis under a keyed rule.

mod airgap;
mod api_edges;
mod attest;
mod client_auth;
mod config_examples;
mod deploy_examples;
mod faults;
mod full_disk;
mod gate_doors;
mod hostile;
mod operations;
mod pins;
mod provenance;
mod pull_through;
mod referrers;
mod release;
mod shared_tier;
mod signatures;
mod upstream_security;
