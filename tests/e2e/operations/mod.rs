//! Operations, end to end with real clients on loopback: the listener over TLS (a chain from an
//! intermediate CA minted with the openssl CLI) pulled by skopeo, containerd, podman, curl over
//! HTTP/2 and HTTP/1.1, and the Docker engine as a `registry-mirrors` client; client certificates
//! (mTLS); certificate and configuration hot reload (SIGHUP and file changes) without dropping
//! connections, and a SIGTERM drain over TLS; Prometheus metrics on their own listener;
//! `/healthz` and `/readyz`; JSON logs.

mod cert_reload;
mod clients;
mod config_reload;
mod health;
mod logs;
mod metrics;
mod mtls;
mod pki;
mod prometheus;
mod shutdown;
mod support;
mod tls;
