//! Serving HTTPS with rustls: certificates from PEM files, optional client-certificate
//! verification (mutual TLS), and a hot swap of both without dropping connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ServerConfig;

/// The acceptor in force; replaced on reload, while connections already accepted keep theirs.
pub struct Tls {
    acceptor: ArcSwap<TlsAcceptor>,
}

impl Tls {
    pub fn new(server: &ServerConfig) -> Result<Tls, TlsError> {
        Ok(Tls {
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(server_config(server)?)),
        })
    }

    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// Re-reads the certificate, key and client CA; on any error the old ones stay.
    pub fn reload(&self, server: &ServerConfig) -> Result<(), TlsError> {
        self.acceptor
            .store(Arc::new(TlsAcceptor::from(server_config(server)?)));
        Ok(())
    }
}

/// Certificates, a key or a client CA that cannot be served with.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[server] tls_cert and tls_key are both needed for TLS")]
    Incomplete,
    /// `file` is `tls_cert`, `tls_key` or `client_ca`.
    #[error("[server] {file} {}: {source}", path.display())]
    Pem {
        file: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("[server] tls_cert {} holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("[server] client_ca {}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("[server] client_ca {}: {source}", path.display())]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("[server] tls_cert/tls_key: {0}")]
    CertificateAndKey(#[source] rustls::Error),
    #[error("TLS: {0}")]
    Rustls(#[source] rustls::Error),
}

/// A rustls server config from `[server] tls_cert`, `tls_key` and `client_ca`, offering
/// HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(server: &ServerConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) else {
        return Err(TlsError::Incomplete);
    };
    let pem = |file: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Pem { file, path, source }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(pem("tls_cert", cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.clone() });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem("tls_key", key))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Rustls)?;
    let builder = match &server.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(pem("client_ca", ca))? {
                roots
                    .add(c.map_err(pem("client_ca", ca))?)
                    .map_err(|source| TlsError::ClientCa {
                        path: ca.clone(),
                        source,
                    })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::CertificateAndKey)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
