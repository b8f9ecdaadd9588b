//! Sigstore bundles (v0.1 to v0.3, cosign v3's default) checked with `sigstore-verify`: the
//! certificate chain at every verified time, Rekor v1 SETs, inclusion proofs and checkpoints,
//! Rekor v2 entries, RFC 3161 timestamps from the trusted root's TSAs, the log entry's
//! consistency with the bundle (CVE-2022-36056), and the DSSE or message signature itself. See
//! `docs/decisions/0007-sigstore-verify-for-bundles.md`. A timestamp's `genTime` may carry a
//! fraction of a second (RFC 3161 §2.4.2), read by a patched sigstore-tsa:
//! `docs/decisions/0010-rfc3161-fractional-time.md`.
//!
//! What is bound to the image: a message signature must be over the manifest (its digest is the
//! artifact); a DSSE envelope must hold an in-toto statement whose subject is the manifest.

use sigstore_verify::trust_root::TrustedRoot;
use sigstore_verify::types::{
    bundle::VerificationMaterialContent, Artifact, ArtifactDigest, Bundle, DerPublicKey,
    Sha256Hash, SignatureContent,
};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, Verifier};

use std::sync::Arc;

use crate::statement::{Statement, StatementError};

/// The media type prefix of every Sigstore bundle version.
pub const MEDIA_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";

/// What a verified bundle says about the image.
#[derive(Debug, Clone)]
pub enum Content {
    /// A signature over the manifest itself.
    Signature,
    /// A DSSE envelope's in-toto statement (subject already checked).
    Statement(Arc<Statement>),
}

/// A `trusted_root.json` the bundle verifier cannot use.
#[derive(Debug, thiserror::Error)]
pub enum TrustedRootError {
    #[error("trusted_root.json is not UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    #[error(transparent)]
    Parse(sigstore_verify::trust_root::Error),
    #[error(transparent)]
    Verifier(sigstore_verify::Error),
}

/// Why a bundle does not vouch for the image (a reason in the verdict).
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle is not UTF-8")]
    NotUtf8,
    #[error("not a Sigstore bundle: {0}")]
    Parse(#[source] sigstore_verify::types::Error),
    #[error("the bundle is signed with a key, not a certificate")]
    KeySigned,
    #[error("the bundle is signed with a certificate, not a key")]
    CertificateSigned,
    /// Boxed: sigstore-verify's error is large, and every failed bundle is a value here.
    #[error("bundle invalid: {0}")]
    Invalid(#[source] Box<sigstore_verify::Error>),
    #[error("{0} is not a sha256 digest")]
    NotSha256(String),
    #[error("{digest}: {source}")]
    Digest {
        digest: String,
        #[source]
        source: sigstore_verify::types::Error,
    },
    #[error(transparent)]
    Statement(#[from] StatementError),
    #[error("unsupported bundle content")]
    UnsupportedContent,
}

/// A trusted root's bundle verifier.
pub struct RootVerifier {
    verifier: Verifier,
    /// Verify SCTs when the root lists CT logs (the public-good instance does; test roots and
    /// some private instances do not).
    sct: bool,
}

impl RootVerifier {
    pub fn new(trusted_root_json: &[u8]) -> Result<RootVerifier, TrustedRootError> {
        let text = std::str::from_utf8(trusted_root_json).map_err(TrustedRootError::NotUtf8)?;
        let root = TrustedRoot::from_json(text).map_err(TrustedRootError::Parse)?;
        let verifier = Verifier::new(&root).map_err(TrustedRootError::Verifier)?;
        Ok(RootVerifier {
            sct: !root.ctlogs.is_empty(),
            verifier,
        })
    }

    /// An empty root: for keyed bundles checked with nothing but the key.
    fn empty() -> RootVerifier {
        let json = r#"{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1","tlogs":[],"certificateAuthorities":[],"ctlogs":[],"timestampAuthorities":[]}"#;
        RootVerifier::new(json.as_bytes()).expect("the empty trusted root parses")
    }

    /// Verifies a keyless bundle for the manifest `digest`, returning the signing certificate
    /// (DER) and the content. The identity is the caller's to match.
    pub fn verify_keyless(
        &self,
        bundle: &Bundle,
        digest: &str,
    ) -> Result<(Vec<u8>, Content), BundleError> {
        let cert = bundle
            .signing_certificate()
            .ok_or(BundleError::KeySigned)?
            .as_bytes()
            .to_vec();
        let mut policy = VerificationPolicy::any_identity();
        if !self.sct {
            policy = policy.skip_sct();
        }
        self.verifier
            .verify(artifact(digest)?, bundle, &policy)
            .map_err(|e| BundleError::Invalid(Box::new(e)))?;
        Ok((cert, content(bundle, digest)?))
    }
}

/// Keyed bundles: the key is the trust decision. Log proofs and timestamps are not checked (a
/// key authority names no log), as for legacy keyed signatures.
pub struct KeyedVerifier(RootVerifier);

impl Default for KeyedVerifier {
    fn default() -> Self {
        KeyedVerifier(RootVerifier::empty())
    }
}

impl KeyedVerifier {
    pub fn verify(
        &self,
        bundle: &Bundle,
        digest: &str,
        key: &DerPublicKey,
    ) -> Result<Content, BundleError> {
        if matches!(
            bundle.verification_material.content,
            VerificationMaterialContent::Certificate(_)
                | VerificationMaterialContent::X509CertificateChain { .. }
        ) {
            return Err(BundleError::CertificateSigned);
        }
        // A key authority names no log or TSA to check them against: drop the timestamps
        // (which would otherwise have to verify) and do not check the log's proofs. The log
        // entry must still describe this signature.
        let mut bare = bundle.clone();
        if !bare.verification_material.tlog_entries.is_empty() {
            bare.verification_material.timestamp_verification_data = Default::default();
        }
        let policy = PublicKeyVerificationPolicy::new(key.clone()).skip_tlog_unsafe();
        self.0
            .verifier
            .verify(artifact(digest)?, &bare, &policy)
            .map_err(|e| BundleError::Invalid(Box::new(e)))?;
        content(bundle, digest)
    }
}

/// Parses a bundle's JSON.
pub fn parse(raw: &[u8]) -> Result<Bundle, BundleError> {
    let text = std::str::from_utf8(raw).map_err(|_| BundleError::NotUtf8)?;
    Bundle::from_json(text).map_err(BundleError::Parse)
}

fn artifact(digest: &str) -> Result<Artifact<'static>, BundleError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| BundleError::NotSha256(digest.to_owned()))?;
    let hash = Sha256Hash::from_hex(hex).map_err(|source| BundleError::Digest {
        digest: digest.to_owned(),
        source,
    })?;
    Ok(Artifact::from_digest(ArtifactDigest::sha256(hash)))
}

/// The content of a verified bundle, bound to `digest`.
fn content(bundle: &Bundle, digest: &str) -> Result<Content, BundleError> {
    match &bundle.content {
        SignatureContent::MessageSignature(_) => Ok(Content::Signature),
        SignatureContent::DsseEnvelope(env) => {
            let statement = Statement::parse(&env.payload_type, env.payload.as_bytes())?;
            statement.check_subject(digest)?;
            Ok(Content::Statement(Arc::new(statement)))
        }
        _ => Err(BundleError::UnsupportedContent),
    }
}
