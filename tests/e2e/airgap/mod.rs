//! Air-gapped operation, end to end: `portcullis mirror` and `export` on the connected side
//! write an OCI layout (or a tar of one) holding images and their cosign signatures;
//! `portcullis import` verifies each image against the policy on arrival; `serve --offline` (or
//! `[server] offline = true`) then serves skopeo and containerd from the cache alone. Every
//! offline instance's only upstream is a counting fault server, so any connection is caught.
//! Tampered transfers (a flipped byte, a swapped or missing signature, a cut tar), a layout written
//! by skopeo, a `kill -9` mid-import, re-import and `cache ls`/`cache gc` are covered too.

mod bundles;
mod cache;
mod exit;
mod export;
mod foreign_layout;
mod interrupted;
mod layout;
mod offline;
mod roundtrip;
mod run;
mod support;
mod tampering;
