//! Signed verification summaries (`[attest]`): for every manifest that passed the gate in
//! enforce mode, portcullis signs an in-toto statement with a SLSA Verification Summary
//! predicate (who verified, when, the exact digest, the policy's fingerprint, the evidence
//! read) and serves it where admission controllers look: as a Sigstore bundle among the
//! image's referrers, and as a layer of cosign's `sha256-<hex>.att` attestation manifest.
//! A cluster can then check "passed portcullis" with one public key, offline.
//!
//! # Layout
//! - `key`: the P-256 signing key (PKCS#8, encrypted or not; the password from env or a file).
//! - `vsa`: the statement, its predicate and the DSSE envelope.
//! - `forms`: the bundle artifact and the `.att` manifest built from an envelope.
//! - `held`: summaries made once per verdict, and the documents served, in the store.
//! - `serve`: the hooks the handlers call (referrers list, manifests by tag and digest).
//!
//! Denied, warned and audit-failed images get none, nor does anything without `[attest]`.

use std::sync::{Arc, Mutex};

use portcullis_cache::Digest;
use portcullis_policy::Verdict;

mod forms;
mod held;
mod key;
mod serve;
mod vsa;

pub use forms::BUNDLE_V03;
pub use held::{DOC as DOC_RECORDS, PARENT as PARENT_RECORDS, SUMMARY as SUMMARY_RECORDS};
pub use key::{KeyError, KeyProblem};
pub use serve::{manifest, referrers};
pub use vsa::{PAYLOAD_TYPE, PREDICATE_TYPE};

use crate::app::App;
use crate::config::AttestConfig;
use crate::error::ProxyError;
use crate::oci::Document;
use crate::route::Target;

/// An `[attest]` section that cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("[attest] verifier_id {id:?} is not a URI: {source}")]
    VerifierIdNotUri {
        id: String,
        #[source]
        source: url::ParseError,
    },
    #[error("[attest] verifier_id {0:?}: a URI such as https://portcullis.example.com/")]
    VerifierIdNotBase(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The signer of summaries, built from `[attest]` with the rest of the configuration.
pub struct Attester {
    key: key::Key,
    verifier_id: String,
    /// Held while a summary is made, so that each verdict gets one.
    making: Mutex<()>,
    /// Summaries by verdict key, in front of their records.
    held: moka::sync::Cache<String, Arc<held::Summary>>,
    /// Documents whose records and gates are written, by document key.
    written: moka::sync::Cache<String, ()>,
}

impl Attester {
    /// Reads the key (and its password) and checks the verifier id: what `check-config` and a
    /// reload validate.
    pub fn load(cfg: &AttestConfig) -> Result<Attester, AttestError> {
        let id =
            url::Url::parse(&cfg.verifier_id).map_err(|source| AttestError::VerifierIdNotUri {
                id: cfg.verifier_id.clone(),
                source,
            })?;
        if id.cannot_be_a_base() && id.scheme() != "urn" {
            return Err(AttestError::VerifierIdNotBase(cfg.verifier_id.clone()));
        }
        Ok(Attester {
            key: key::Key::load(cfg)?,
            verifier_id: cfg.verifier_id.clone(),
            making: Mutex::new(()),
            held: moka::sync::Cache::new(10_000),
            written: moka::sync::Cache::new(10_000),
        })
    }

    /// The public key summaries verify with (SPKI PEM).
    pub fn public_pem(&self) -> &str {
        &self.key.public_pem
    }

    /// `verificationMaterial.publicKey.hint` of the bundles.
    pub fn hint(&self) -> &str {
        &self.key.hint
    }
}

/// The gate's hook, once per verdict that passed: signs the summary of `digest`, and records
/// that a verified index vouched for its children (whose summaries then list its evidence).
pub fn summarise(
    app: &App,
    target: &Target,
    digest: &Digest,
    doc: &Document,
    verdict: &Verdict,
) -> Result<(), ProxyError> {
    let Some(attester) = app.attest.as_deref() else {
        return Ok(());
    };
    let children = doc
        .children()
        .map_err(crate::content::manifests::invalid(target, digest))?;
    held::vouched(app, target, digest, &children)?;
    held::ensure(app, attester, target, digest, verdict)?;
    Ok(())
}
