//! Legacy cosign attestations (`sha256-<hex>.att`): a DSSE envelope per layer, with the
//! certificate, chain and Rekor SET in the layer's annotations, as `cosign attest` writes them.
//!
//! Keyless ones are rewritten as the Sigstore bundle v0.1 they are equivalent to (DSSE content,
//! certificate, an `intoto` log entry with its SET) and verified like any bundle, so that both
//! formats go through one verifier. Keyed ones are checked over the DSSE PAE with the key.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use serde::Deserialize;
use serde_json::json;
use sigstore::crypto::{CosignVerificationKey, Signature};
use sigstore_verify::types::{dsse::pae, Bundle};
use x509_cert::der::{DecodePem, Encode};
use x509_cert::Certificate;

use crate::statement::{Statement, StatementError};

/// One layer of a `.att` manifest as the proxy fetched it.
#[derive(Debug, Clone, Default)]
pub struct AttestationLayer {
    /// The layer blob: the DSSE envelope JSON (digest-checked by the proxy).
    pub envelope: Vec<u8>,
    /// `dev.sigstore.cosign/certificate`, PEM (keyless).
    pub certificate: Option<String>,
    /// `dev.sigstore.cosign/chain`, PEM (keyless).
    pub chain: Option<String>,
    /// `dev.sigstore.cosign/bundle`: the Rekor SET bundle (keyless).
    pub bundle: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<EnvSig>,
}

#[derive(Deserialize)]
struct EnvSig {
    sig: String,
}

#[derive(Deserialize)]
struct SetBundle {
    #[serde(rename = "SignedEntryTimestamp")]
    set: String,
    #[serde(rename = "Payload")]
    payload: SetPayload,
}

#[derive(Deserialize)]
struct SetPayload {
    body: String,
    #[serde(rename = "integratedTime")]
    integrated_time: i64,
    #[serde(rename = "logIndex")]
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

#[derive(Deserialize)]
struct EntryKind {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
}

/// Why a legacy attestation layer does not count (a reason in the verdict).
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("attestation is not a DSSE envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    #[error("DSSE payload is not base64: {0}")]
    Payload(#[source] base64::DecodeError),
    #[error(transparent)]
    Statement(#[from] StatementError),
    #[error("attestation signed by an unknown key")]
    UnknownKey,
    #[error("no certificate: a keyed attestation cannot satisfy a keyless authority")]
    NoCertificate,
    #[error("no Rekor bundle (SET) on the attestation")]
    NoSet,
    #[error("SET invalid: {0}")]
    Set(#[source] serde_json::Error),
    #[error("unreadable certificate: {0}")]
    Certificate(#[source] x509_cert::der::Error),
    #[error("SET invalid: body is not base64: {0}")]
    SetBody(#[source] base64::DecodeError),
    #[error("SET invalid: body is not a Rekor entry: {0}")]
    SetEntry(#[source] serde_json::Error),
    #[error("SET invalid: logID is not hex: {0}")]
    LogId(#[source] hex::FromHexError),
    #[error("attestation as a bundle: {0}")]
    AsBundle(#[source] sigstore_verify::types::Error),
}

impl AttestationLayer {
    pub(crate) fn envelope(&self) -> Result<Envelope, AttestationError> {
        serde_json::from_slice(&self.envelope).map_err(AttestationError::Envelope)
    }

    /// The statement inside, bound to `digest`. Says nothing of who signed it.
    pub fn statement(&self, digest: &str) -> Result<Statement, AttestationError> {
        let env = self.envelope()?;
        let payload = STANDARD
            .decode(&env.payload)
            .map_err(AttestationError::Payload)?;
        let s = Statement::parse(&env.payload_type, &payload)?;
        s.check_subject(digest)?;
        Ok(s)
    }

    /// Checks the envelope's signature over the PAE with `key`.
    pub fn check_key(&self, key: &CosignVerificationKey) -> Result<(), AttestationError> {
        let env = self.envelope()?;
        let payload = STANDARD
            .decode(&env.payload)
            .map_err(AttestationError::Payload)?;
        let signed = pae(&env.payload_type, &payload);
        let ok = env.signatures.iter().any(|s| {
            STANDARD
                .decode(&s.sig)
                .is_ok_and(|sig| key.verify_signature(Signature::Raw(&sig), &signed).is_ok())
        });
        ok.then_some(()).ok_or(AttestationError::UnknownKey)
    }

    /// The Sigstore bundle v0.1 equivalent to this keyless attestation.
    pub fn as_bundle(&self) -> Result<Bundle, AttestationError> {
        let cert_pem = self
            .certificate
            .as_deref()
            .ok_or(AttestationError::NoCertificate)?;
        let set: SetBundle =
            serde_json::from_str(self.bundle.as_deref().ok_or(AttestationError::NoSet)?)
                .map_err(AttestationError::Set)?;
        let env = self.envelope()?;
        let cert = Certificate::from_pem(cert_pem.as_bytes())
            .and_then(|c| c.to_der())
            .map_err(AttestationError::Certificate)?;
        let body = STANDARD
            .decode(&set.payload.body)
            .map_err(AttestationError::SetBody)?;
        let kind: EntryKind = serde_json::from_slice(&body).map_err(AttestationError::SetEntry)?;
        let log_id = hex::decode(&set.payload.log_id).map_err(AttestationError::LogId)?;
        let raw = json!({
            "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1",
            "verificationMaterial": {
                "x509CertificateChain": { "certificates": [{ "rawBytes": STANDARD.encode(cert) }] },
                "tlogEntries": [{
                    "logIndex": set.payload.log_index.to_string(),
                    "logId": { "keyId": STANDARD.encode(log_id) },
                    "kindVersion": { "kind": kind.kind, "version": kind.api_version },
                    "integratedTime": set.payload.integrated_time.to_string(),
                    "inclusionPromise": { "signedEntryTimestamp": set.set },
                    "canonicalizedBody": set.payload.body,
                }],
            },
            "dsseEnvelope": {
                "payload": env.payload,
                "payloadType": env.payload_type,
                "signatures": env.signatures.iter().map(|s| json!({ "sig": s.sig, "keyid": "" })).collect::<Vec<_>>(),
            },
        });
        Bundle::from_json(&raw.to_string()).map_err(AttestationError::AsBundle)
    }
}
