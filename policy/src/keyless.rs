//! Keyless (Fulcio) verification, offline: the Rekor SET with a log key from the trusted root, the
//! SET's entry matching this signature, the certificate chain to a Fulcio root at the time the log
//! integrated the entry, the signature with the certificate's key, and the identity.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use regex::Regex;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use sigstore::cosign::bundle::SignedArtifactBundle;
use sigstore::crypto::CosignVerificationKey;
use sigstore::errors::SigstoreError;
use x509_cert::der::asn1::Ia5String;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

use crate::signature::SignatureLayer;
use crate::trust::Root;

const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
const OID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
/// Fulcio's OIDC issuer, legacy form: the raw string as the extension value.
const OID_ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1");
/// Fulcio's OIDC issuer, current form: a DER UTF8String.
const OID_ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8");

/// Why a keyless signature does not prove an identity (a reason in the verdict).
#[derive(Debug, thiserror::Error)]
pub enum KeylessError {
    #[error("no certificate: a keyed signature cannot satisfy a keyless authority")]
    NoCertificate,
    #[error("no Rekor bundle (SET) on the signature")]
    NoSet,
    #[error("unreadable certificate: {0}")]
    Unreadable(#[source] x509_cert::der::Error),
    #[error("certificate: {0}")]
    Certificate(#[source] x509_cert::der::Error),
    #[error("SET invalid: not JSON: {0}")]
    SetJson(#[source] serde_json::Error),
    #[error("SET invalid: {0}")]
    Set(#[source] Box<SigstoreError>),
    #[error("SET invalid: entry body is not base64: {0}")]
    EntryBase64(#[source] base64::DecodeError),
    #[error("SET invalid: entry is not a hashedrekord: {0}")]
    EntryJson(#[source] serde_json::Error),
    #[error("SET invalid: entry kind {0:?} is not hashedrekord")]
    EntryKind(String),
    #[error("SET invalid: the logged entry is for another payload")]
    OtherPayload,
    #[error("SET invalid: the logged entry holds another signature")]
    OtherSignature,
    #[error("SET invalid: logged key is not base64: {0}")]
    LoggedKeyBase64(#[source] base64::DecodeError),
    #[error("SET invalid: logged certificate: {0}")]
    LoggedCertificate(#[source] x509_cert::der::Error),
    #[error("SET invalid: the logged entry names another certificate")]
    OtherCertificate,
    #[error("SET invalid: negative integratedTime")]
    NegativeTime,
    #[error("certificate key: {0}")]
    KeyDer(#[source] x509_cert::der::Error),
    #[error("certificate key: {0}")]
    Key(#[source] Box<SigstoreError>),
    #[error("the signature does not verify with the certificate's key")]
    Signature,
    #[error("certificate: {0:?}")]
    EndEntity(#[source] webpki::Error),
    #[error("chain: {0}")]
    Chain(#[source] x509_cert::der::Error),
    #[error("certificate outside its validity at log time (integratedTime {at}): {source:?}")]
    Validity {
        at: u64,
        #[source]
        source: webpki::Error,
    },
    #[error("certificate does not chain to a Fulcio CA of this root: {0:?}")]
    NotChained(#[source] webpki::Error),
    #[error("SAN: {0}")]
    San(#[source] x509_cert::der::Error),
}

/// Who a certificate names: its OIDC issuer, its SAN subjects (emails and URIs, SPIFFE IDs
/// among them) and its Fulcio CI claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub issuer: Option<String>,
    pub subjects: Vec<String>,
    pub claims: BTreeMap<&'static str, String>,
}

/// Exact or regex constraints on an identity, and exact CI claims.
pub struct IdentityMatcher {
    pub issuer: Option<String>,
    pub issuer_regex: Option<Regex>,
    pub subject: Option<String>,
    pub subject_regex: Option<Regex>,
    pub claims: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct HashedRekord {
    kind: String,
    spec: Spec,
}

#[derive(Deserialize)]
struct Spec {
    data: Data,
    signature: SigSpec,
}

#[derive(Deserialize)]
struct Data {
    hash: Hash,
}

#[derive(Deserialize)]
struct Hash {
    algorithm: String,
    value: String,
}

#[derive(Deserialize)]
struct SigSpec {
    content: String,
    #[serde(rename = "publicKey")]
    public_key: PublicKey,
}

#[derive(Deserialize)]
struct PublicKey {
    content: String,
}

/// Verifies a keyless signature layer against `root`; the identity it proves on success.
pub fn verify(layer: &SignatureLayer, root: &Root) -> Result<Identity, KeylessError> {
    let cert_pem = layer
        .certificate
        .as_deref()
        .ok_or(KeylessError::NoCertificate)?;
    let bundle = layer.bundle.as_deref().ok_or(KeylessError::NoSet)?;
    let cert = Certificate::from_pem(cert_pem.as_bytes()).map_err(KeylessError::Unreadable)?;
    let cert_der = cert.to_der().map_err(KeylessError::Certificate)?;

    // 1. The SET: signed by a log key of this root over the entry.
    let rekor_bundle: serde_json::Value =
        serde_json::from_str(bundle).map_err(KeylessError::SetJson)?;
    let raw = serde_json::json!({
        "base64Signature": layer.signature,
        "cert": cert_pem,
        "rekorBundle": rekor_bundle,
    })
    .to_string();
    let verified = SignedArtifactBundle::new_verified(&raw, &root.rekor)
        .map_err(|e| KeylessError::Set(Box::new(e)))?;
    let payload = &verified.rekor_bundle.payload;

    // 2. The logged entry is this signature, by this certificate, over this payload.
    check_entry(&payload.body, layer, &cert_der)?;

    // 3. The chain, at the time the log integrated the entry.
    let integrated =
        u64::try_from(payload.integrated_time).map_err(|_| KeylessError::NegativeTime)?;
    check_chain(&cert_der, layer.chain.as_deref(), root, integrated)?;

    // 4. The signature, with the certificate's key.
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(KeylessError::KeyDer)?;
    let key =
        CosignVerificationKey::try_from_der(&spki).map_err(|e| KeylessError::Key(Box::new(e)))?;
    layer.check_key(&key).map_err(|_| KeylessError::Signature)?;

    identity(&cert)
}

fn check_entry(
    body_b64: &str,
    layer: &SignatureLayer,
    cert_der: &[u8],
) -> Result<(), KeylessError> {
    let body = STANDARD
        .decode(body_b64)
        .map_err(KeylessError::EntryBase64)?;
    let entry: HashedRekord = serde_json::from_slice(&body).map_err(KeylessError::EntryJson)?;
    if entry.kind != "hashedrekord" {
        return Err(KeylessError::EntryKind(entry.kind));
    }
    let payload_hash = hex::encode(Sha256::digest(&layer.payload));
    if entry.spec.data.hash.algorithm != "sha256" || entry.spec.data.hash.value != payload_hash {
        return Err(KeylessError::OtherPayload);
    }
    let strip = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    if strip(&entry.spec.signature.content) != strip(&layer.signature) {
        return Err(KeylessError::OtherSignature);
    }
    let logged_pem = STANDARD
        .decode(&entry.spec.signature.public_key.content)
        .map_err(KeylessError::LoggedKeyBase64)?;
    let logged = Certificate::from_pem(&logged_pem)
        .and_then(|c| c.to_der())
        .map_err(KeylessError::LoggedCertificate)?;
    if logged != cert_der {
        return Err(KeylessError::OtherCertificate);
    }
    Ok(())
}

fn check_chain(
    cert_der: &[u8],
    chain_pem: Option<&str>,
    root: &Root,
    at: u64,
) -> Result<(), KeylessError> {
    let leaf = CertificateDer::from(cert_der.to_vec());
    let ee = webpki::EndEntityCert::try_from(&leaf).map_err(KeylessError::EndEntity)?;
    let anchors = root
        .cas
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect::<Vec<_>>();
    let mut intermediates: Vec<CertificateDer<'static>> = Vec::new();
    if let Some(pem) = chain_pem {
        for c in Certificate::load_pem_chain(pem.as_bytes()).map_err(KeylessError::Chain)? {
            intermediates.push(CertificateDer::from(
                c.to_der().map_err(KeylessError::Chain)?,
            ));
        }
    }
    let time = UnixTime::since_unix_epoch(Duration::from_secs(at));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        time,
        webpki::KeyUsage::required(EKU_CODE_SIGNING),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            KeylessError::Validity { at, source: e }
        }
        e => KeylessError::NotChained(e),
    })
}

/// Reads the OIDC issuer (both Fulcio extensions) and the SAN emails and URIs.
pub fn identity(cert: &Certificate) -> Result<Identity, KeylessError> {
    let mut id = Identity {
        claims: crate::claims::of(&cert.to_der().map_err(KeylessError::Certificate)?),
        ..Identity::default()
    };
    for ext in cert.tbs_certificate().extensions().into_iter().flatten() {
        let value = ext.extn_value.as_bytes();
        if ext.extn_id == OID_ISSUER_V2 {
            id.issuer = String::from_der(value).ok().or(id.issuer);
        } else if ext.extn_id == OID_ISSUER_V1 && id.issuer.is_none() {
            id.issuer = std::str::from_utf8(value).ok().map(str::to_owned);
        } else if ext.extn_id == OID_SAN {
            let san = SubjectAltName::from_der(value).map_err(KeylessError::San)?;
            for name in san.0 {
                match name {
                    GeneralName::Rfc822Name(s) | GeneralName::UniformResourceIdentifier(s) => {
                        id.subjects.push(ia5(&s))
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(id)
}

fn ia5(s: &Ia5String) -> String {
    s.to_string()
}

impl IdentityMatcher {
    /// Why `id` does not satisfy these constraints, if it does not: a reason of our own.
    pub fn check(&self, id: &Identity) -> Result<(), String> {
        let issuer = id.issuer.as_deref().unwrap_or("");
        if let Some(want) = &self.issuer {
            if issuer != want {
                return Err(format!(
                    "identity mismatch: issuer {issuer:?} is not {want:?}"
                ));
            }
        }
        if let Some(re) = &self.issuer_regex {
            if !re.is_match(issuer) {
                return Err(format!(
                    "identity mismatch: issuer {issuer:?} does not match /{re}/"
                ));
            }
        }
        if let Some(want) = &self.subject {
            if !id.subjects.iter().any(|s| s == want) {
                return Err(format!(
                    "identity mismatch: subject {:?} is not {want:?}",
                    id.subjects
                ));
            }
        }
        if let Some(re) = &self.subject_regex {
            if !id.subjects.iter().any(|s| re.is_match(s)) {
                return Err(format!(
                    "identity mismatch: subject {:?} does not match /{re}/",
                    id.subjects
                ));
            }
        }
        for (claim, want) in &self.claims {
            let have = id.claims.get(claim.as_str());
            if have != Some(want) {
                return Err(format!(
                    "identity mismatch: certificate claim {claim} is {have:?}, not {want:?}"
                ));
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        let issuer = self
            .issuer
            .clone()
            .or_else(|| self.issuer_regex.as_ref().map(|r| format!("/{r}/")))
            .unwrap_or_else(|| "any".into());
        let subject = self
            .subject
            .clone()
            .or_else(|| self.subject_regex.as_ref().map(|r| format!("/{r}/")))
            .unwrap_or_else(|| "any".into());
        let claims: String = self
            .claims
            .iter()
            .map(|(k, v)| format!(", {k} {v}"))
            .collect();
        format!("issuer {issuer}, subject {subject}{claims}")
    }
}
