//! The signing key of `[attest]`: a P-256 private key in PKCS#8 PEM, encrypted or not; its
//! password only from the environment or a file. Nothing here logs or returns the password.

use std::path::{Path, PathBuf};

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding, PrivateKeyInfoRef};
use sha2::{Digest as _, Sha256};

use crate::config::AttestConfig;

/// OID of `id-ecPublicKey` (RFC 5480), and the name of a few other key algorithms a user might
/// have at hand, for the error message.
const KEY_ALGORITHMS: &[(&str, &str)] = &[
    ("1.2.840.10045.2.1", "an EC key on another curve"),
    ("1.2.840.113549.1.1.1", "an RSA key"),
    ("1.3.101.112", "an Ed25519 key"),
    ("1.3.101.113", "an Ed448 key"),
];

/// A key (or its password) that cannot be used. No variant holds the password.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("[attest] key {}: {problem}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        problem: KeyProblem,
    },
    #[error("[attest]: set password_env or password_file, not both")]
    TwoPasswords,
    #[error("[attest] password_env: environment variable {0} is not set")]
    PasswordEnv(String),
    #[error("[attest] password_file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with the key file itself.
#[derive(Debug, thiserror::Error)]
pub enum KeyProblem {
    #[error("{0}")]
    Read(#[source] std::io::Error),
    #[error("not a PEM file")]
    NotPem,
    #[error(
        "the key is not encrypted, but a password is configured; remove password_env/password_file"
    )]
    NotEncrypted,
    #[error("the key is encrypted; give its password with password_env or password_file")]
    Encrypted,
    #[error("a SEC1 key (BEGIN EC PRIVATE KEY); convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out portcullis.key` (or `-v2 aes-256-cbc` to encrypt it)")]
    Sec1,
    #[error("a cosign-encrypted key; portcullis reads PKCS#8: make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out portcullis.key`")]
    Cosign,
    #[error(
        "a PEM {0:?}, not a PKCS#8 private key (BEGIN PRIVATE KEY or BEGIN ENCRYPTED PRIVATE KEY)"
    )]
    OtherPem(String),
    #[error("not a PKCS#8 private key: {0}")]
    NotPkcs8(#[source] pkcs8::der::Error),
    #[error("not an encrypted PKCS#8 private key: {0}")]
    NotEncryptedPkcs8(#[source] pkcs8::der::Error),
    /// The cipher's own error says no more than this, and is kept as the source.
    #[error("cannot decrypt it (a wrong password, or an unsupported cipher)")]
    Decrypt(#[source] pkcs8::Error),
    /// Which key it is instead (`an RSA key`, …).
    #[error("{0}; [attest] signs with ECDSA P-256 (prime256v1): make one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out portcullis.key`")]
    NotP256(String),
    #[error("encoding its public key: {0}")]
    PublicKey(#[source] pkcs8::spki::Error),
}

/// The key and what verifiers are told about it.
pub struct Key {
    signing: SigningKey,
    /// `verificationMaterial.publicKey.hint`: base64 of the SHA-256 of the public key's DER.
    pub hint: String,
    /// The public key as SPKI PEM, what admission policies are given.
    pub public_pem: String,
}

impl Key {
    /// Reads and decrypts the key named by `cfg`. Every error names the file and says what is
    /// wrong with it, never the password.
    pub fn load(cfg: &AttestConfig) -> Result<Key, KeyError> {
        let path = &cfg.key;
        let bad = |problem| KeyError::Key {
            path: path.clone(),
            problem,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| bad(KeyProblem::Read(e)))?;
        let label = pem
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
            .ok_or_else(|| bad(KeyProblem::NotPem))?;
        let password = password(cfg)?;
        let signing = match (label, password) {
            ("PRIVATE KEY", None) => from_der_of(&pem, None),
            ("PRIVATE KEY", Some(_)) => Err(KeyProblem::NotEncrypted),
            ("ENCRYPTED PRIVATE KEY", Some(pw)) => from_der_of(&pem, Some(&pw)),
            ("ENCRYPTED PRIVATE KEY", None) => Err(KeyProblem::Encrypted),
            ("EC PRIVATE KEY", _) => Err(KeyProblem::Sec1),
            ("ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY", _) => {
                Err(KeyProblem::Cosign)
            }
            (other, _) => Err(KeyProblem::OtherPem(other.to_owned())),
        }
        .map_err(bad)?;
        let public = signing.verifying_key();
        let der = public
            .to_public_key_der()
            .map_err(|e| bad(KeyProblem::PublicKey(e)))?;
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| bad(KeyProblem::PublicKey(e)))?;
        use base64::Engine as _;
        let hint = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(der.as_bytes()));
        Ok(Key {
            signing,
            hint,
            public_pem,
        })
    }

    /// ECDSA P-256 over SHA-256 of `message`, DER-encoded (what cosign and DSSE verifiers read).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let sig: DerSignature = self.signing.sign(message);
        sig.as_bytes().to_vec()
    }
}

/// Decodes the (decrypted) PKCS#8 document as a P-256 key, or says which key it is instead.
fn from_der_of(pem: &str, password: Option<&str>) -> Result<SigningKey, KeyProblem> {
    let doc = match password {
        None => pkcs8::SecretDocument::from_pem(pem)
            .map(|(_, doc)| doc)
            .map_err(KeyProblem::NotPkcs8)?,
        Some(pw) => {
            let (_, encrypted) =
                pkcs8::SecretDocument::from_pem(pem).map_err(KeyProblem::NotEncryptedPkcs8)?;
            pkcs8::EncryptedPrivateKeyInfoRef::try_from(encrypted.as_bytes())
                .and_then(|info| info.decrypt(pw))
                .map_err(KeyProblem::Decrypt)?
        }
    };
    SigningKey::from_pkcs8_der(doc.as_bytes()).map_err(|_| {
        let what = PrivateKeyInfoRef::try_from(doc.as_bytes())
            .ok()
            .map(|info| {
                let oid = info.algorithm.oid.to_string();
                KEY_ALGORITHMS.iter().find(|(o, _)| *o == oid).map_or_else(
                    || format!("a key of algorithm {oid}"),
                    |(_, n)| (*n).to_owned(),
                )
            })
            .unwrap_or_else(|| "not a readable private key".to_owned());
        KeyProblem::NotP256(what)
    })
}

/// The key's password, from `password_env` or `password_file` (one line), if configured.
fn password(cfg: &AttestConfig) -> Result<Option<String>, KeyError> {
    match (&cfg.password_env, &cfg.password_file) {
        (Some(_), Some(_)) => Err(KeyError::TwoPasswords),
        (Some(var), None) => std::env::var(var)
            .map(Some)
            .map_err(|_| KeyError::PasswordEnv(var.clone())),
        (None, Some(path)) => read_line(path).map(Some),
        (None, None) => Ok(None),
    }
}

fn read_line(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|source| KeyError::PasswordFile {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::elliptic_curve::Generate as _;
    use pkcs8::EncodePrivateKey;

    /// RFC 8410's example Ed25519 private key.
    const ED25519: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";

    fn config(dir: &Path, pem: &str) -> AttestConfig {
        let key = dir.join("portcullis.key");
        std::fs::write(&key, pem).unwrap();
        AttestConfig {
            key,
            verifier_id: "https://portcullis.test".into(),
            password_env: None,
            password_file: None,
        }
    }

    #[test]
    fn a_p256_pkcs8_key_signs_and_its_hint_names_its_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let signing = SigningKey::generate();
        let pem = signing.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = Key::load(&config(dir.path(), &pem)).unwrap();
        let der = signing.verifying_key().to_public_key_der().unwrap();
        use base64::Engine as _;
        let hint = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(der.as_bytes()));
        assert_eq!(key.hint, hint);
        let sig = key.sign(b"message");
        let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
        use p256::ecdsa::signature::Verifier as _;
        signing.verifying_key().verify(b"message", &sig).unwrap();
    }

    #[test]
    fn other_keys_and_forms_are_refused_with_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let err = |pem: &str| {
            Key::load(&config(dir.path(), pem))
                .err()
                .unwrap()
                .to_string()
        };
        assert!(err(ED25519).contains("an Ed25519 key"), "{}", err(ED25519));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(err(sec1).contains("openssl pkcs8 -topk8"), "{}", err(sec1));
        let cosign = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n";
        assert!(err(cosign).contains("cosign-encrypted"), "{}", err(cosign));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(err(encrypted).contains("password_env or password_file"));
        assert!(err("not a key").contains("not a PEM file"));
    }

    #[test]
    fn a_password_comes_from_one_place_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let pem = SigningKey::generate().to_pkcs8_pem(LineEnding::LF).unwrap();
        let mut cfg = config(dir.path(), &pem);
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret-pw\n").unwrap();
        cfg.password_file = Some(file);
        let e = Key::load(&cfg).err().unwrap().to_string();
        assert!(e.contains("not encrypted"), "{e}");
        assert!(!e.contains("s3cret-pw"), "{e}");
        cfg.password_env = Some("PORTCULLIS_TEST_UNSET_VARIABLE".into());
        assert!(Key::load(&cfg)
            .err()
            .unwrap()
            .to_string()
            .contains("not both"));
    }
}
