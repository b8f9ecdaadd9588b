//! Legacy cosign attestations (`cosign attest` before v3): the `sha256-<hex>.att` manifest whose
//! layers are DSSE envelopes (`application/vnd.dsse.envelope.v1+json`) with cosign's
//! annotations, logged in Rekor v1 as `intoto` 0.0.2 entries; and, for such a layer, the
//! equivalent Sigstore bundle v0.1 (how a verifier can check it with sigstore-verify).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::bundle::{assemble, Signer, BUNDLE_V01_MEDIA_TYPE};
use crate::cosign::{annotations, cosign_tag, push_cosign_manifest, CosignLayer, TestSigstore};
use crate::intoto::{envelope, pae, IN_TOTO_PAYLOAD_TYPE};
use crate::rekor_body;

/// Media type of a cosign attestation layer: a DSSE envelope.
pub const DSSE_ENVELOPE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";

/// One layer of a legacy cosign attestation manifest.
#[derive(Debug, Clone, Default)]
pub struct AttLayer {
    /// The layer blob: `{"payloadType":"application/vnd.in-toto+json","payload":B64,
    /// "signatures":[{"keyid":"","sig":B64}]}`, the signature over the DSSE PAE.
    pub envelope: Vec<u8>,
    /// `predicateType` annotation.
    pub predicate_type: String,
    /// `dev.sigstore.cosign/certificate` (keyless: the leaf PEM).
    pub certificate_pem: Option<String>,
    /// `dev.sigstore.cosign/chain` (keyless: the CA PEM).
    pub chain_pem: Option<String>,
    /// `dev.sigstore.cosign/bundle`: the SET bundle of the `intoto` 0.0.2 entry.
    pub bundle_json: Option<String>,
}

impl AttLayer {
    fn cosign_layer(&self) -> CosignLayer<'_> {
        let empty = String::new();
        CosignLayer {
            media_type: DSSE_ENVELOPE_MEDIA_TYPE,
            blob: &self.envelope,
            annotations: annotations(&[
                // cosign sets an empty signature annotation on attestation layers.
                ("dev.cosignproject.cosign/signature", Some(&empty)),
                (
                    "dev.sigstore.cosign/certificate",
                    self.certificate_pem.as_ref(),
                ),
                ("dev.sigstore.cosign/chain", self.chain_pem.as_ref()),
                ("dev.sigstore.cosign/bundle", self.bundle_json.as_ref()),
                ("predicateType", Some(&self.predicate_type)),
            ]),
        }
    }
}

impl TestSigstore {
    /// What legacy `cosign attest` pushes for the in-toto `statement` (see [`crate::intoto`]):
    /// `signer`'s DSSE envelope, appended to the Rekor v1 log as an `intoto` 0.0.2 entry whose
    /// SET bundle (at `integrated_time`) is the bundle annotation; keyless layers also carry the
    /// leaf and the CA as certificate and chain.
    pub fn attestation_layer(
        &self,
        signer: Signer<'_>,
        statement: &[u8],
        integrated_time: i64,
    ) -> AttLayer {
        let signature = signer.sign(&pae(IN_TOTO_PAYLOAD_TYPE, statement));
        let envelope = envelope(IN_TOTO_PAYLOAD_TYPE, statement, &signature, Some(""));
        let envelope = serde_json::to_vec(&envelope).expect("serialize envelope");
        let verifier = signer.verifier();
        let body = rekor_body::intoto_v002(
            &envelope,
            IN_TOTO_PAYLOAD_TYPE,
            statement,
            &signature,
            &verifier,
        );
        let index = self.rekor().append(&body).index;
        let keyless = verifier.is_certificate;
        AttLayer {
            envelope,
            predicate_type: predicate_type(statement),
            certificate_pem: keyless.then(|| verifier.pem.clone()),
            chain_pem: keyless.then(|| self.ca_pem()),
            bundle_json: Some(
                self.rekor()
                    .cosign_bundle_json(&body, integrated_time, index),
            ),
        }
    }
}

fn predicate_type(statement: &[u8]) -> String {
    let statement: Value = serde_json::from_slice(statement).expect("statement is JSON");
    statement["predicateType"]
        .as_str()
        .expect("statement has a predicateType")
        .to_string()
}

/// Pushes a cosign attestation manifest for `manifest_digest` to `registry`, repository `repo`,
/// at tag `sha256-<hex>.att` (replacing whatever was there), as [`crate::push_signature`] does
/// for `.sig`. Returns the attestation manifest's digest.
pub fn push_attestation(
    registry: &crate::Registry,
    repo: &str,
    manifest_digest: &str,
    layers: &[AttLayer],
) -> String {
    let layers: Vec<CosignLayer> = layers.iter().map(AttLayer::cosign_layer).collect();
    push_cosign_manifest(registry, repo, &cosign_tag(manifest_digest, "att"), &layers)
}

/// The Sigstore bundle v0.1 (`application/vnd.dev.sigstore.bundle+json;version=0.1`) that says
/// what `layer` says: its envelope as `dsseEnvelope`; the certificate annotation as the
/// `x509CertificateChain` (or, keyed, an empty `publicKey` hint: the key comes from the policy);
/// the SET bundle as the one tlog entry (kind and version from its body, integrated time, log
/// index, log ID, SET as `inclusionPromise`, no inclusion proof).
pub fn attestation_bundle_v01(layer: &AttLayer) -> String {
    let envelope: Value = serde_json::from_slice(&layer.envelope).expect("envelope is JSON");
    let set_bundle: Value = serde_json::from_str(
        layer
            .bundle_json
            .as_deref()
            .expect("the layer has a bundle annotation"),
    )
    .expect("bundle annotation is JSON");
    let material = match &layer.certificate_pem {
        Some(pem) => {
            json!({ "x509CertificateChain": { "certificates": [{ "rawBytes": B64.encode(pem_der(pem)) }] } })
        }
        None => json!({ "publicKey": { "hint": "" } }),
    };
    let entry = tlog_entry(&set_bundle);
    assemble(
        BUNDLE_V01_MEDIA_TYPE,
        material,
        vec![entry],
        Vec::new(),
        ("dsseEnvelope", envelope),
    )
}

/// A bundle `tlogEntries` item from cosign's SET bundle.
fn tlog_entry(set_bundle: &Value) -> Value {
    let payload = &set_bundle["Payload"];
    let text = |v: &Value| v.as_str().expect("string field").to_string();
    let body_b64 = text(&payload["body"]);
    let body: Value = serde_json::from_slice(&B64.decode(&body_b64).expect("body is base64"))
        .expect("body is JSON");
    let log_id = hex::decode(text(&payload["logID"])).expect("logID is hex");
    json!({
        "logIndex": payload["logIndex"].to_string(),
        "logId": { "keyId": B64.encode(log_id) },
        "kindVersion": { "kind": body["kind"], "version": body["apiVersion"] },
        "integratedTime": payload["integratedTime"].to_string(),
        "inclusionPromise": { "signedEntryTimestamp": set_bundle["SignedEntryTimestamp"] },
        "canonicalizedBody": body_b64,
    })
}

/// The DER inside a one-certificate PEM.
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    B64.decode(b64).expect("PEM body is base64")
}
