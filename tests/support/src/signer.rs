//! Who signs a bundle or attestation: a keyless Fulcio leaf or a cosign key, and what each
//! contributes (signature, Rekor verifier, `verificationMaterial`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::hazmat::PrehashSigner as _;
use p256::ecdsa::{DerSignature, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::bundle::BUNDLE_V03_MEDIA_TYPE;
use crate::cosign::{pem, sign_der, spki_der, CosignKey, Leaf, TestSigstore};
use crate::rekor_body::Verifier;

/// Who signs: a Fulcio-style leaf (keyless: the bundle carries the certificate) or a cosign
/// key pair (the bundle carries `publicKey.hint`, the verifier supplies the key).
#[derive(Clone, Copy)]
pub enum Signer<'a> {
    /// Keyless, with a leaf from [`TestSigstore::issue_leaf`].
    Keyless(&'a Leaf),
    /// A managed key.
    Key(&'a CosignKey),
}

impl Signer<'_> {
    fn key(&self) -> &SigningKey {
        match self {
            Signer::Keyless(leaf) => &leaf.key,
            Signer::Key(key) => &key.key,
        }
    }

    /// DER ECDSA-SHA256 signature of `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        sign_der(self.key(), message)
    }

    /// DER ECDSA signature of a message whose SHA-256 is `digest`.
    pub(crate) fn sign_digest(&self, digest: &[u8; 32]) -> Vec<u8> {
        let sig: DerSignature = self.key().sign_prehash(digest).expect("sign prehash");
        sig.as_bytes().to_vec()
    }

    /// What a Rekor entry records as the verifier: the certificate or the public key.
    pub(crate) fn verifier(&self) -> Verifier {
        match self {
            Signer::Keyless(leaf) => Verifier {
                pem: leaf.cert_pem.clone(),
                der: leaf.cert_der.clone(),
                is_certificate: true,
            },
            Signer::Key(key) => {
                let der = spki_der(&key.key);
                Verifier {
                    pem: pem("PUBLIC KEY", &der),
                    der,
                    is_certificate: false,
                }
            }
        }
    }

    /// `verificationMaterial` without its log entries and timestamps: v0.3 `certificate`, v0.1
    /// `x509CertificateChain`, or `publicKey.hint` (base64 SHA-256 of the DER SPKI).
    pub(crate) fn material(&self, media_type: &str) -> Value {
        let verifier = self.verifier();
        let raw = json!({ "rawBytes": B64.encode(&verifier.der) });
        match (verifier.is_certificate, media_type == BUNDLE_V03_MEDIA_TYPE) {
            (true, true) => json!({ "certificate": raw }),
            (true, false) => json!({ "x509CertificateChain": { "certificates": [raw] } }),
            (false, _) => {
                json!({ "publicKey": { "hint": B64.encode(Sha256::digest(&verifier.der)) } })
            }
        }
    }
}

/// A second signer of the same kind, for [`crate::Tamper::OtherEntry`].
pub(crate) enum OtherSigner {
    Leaf(Leaf),
    Key(CosignKey),
}

impl OtherSigner {
    pub(crate) fn like(sigstore: &TestSigstore, signer: Signer) -> OtherSigner {
        match signer {
            Signer::Keyless(l) => OtherSigner::Leaf(sigstore.issue_leaf(
                "someone-else@example.com",
                "https://issuer.test",
                l.not_before,
                l.not_after,
            )),
            Signer::Key(_) => OtherSigner::Key(CosignKey::generate()),
        }
    }

    pub(crate) fn signer(&self) -> Signer<'_> {
        match self {
            OtherSigner::Leaf(l) => Signer::Keyless(l),
            OtherSigner::Key(k) => Signer::Key(k),
        }
    }
}
