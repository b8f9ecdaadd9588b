//! Serving HTTPS with rustls: certificates from PEM files, optional client-certificate
//! verification (mutual TLS), and a hot swap of both without dropping connections.

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
    pub fn new(server: &ServerConfig) -> Result<Tls, String> {
        Ok(Tls {
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(server_config(server)?)),
        })
    }

    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// Re-reads the certificate, key and client CA; on any error the old ones stay.
    pub fn reload(&self, server: &ServerConfig) -> Result<(), String> {
        self.acceptor
            .store(Arc::new(TlsAcceptor::from(server_config(server)?)));
        Ok(())
    }
}

/// A rustls server config from `[server] tls_cert`, `tls_key` and `client_ca`, offering
/// HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(server: &ServerConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let (Some(cert), Some(key)) = (&server.tls_cert, &server.tls_key) else {
        return Err("[server] tls_cert and tls_key are both needed for TLS".into());
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("[server] tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "[server] tls_cert {} holds no certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("[server] tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &server.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("[server] client_ca {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("[server] client_ca {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("[server] client_ca {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("[server] client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("[server] tls_cert/tls_key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
