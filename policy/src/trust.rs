//! Trust material, loaded once from local files: cosign public keys and Sigstore trusted roots.
//! Nothing here ever touches the network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};
use sigstore::crypto::CosignVerificationKey;
use sigstore::errors::SigstoreError;
use sigstore::trust::sigstore::SigstoreTrustRoot;
use sigstore::trust::TrustRoot as _;

use sigstore_verify::types::DerPublicKey;

use crate::bundle::{KeyedVerifier, RootVerifier, TrustedRootError};
use crate::config::TrustConfig;
use crate::pins::{PinSet, PinsError};

/// The public Sigstore instance's `trusted_root.json`, bundled (see `policy/trust/README.md`).
pub const PUBLIC_GOOD: &[u8] = include_bytes!("../trust/public-good-trusted_root.json");
/// How a config names the bundled root.
pub const BUILTIN_PUBLIC_GOOD: &str = "builtin:public-good";

/// Trust material that cannot be loaded. `table` names the entry, as `[[trust.key]] "name"`.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{table}: cannot read {}: {source}", path.display())]
    Read {
        table: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("[[trust.key]] {name:?}: {} is not a public key cosign can use: {source}", path.display())]
    Key {
        name: String,
        path: PathBuf,
        #[source]
        source: SigstoreError,
    },
    #[error("[[trust.key]] {name:?}: {} is not a PEM public key", path.display())]
    KeyPem { name: String, path: PathBuf },
    #[error("{table} appears twice")]
    Twice { table: String },
    #[error("{table}: {source}")]
    Root {
        table: String,
        #[source]
        source: RootError,
    },
    #[error("{table}: {}: {source}", path.display())]
    Pins {
        table: String,
        path: PathBuf,
        #[source]
        source: PinsError,
    },
}

/// A `trusted_root.json` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("not a Sigstore trusted_root.json: {0}")]
    NotTrustedRoot(#[source] SigstoreError),
    #[error("its Fulcio certificates: {0}")]
    Fulcio(#[source] SigstoreError),
    #[error("its Rekor keys: {0}")]
    RekorKeys(#[source] SigstoreError),
    #[error("Rekor key {id}: {source}")]
    RekorKey {
        id: String,
        #[source]
        source: SigstoreError,
    },
    #[error("for bundles: {0}")]
    Bundles(#[source] TrustedRootError),
}

/// One trusted root: Fulcio CA certificates and Rekor log keys by log ID (hex) for legacy
/// signatures, and the whole root (TSAs included) for bundles.
pub struct Root {
    pub cas: Vec<CertificateDer<'static>>,
    pub rekor: BTreeMap<String, CosignVerificationKey>,
    pub bundles: RootVerifier,
}

/// Keys and roots by name, with a fingerprint of everything loaded.
pub struct TrustStore {
    pub keys: BTreeMap<String, CosignVerificationKey>,
    /// The same keys as DER SubjectPublicKeyInfo, for bundles.
    pub key_der: BTreeMap<String, DerPublicKey>,
    pub keyed: KeyedVerifier,
    pub roots: BTreeMap<String, Root>,
    pub pins: BTreeMap<String, PinSet>,
    /// sha256 over the names and bytes of every key, root and pins file.
    pub fingerprint: String,
}

impl TrustStore {
    pub fn load(cfg: &TrustConfig) -> Result<TrustStore, TrustError> {
        let mut hash = Sha256::new();
        let mut keys = BTreeMap::new();
        let mut key_der = BTreeMap::new();
        for k in &cfg.keys {
            let table = format!("[[trust.key]] {:?}", k.name);
            let bytes = read(&k.path, &table)?;
            let key =
                CosignVerificationKey::try_from_pem(&bytes).map_err(|source| TrustError::Key {
                    name: k.name.clone(),
                    path: k.path.clone(),
                    source,
                })?;
            let der = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|pem| DerPublicKey::from_pem(pem).ok())
                .ok_or_else(|| TrustError::KeyPem {
                    name: k.name.clone(),
                    path: k.path.clone(),
                })?;
            key_der.insert(k.name.clone(), der);
            hash.update(format!("key\0{}\0", k.name));
            hash.update(&bytes);
            if keys.insert(k.name.clone(), key).is_some() {
                return Err(TrustError::Twice { table });
            }
        }
        let mut roots = BTreeMap::new();
        for r in &cfg.roots {
            let table = format!("[[trust.root]] {:?}", r.name);
            let bytes = if r.trusted_root.as_os_str() == BUILTIN_PUBLIC_GOOD {
                PUBLIC_GOOD.to_vec()
            } else {
                read(&r.trusted_root, &table)?
            };
            let root = match parse_root(&bytes) {
                Ok(root) => root,
                Err(source) => return Err(TrustError::Root { table, source }),
            };
            hash.update(format!("root\0{}\0", r.name));
            hash.update(&bytes);
            if roots.insert(r.name.clone(), root).is_some() {
                return Err(TrustError::Twice { table });
            }
        }
        let mut pins = BTreeMap::new();
        for p in &cfg.pins {
            let table = format!("[[trust.pins]] {:?}", p.name);
            let (set, bytes) = match PinSet::load(&p.path) {
                Ok(loaded) => loaded.unwrap_or_default(),
                Err(source) => {
                    return Err(TrustError::Pins {
                        table,
                        path: p.path.clone(),
                        source,
                    })
                }
            };
            // A pin added or removed changes every verdict it could touch: it is trust material.
            hash.update(format!("pins\0{}\0", p.name));
            hash.update(&bytes);
            if pins.insert(p.name.clone(), set).is_some() {
                return Err(TrustError::Twice { table });
            }
        }
        Ok(TrustStore {
            keys,
            key_der,
            keyed: KeyedVerifier::default(),
            roots,
            pins,
            fingerprint: hex::encode(hash.finalize()),
        })
    }
}

fn read(path: &Path, table: &str) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|source| TrustError::Read {
        table: table.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// Parses a `trusted_root.json` offline (no TUF: the file is the trust decision).
pub fn parse_root(bytes: &[u8]) -> Result<Root, RootError> {
    let root = SigstoreTrustRoot::from_trusted_root_json_unchecked(bytes)
        .map_err(RootError::NotTrustedRoot)?;
    let cas = root
        .fulcio_certs()
        .map_err(RootError::Fulcio)?
        .into_iter()
        .map(|c| c.into_owned())
        .collect();
    let mut rekor = BTreeMap::new();
    for (id, der) in root.rekor_keys().map_err(RootError::RekorKeys)? {
        let key = match CosignVerificationKey::try_from_der(der) {
            Ok(key) => key,
            Err(source) => return Err(RootError::RekorKey { id, source }),
        };
        rekor.insert(id, key);
    }
    let bundles = RootVerifier::new(bytes).map_err(RootError::Bundles)?;
    Ok(Root {
        cas,
        rekor,
        bundles,
    })
}
