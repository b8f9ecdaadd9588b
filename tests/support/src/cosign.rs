//! Real, offline cosign signature fixtures, minted at test time.
//!
//! - [`CosignKey`]: a key pair as `cosign generate-key-pair` makes (ECDSA P-256), for key-based
//!   verification.
//! - [`TestSigstore`]: a Fulcio-like CA, Rekor v1 and v2 logs ([`crate::tlog`]) and a timestamp
//!   authority ([`crate::tsa`]), its `trusted_root.json`, leaf certificates ([`Leaf`]) for
//!   keyless signing, and Rekor SET bundles. Sigstore bundles are in [`crate::bundle`].
//! - [`simple_signing_payload`] and [`push_signature`]: the signed payload and the legacy
//!   `sha256-<hex>.sig` signature manifest, pushed to a [`crate::Registry`].
//!
//! Everything is real cryptography: key signatures are DER ECDSA-SHA256 over the payload, leaves
//! chain to the CA root (codeSigning), and the SET is the log key's signature over the RFC 8785
//! canonical JSON of the bundle's `Payload`. Nothing here touches the network but the registry.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::elliptic_curve::Generate as _;
use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::tlog::TestLog;
use crate::tsa::TestTsa;

/// Fulcio's OIDC issuer extension, legacy form: the extension value is the raw issuer text.
const OID_ISSUER_V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
/// Fulcio's OIDC issuer extension, current form: the value is a DER `UTF8String`.
const OID_ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];

/// Media type of a cosign signature layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// `validFor.start` of every key and CA in [`TestSigstore::trusted_root_json`].
const VALID_FROM: &str = "2020-01-01T00:00:00Z";

/// DER ECDSA-SHA256 signature of `payload` by `key`.
pub(crate) fn sign_der(key: &SigningKey, payload: &[u8]) -> Vec<u8> {
    let sig: DerSignature = key.sign(payload);
    sig.as_bytes().to_vec()
}

/// Base64 (standard, padded) of the DER ECDSA-SHA256 signature of `payload` by `key`.
fn sign_b64(key: &SigningKey, payload: &[u8]) -> String {
    B64.encode(sign_der(key, payload))
}

/// DER SubjectPublicKeyInfo of `key`'s public half.
pub(crate) fn spki_der(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_public_key_der()
        .expect("encode P-256 public key as SPKI DER")
        .as_bytes()
        .to_vec()
}

/// PEM (`-----BEGIN <label>-----`, 64-column base64, LF) of `der`.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// `-----BEGIN PUBLIC KEY-----` PEM of `key`'s public half.
fn spki_pem(key: &SigningKey) -> String {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("encode P-256 public key as PEM")
}

/// A cosign key pair (ECDSA P-256), as `cosign generate-key-pair` would make; only the public
/// half is written out (as `cosign.pub`).
pub struct CosignKey {
    pub(crate) key: SigningKey,
}

impl CosignKey {
    /// A fresh random key pair.
    pub fn generate() -> CosignKey {
        CosignKey {
            key: SigningKey::generate(),
        }
    }

    /// The P-256 private key in `pem`, unencrypted PKCS#8 (`-----BEGIN PRIVATE KEY-----`): the
    /// form `scripts/release` signs with (`PORTCULLIS_RELEASE_KEY_FILE`).
    pub fn from_pkcs8_pem(pem: &str) -> CosignKey {
        CosignKey {
            key: SigningKey::from_pkcs8_pem(pem)
                .unwrap_or_else(|e| panic!("not an unencrypted PKCS#8 P-256 key: {e}")),
        }
    }

    /// The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), what `cosign.pub` holds.
    pub fn public_pem(&self) -> String {
        spki_pem(&self.key)
    }

    /// Base64 (standard, padded) of the DER ECDSA-SHA256 signature of `payload`: the value of
    /// the `dev.cosignproject.cosign/signature` annotation.
    pub fn sign(&self, payload: &[u8]) -> String {
        sign_b64(&self.key, payload)
    }

    /// Writes [`CosignKey::public_pem`] to `path`.
    pub fn write_public(&self, path: &Path) {
        std::fs::write(path, self.public_pem())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// A test Sigstore instance: a Fulcio-like CA (a self-signed ECDSA P-256 root with CA:true and
/// keyCertSign, that issues leaves directly), a Rekor v1 log (ECDSA P-256), a Rekor v2 log
/// (Ed25519) and a timestamp authority; see [`crate::tlog`] and [`crate::tsa`].
pub struct TestSigstore {
    ca_issuer: Issuer<'static, KeyPair>,
    ca_der: Vec<u8>,
    rekor: TestLog,
    rekor_v2: TestLog,
    tsa: TestTsa,
}

/// A self-signed CA (ECDSA P-256, CA:true, keyCertSign) named `O=portcullis-test, CN=<cn>`,
/// valid 2020-01-01 to 2100-01-01: its issuer handle and its DER.
pub(crate) fn new_ca(common_name: &str) -> (Issuer<'static, KeyPair>, Vec<u8>) {
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate CA key");
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "portcullis-test");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let ca = params.self_signed(&ca_key).expect("self-sign CA");
    (Issuer::new(params, ca_key), ca.der().to_vec())
}

impl Default for TestSigstore {
    fn default() -> Self {
        TestSigstore::new()
    }
}

impl TestSigstore {
    /// A fresh CA, logs and TSA.
    pub fn new() -> TestSigstore {
        let (ca_issuer, ca_der) = new_ca("test fulcio");
        TestSigstore {
            ca_issuer,
            ca_der,
            rekor: TestLog::rekor_v1(),
            rekor_v2: TestLog::rekor_v2(),
            tsa: TestTsa::new(),
        }
    }

    /// The Rekor v1 log (`https://rekor.test`): SET bundles and Rekor v1 bundle entries.
    pub fn rekor(&self) -> &TestLog {
        &self.rekor
    }

    /// The Rekor v2 log (`https://log2025-1.rekor.test`).
    pub fn rekor_v2(&self) -> &TestLog {
        &self.rekor_v2
    }

    /// The timestamp authority.
    pub fn tsa(&self) -> &TestTsa {
        &self.tsa
    }

    /// The CA root certificate as PEM (what a `dev.sigstore.cosign/chain` annotation holds).
    pub fn ca_pem(&self) -> String {
        pem("CERTIFICATE", &self.ca_der)
    }

    /// The CA root certificate as DER.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca_der.clone()
    }

    /// The Rekor v1 log's public key as SPKI PEM (what `SIGSTORE_REKOR_PUBLIC_KEY` would point
    /// at).
    pub fn log_public_pem(&self) -> String {
        self.rekor.public_key_pem()
    }

    /// `hex(sha256(DER SPKI of the Rekor v1 log key))`: the log ID, as in a SET bundle's `logID`.
    pub fn log_id_hex(&self) -> String {
        self.rekor.log_id_hex()
    }

    /// Sigstore `trusted_root.json` (media type
    /// `application/vnd.dev.sigstore.trustedroot+json;version=0.1`) naming this instance's
    /// Rekor v1 log (`https://rekor.test`, first) and Rekor v2 log, its CA root
    /// (`https://fulcio.test`) and its TSA, all valid from 2020-01-01 with no end; no CT logs.
    /// Bytes fields are base64 (standard, padded), as protobuf JSON writes them.
    pub fn trusted_root_json(&self) -> String {
        let root = json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [self.rekor.trusted_root_entry(), self.rekor_v2.trusted_root_entry()],
            "certificateAuthorities": [{
                "subject": { "organization": "portcullis-test", "commonName": "test fulcio" },
                "uri": "https://fulcio.test",
                "certChain": { "certificates": [{ "rawBytes": B64.encode(&self.ca_der) }] },
                "validFor": { "start": VALID_FROM }
            }],
            "ctlogs": [],
            "timestampAuthorities": [self.tsa.trusted_root_entry()]
        });
        serde_json::to_string_pretty(&root).expect("serialize trusted root")
    }

    /// A Fulcio-style leaf certificate with a fresh P-256 key, issued by the CA: empty subject;
    /// a critical SAN that is an email if `identity` contains `@` and no `://`, a URI otherwise;
    /// EKU codeSigning; key usage digitalSignature; the OIDC issuer in extensions
    /// 1.3.6.1.4.1.57264.1.1 (raw UTF-8) and 1.3.6.1.4.1.57264.1.8 (DER UTF8String); valid from
    /// `not_before` to `not_after` (unix seconds), so an expired leaf is easy to make.
    pub fn issue_leaf(
        &self,
        identity: &str,
        issuer: &str,
        not_before: i64,
        not_after: i64,
    ) -> Leaf {
        self.issue_ci_leaf(identity, issuer, (not_before, not_after), &[])
    }

    /// [`TestSigstore::issue_leaf`] with Fulcio CI claims: `(n, value)` is extension
    /// 1.3.6.1.4.1.57264.1.n, raw text for GitHub's legacy claims (n < 8) and a DER
    /// `UTF8String` for the current ones (n >= 8), as Fulcio writes them.
    pub fn issue_ci_leaf(
        &self,
        identity: &str,
        issuer: &str,
        (not_before, not_after): (i64, i64),
        claims: &[(u64, &str)],
    ) -> Leaf {
        let key = SigningKey::generate();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let ia5 = rcgen::string::Ia5String::try_from(identity.to_string())
            .unwrap_or_else(|e| panic!("identity {identity:?} is not IA5 text: {e}"));
        params.subject_alt_names = if identity.contains('@') && !identity.contains("://") {
            vec![SanType::Rfc822Name(ia5)]
        } else {
            vec![SanType::URI(ia5)]
        };
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.use_authority_key_identifier_extension = true;
        params.custom_extensions = vec![
            CustomExtension::from_oid_content(OID_ISSUER_V1, issuer.as_bytes().to_vec()),
            CustomExtension::from_oid_content(OID_ISSUER_V2, crate::der::utf8_string(issuer)),
        ];
        for &(n, value) in claims {
            let content = if n < 8 {
                value.as_bytes().to_vec()
            } else {
                crate::der::utf8_string(value)
            };
            let oid = [1, 3, 6, 1, 4, 1, 57264, 1, n];
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(&oid, content));
        }
        params.not_before = unix_to_datetime(not_before);
        params.not_after = unix_to_datetime(not_after);
        let cert = params
            .signed_by(&P256Public::of(&key), &self.ca_issuer)
            .expect("issue leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
            not_before,
            not_after,
        }
    }

    /// A Rekor SET bundle, the JSON of cosign's `dev.sigstore.cosign/bundle` annotation, for the
    /// signature `signature_b64` by `leaf_pem`'s key over `payload`:
    /// `{"SignedEntryTimestamp": .., "Payload": {"body", "integratedTime", "logIndex": 1, "logID"}}`
    /// where `body` is base64 of the (canonical) hashedrekord entry and the SET is the log key's
    /// ECDSA-SHA256 DER signature over the RFC 8785 canonical JSON of `Payload`.
    pub fn set_bundle(
        &self,
        payload: &[u8],
        signature_b64: &str,
        leaf_pem: &str,
        integrated_time: i64,
    ) -> String {
        let signature = B64
            .decode(signature_b64)
            .unwrap_or_else(|e| panic!("signature is not base64: {e}"));
        let verifier = crate::rekor_body::Verifier {
            pem: leaf_pem.to_string(),
            der: Vec::new(), // hashedrekord 0.0.1 records the PEM only
            is_certificate: true,
        };
        let digest = Sha256::digest(payload).into();
        let body = crate::rekor_body::hashedrekord_v001(&digest, &signature, &verifier);
        self.rekor.cosign_bundle_json(&body, integrated_time, 1)
    }
}

/// A leaf certificate issued by [`TestSigstore::issue_leaf`], with its private key.
pub struct Leaf {
    /// The certificate as PEM: the `dev.sigstore.cosign/certificate` annotation.
    pub cert_pem: String,
    /// The same certificate as DER.
    pub cert_der: Vec<u8>,
    pub(crate) key: SigningKey,
    /// Validity, unix seconds.
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

impl Leaf {
    /// Base64 (standard, padded) of the DER ECDSA-SHA256 signature of `payload` by the leaf key.
    pub fn sign(&self, payload: &[u8]) -> String {
        sign_b64(&self.key, payload)
    }

    /// The leaf's public key as SPKI PEM.
    pub fn public_pem(&self) -> String {
        spki_pem(&self.key)
    }
}

/// A P-256 public key (uncompressed SEC1 point) as rcgen wants a subject key.
pub(crate) struct P256Public(Vec<u8>);

impl P256Public {
    pub(crate) fn of(key: &SigningKey) -> P256Public {
        P256Public(key.verifying_key().to_sec1_point(false).as_bytes().to_vec())
    }
}

impl PublicKeyData for P256Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn unix_to_datetime(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or_else(|e| panic!("unix time {secs} out of range: {e}"))
}

/// cosign's simple-signing payload for `docker_reference` (e.g. `127.0.0.1:5000/test/small`)
/// and `manifest_digest` (`sha256:...`), byte for byte as cosign writes it:
/// `{"critical":{"identity":{"docker-reference":REF},"image":{"docker-manifest-digest":DIGEST},"type":"cosign container image signature"},"optional":null}`.
pub fn simple_signing_payload(docker_reference: &str, manifest_digest: &str) -> Vec<u8> {
    let s = |v: &str| serde_json::to_string(v).expect("serialize string");
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":{}}},\"image\":{{\"docker-manifest-digest\":{}}},\"type\":\"cosign container image signature\"}},\"optional\":null}}",
        s(docker_reference),
        s(manifest_digest)
    )
    .into_bytes()
}

/// One layer of a legacy cosign signature manifest.
#[derive(Debug, Clone, Default)]
pub struct SigLayer {
    /// The signed payload, usually [`simple_signing_payload`]; stored as the layer blob.
    pub payload: Vec<u8>,
    /// `dev.cosignproject.cosign/signature`.
    pub signature_b64: String,
    /// `dev.sigstore.cosign/certificate` (keyless: the leaf PEM).
    pub certificate_pem: Option<String>,
    /// `dev.sigstore.cosign/chain` (keyless: the CA chain PEM).
    pub chain_pem: Option<String>,
    /// `dev.sigstore.cosign/bundle` (the Rekor SET bundle JSON).
    pub bundle_json: Option<String>,
}

impl SigLayer {
    /// This layer as a generic cosign manifest layer.
    fn cosign_layer(&self) -> CosignLayer<'_> {
        CosignLayer {
            media_type: SIMPLE_SIGNING_MEDIA_TYPE,
            blob: &self.payload,
            annotations: annotations(&[
                (
                    "dev.cosignproject.cosign/signature",
                    Some(&self.signature_b64),
                ),
                (
                    "dev.sigstore.cosign/certificate",
                    self.certificate_pem.as_ref(),
                ),
                ("dev.sigstore.cosign/chain", self.chain_pem.as_ref()),
                ("dev.sigstore.cosign/bundle", self.bundle_json.as_ref()),
            ]),
        }
    }
}

/// One layer of a cosign `.sig` or `.att` manifest: blob, media type and annotations.
pub(crate) struct CosignLayer<'a> {
    pub media_type: &'static str,
    pub blob: &'a [u8],
    pub annotations: serde_json::Map<String, serde_json::Value>,
}

/// The annotations among `pairs` that have a value.
pub(crate) fn annotations(
    pairs: &[(&str, Option<&String>)],
) -> serde_json::Map<String, serde_json::Value> {
    pairs
        .iter()
        .filter_map(|(name, value)| value.map(|v| ((*name).to_string(), v.clone().into())))
        .collect()
}

/// The manifest JSON that [`push_cosign_manifest`] pushes for `layers`, given the config blob's
/// digest and size. Split out so it can be checked without a registry.
fn cosign_manifest(config: (&str, usize), layers: &[CosignLayer]) -> serde_json::Value {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            json!({
                "mediaType": l.media_type,
                "size": l.blob.len(),
                "digest": crate::sha256_hex(l.blob),
                "annotations": l.annotations,
            })
        })
        .collect();
    json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": config.1,
            "digest": config.0,
        },
        "layers": layers,
    })
}

/// `sha256-<hex>.<suffix>`: the tag cosign stores `.sig` or `.att` of `manifest_digest` under.
pub(crate) fn cosign_tag(manifest_digest: &str, suffix: &str) -> String {
    let hex = manifest_digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {manifest_digest}"));
    format!("sha256-{hex}.{suffix}")
}

/// `sha256-<hex>.sig`: the tag cosign stores the signatures of `manifest_digest` under.
pub fn signature_tag(manifest_digest: &str) -> String {
    cosign_tag(manifest_digest, "sig")
}

/// Pushes a cosign legacy signature manifest for `manifest_digest` to `registry`, repository
/// `repo`, at tag `sha256-<hex>.sig` (replacing whatever was there): each layer's payload and a
/// small OCI config are uploaded as blobs (monolithic POST + PUT), then an OCI image manifest
/// whose layers are `application/vnd.dev.cosign.simplesigning.v1+json` with the cosign
/// annotations. Returns the signature manifest's digest.
///
/// Blocking std networking (plain HTTP only), so it works from a plain `#[test]` and inside a
/// `#[tokio::test]` alike. Panics with the registry's answer on any non-2xx.
pub fn push_signature(
    registry: &crate::Registry,
    repo: &str,
    manifest_digest: &str,
    layers: &[SigLayer],
) -> String {
    let layers: Vec<CosignLayer> = layers.iter().map(SigLayer::cosign_layer).collect();
    push_cosign_manifest(registry, repo, &signature_tag(manifest_digest), &layers)
}

/// Uploads the blobs of `layers` and a small OCI config (its `rootfs.diff_ids` the layers'
/// digests, as cosign writes it), then PUTs the manifest at `tag`. Returns its digest.
pub(crate) fn push_cosign_manifest(
    registry: &crate::Registry,
    repo: &str,
    tag: &str,
    layers: &[CosignLayer],
) -> String {
    let diff_ids: Vec<String> = layers.iter().map(|l| crate::sha256_hex(l.blob)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "os": "",
        "created": "0001-01-01T00:00:00Z",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("serialize config");
    for l in layers {
        registry.push_blob(repo, l.blob);
    }
    let config_digest = registry.push_blob(repo, &config);
    let manifest = cosign_manifest((&config_digest, config.len()), layers);
    let manifest = serde_json::to_vec(&manifest).expect("serialize manifest");
    registry.put_manifest(
        repo,
        tag,
        "application/vnd.oci.image.manifest.v1+json",
        &manifest,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_cosigns_bytes() {
        let p = simple_signing_payload("127.0.0.1:5000/test/small", "sha256:ab");
        assert_eq!(
            std::str::from_utf8(&p).unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/test/small"},"image":{"docker-manifest-digest":"sha256:ab"},"type":"cosign container image signature"},"optional":null}"#
        );
    }

    #[test]
    fn manifest_annotations_only_when_present() {
        let layers = [SigLayer {
            payload: b"p".to_vec(),
            signature_b64: "c2ln".into(),
            bundle_json: Some("{}".into()),
            ..SigLayer::default()
        }];
        let m = cosign_manifest(("sha256:00", 2), &[layers[0].cosign_layer()]);
        let ann = m["layers"][0]["annotations"].as_object().unwrap();
        assert_eq!(ann.len(), 2);
        assert_eq!(ann["dev.cosignproject.cosign/signature"], "c2ln");
        assert_eq!(ann["dev.sigstore.cosign/bundle"], "{}");
        assert_eq!(m["layers"][0]["size"], 1);
        assert_eq!(m["layers"][0]["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
    }
}
