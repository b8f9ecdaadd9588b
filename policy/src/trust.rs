//! Trust material, loaded once from local files: cosign public keys and Sigstore trusted roots.
//! Nothing here ever touches the network.

use std::collections::BTreeMap;
use std::path::Path;

use rustls_pki_types::CertificateDer;
use sha2::{Digest as _, Sha256};
use sigstore::crypto::CosignVerificationKey;
use sigstore::trust::sigstore::SigstoreTrustRoot;
use sigstore::trust::TrustRoot as _;

use sigstore_verify::types::DerPublicKey;

use crate::bundle::{KeyedVerifier, RootVerifier};
use crate::config::TrustConfig;
use crate::pins::PinSet;
use crate::PolicyError;

/// The public Sigstore instance's `trusted_root.json`, bundled (see `policy/trust/README.md`).
pub const PUBLIC_GOOD: &[u8] = include_bytes!("../trust/public-good-trusted_root.json");
/// How a config names the bundled root.
pub const BUILTIN_PUBLIC_GOOD: &str = "builtin:public-good";

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
    pub fn load(cfg: &TrustConfig) -> Result<TrustStore, PolicyError> {
        let mut hash = Sha256::new();
        let mut keys = BTreeMap::new();
        let mut key_der = BTreeMap::new();
        for k in &cfg.keys {
            let bytes = read(&k.path, &format!("[[trust.key]] {:?}", k.name))?;
            let key = CosignVerificationKey::try_from_pem(&bytes).map_err(|e| {
                PolicyError::Trust(format!(
                    "[[trust.key]] {:?}: {} is not a public key cosign can use: {e}",
                    k.name,
                    k.path.display()
                ))
            })?;
            let der = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|pem| DerPublicKey::from_pem(pem).ok())
                .ok_or_else(|| {
                    PolicyError::Trust(format!(
                        "[[trust.key]] {:?}: {} is not a PEM public key",
                        k.name,
                        k.path.display()
                    ))
                })?;
            key_der.insert(k.name.clone(), der);
            hash.update(format!("key\0{}\0", k.name));
            hash.update(&bytes);
            if keys.insert(k.name.clone(), key).is_some() {
                return Err(PolicyError::Trust(format!(
                    "[[trust.key]] {:?} appears twice",
                    k.name
                )));
            }
        }
        let mut roots = BTreeMap::new();
        for r in &cfg.roots {
            let ctx = format!("[[trust.root]] {:?}", r.name);
            let bytes = if r.trusted_root.as_os_str() == BUILTIN_PUBLIC_GOOD {
                PUBLIC_GOOD.to_vec()
            } else {
                read(&r.trusted_root, &ctx)?
            };
            let root = parse_root(&bytes).map_err(|e| PolicyError::Trust(format!("{ctx}: {e}")))?;
            hash.update(format!("root\0{}\0", r.name));
            hash.update(&bytes);
            if roots.insert(r.name.clone(), root).is_some() {
                return Err(PolicyError::Trust(format!("{ctx} appears twice")));
            }
        }
        let mut pins = BTreeMap::new();
        for p in &cfg.pins {
            let ctx = format!("[[trust.pins]] {:?}", p.name);
            let (set, bytes) = PinSet::load(&p.path, &ctx)?.unwrap_or_default();
            // A pin added or removed changes every verdict it could touch: it is trust material.
            hash.update(format!("pins\0{}\0", p.name));
            hash.update(&bytes);
            if pins.insert(p.name.clone(), set).is_some() {
                return Err(PolicyError::Trust(format!("{ctx} appears twice")));
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

fn read(path: &Path, ctx: &str) -> Result<Vec<u8>, PolicyError> {
    std::fs::read(path)
        .map_err(|e| PolicyError::Trust(format!("{ctx}: cannot read {}: {e}", path.display())))
}

/// Parses a `trusted_root.json` offline (no TUF: the file is the trust decision).
pub fn parse_root(bytes: &[u8]) -> Result<Root, String> {
    let root = SigstoreTrustRoot::from_trusted_root_json_unchecked(bytes)
        .map_err(|e| format!("not a Sigstore trusted_root.json: {e}"))?;
    let cas = root
        .fulcio_certs()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|c| c.into_owned())
        .collect();
    let mut rekor = BTreeMap::new();
    for (id, der) in root.rekor_keys().map_err(|e| e.to_string())? {
        let key =
            CosignVerificationKey::try_from_der(der).map_err(|e| format!("Rekor key {id}: {e}"))?;
        rekor.insert(id, key);
    }
    let bundles = RootVerifier::new(bytes).map_err(|e| format!("for bundles: {e}"))?;
    Ok(Root {
        cas,
        rekor,
        bundles,
    })
}
