//! The one TLS stack: rustls with the aws-lc-rs provider, public roots plus an optional CA file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject, CertificateDer};

/// A `ca_file` that cannot be trusted as given, or a TLS stack that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("ca_file {}: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("ca_file {}: {source}", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("ca_file {} holds no certificate", path.display())]
    Empty { path: PathBuf },
    #[error("TLS: {0}")]
    Rustls(#[source] rustls::Error),
}

/// A client config trusting the public web roots and, when given, the certificates in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, CaFileError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = |source| CaFileError::Pem {
            path: path.to_owned(),
            source,
        };
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(pem)? {
            roots
                .add(cert.map_err(pem)?)
                .map_err(|source| CaFileError::Certificate {
                    path: path.to_owned(),
                    source,
                })?;
            n += 1;
        }
        if n == 0 {
            return Err(CaFileError::Empty {
                path: path.to_owned(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CaFileError::Rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}
