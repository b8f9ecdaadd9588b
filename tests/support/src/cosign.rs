//! Real, offline cosign signature fixtures, minted at test time.
//!
//! - [`CosignKey`]: a key pair as `cosign generate-key-pair` makes (ECDSA P-256), for key-based
//!   verification.
//! - [`TestSigstore`]: a Fulcio-like CA and a Rekor-like log key, its `trusted_root.json`, leaf
//!   certificates ([`Leaf`]) for keyless signing, and Rekor SET bundles.
//! - [`simple_signing_payload`] and [`push_signature`]: the signed payload and the legacy
//!   `sha256-<hex>.sig` signature manifest, pushed to a [`crate::Registry`].
//!
//! Everything is real cryptography: key signatures are DER ECDSA-SHA256 over the payload, leaves
//! chain to the CA root (codeSigning), and the SET is the log key's signature over the RFC 8785
//! canonical JSON of the bundle's `Payload`. Nothing here touches the network but the registry.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{DerSignature, SigningKey};
use p256::elliptic_curve::Generate as _;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Fulcio's OIDC issuer extension, legacy form: the extension value is the raw issuer text.
const OID_ISSUER_V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
/// Fulcio's OIDC issuer extension, current form: the value is a DER `UTF8String`.
const OID_ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];

/// Media type of a cosign signature layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// `validFor.start` of every key and CA in [`TestSigstore::trusted_root_json`].
const VALID_FROM: &str = "2020-01-01T00:00:00Z";

/// Base64 (standard, padded) of the DER ECDSA-SHA256 signature of `payload` by `key`.
fn sign_b64(key: &SigningKey, payload: &[u8]) -> String {
    let sig: DerSignature = key.sign(payload);
    B64.encode(sig.as_bytes())
}

/// DER SubjectPublicKeyInfo of `key`'s public half.
fn spki_der(key: &SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_public_key_der()
        .expect("encode P-256 public key as SPKI DER")
        .as_bytes()
        .to_vec()
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
    key: SigningKey,
}

impl CosignKey {
    /// A fresh random key pair.
    pub fn generate() -> CosignKey {
        CosignKey {
            key: SigningKey::generate(),
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
/// keyCertSign, that issues leaves directly) and a Rekor-like transparency log key (ECDSA P-256).
pub struct TestSigstore {
    ca_issuer: Issuer<'static, KeyPair>,
    ca_der: Vec<u8>,
    ca_pem: String,
    log_key: SigningKey,
}

impl Default for TestSigstore {
    fn default() -> Self {
        TestSigstore::new()
    }
}

impl TestSigstore {
    /// A fresh CA and log key.
    pub fn new() -> TestSigstore {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate CA key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "portcullis-test");
        dn.push(DnType::CommonName, "test fulcio");
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
        TestSigstore {
            ca_der: ca.der().to_vec(),
            ca_pem: ca.pem(),
            ca_issuer: Issuer::new(params, ca_key),
            log_key: SigningKey::generate(),
        }
    }

    /// The CA root certificate as PEM (what a `dev.sigstore.cosign/chain` annotation holds).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The CA root certificate as DER.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca_der.clone()
    }

    /// The log's public key as SPKI PEM (what `SIGSTORE_REKOR_PUBLIC_KEY` would point at).
    pub fn log_public_pem(&self) -> String {
        spki_pem(&self.log_key)
    }

    /// `hex(sha256(DER SPKI of the log key))`: the log ID, as in a bundle's `logID`.
    pub fn log_id_hex(&self) -> String {
        hex::encode(Sha256::digest(spki_der(&self.log_key)))
    }

    /// Sigstore `trusted_root.json` (media type
    /// `application/vnd.dev.sigstore.trustedroot+json;version=0.1`) naming this instance's log
    /// key (`https://rekor.test`) and CA root (`https://fulcio.test`), both valid from
    /// 2020-01-01 with no end; no CT logs, no timestamp authorities. Bytes fields are base64
    /// (standard, padded), as protobuf JSON writes them.
    pub fn trusted_root_json(&self) -> String {
        let log_spki = spki_der(&self.log_key);
        let root = json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://rekor.test",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": B64.encode(&log_spki),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": { "start": VALID_FROM }
                },
                "logId": { "keyId": B64.encode(Sha256::digest(&log_spki)) }
            }],
            "certificateAuthorities": [{
                "subject": { "organization": "portcullis-test", "commonName": "test fulcio" },
                "uri": "https://fulcio.test",
                "certChain": { "certificates": [{ "rawBytes": B64.encode(&self.ca_der) }] },
                "validFor": { "start": VALID_FROM }
            }],
            "ctlogs": [],
            "timestampAuthorities": []
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
            CustomExtension::from_oid_content(OID_ISSUER_V2, der_utf8_string(issuer)),
        ];
        params.not_before = unix_to_datetime(not_before);
        params.not_after = unix_to_datetime(not_after);
        let public = P256Public(key.verifying_key().to_sec1_point(false).as_bytes().to_vec());
        let cert = params
            .signed_by(&public, &self.ca_issuer)
            .expect("issue leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
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
        let body = json!({
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": { "hash": { "algorithm": "sha256", "value": hex::encode(Sha256::digest(payload)) } },
                "signature": {
                    "content": signature_b64,
                    "publicKey": { "content": B64.encode(leaf_pem.as_bytes()) }
                }
            }
        });
        let body = serde_json_canonicalizer::to_vec(&body).expect("canonicalize hashedrekord");
        let payload = json!({
            "body": B64.encode(body),
            "integratedTime": integrated_time,
            "logIndex": 1,
            "logID": self.log_id_hex(),
        });
        let canonical = serde_json_canonicalizer::to_vec(&payload).expect("canonicalize payload");
        let set = sign_b64(&self.log_key, &canonical);
        serde_json::to_string(&json!({ "SignedEntryTimestamp": set, "Payload": payload }))
            .expect("serialize bundle")
    }
}

/// A leaf certificate issued by [`TestSigstore::issue_leaf`], with its private key.
pub struct Leaf {
    /// The certificate as PEM: the `dev.sigstore.cosign/certificate` annotation.
    pub cert_pem: String,
    /// The same certificate as DER.
    pub cert_der: Vec<u8>,
    key: SigningKey,
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
struct P256Public(Vec<u8>);

impl PublicKeyData for P256Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// DER `UTF8String` holding `s`.
fn der_utf8_string(s: &str) -> Vec<u8> {
    let mut out = vec![0x0c];
    let len = s.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(s.as_bytes());
    out
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

/// The manifest JSON that [`push_signature`] pushes for `layers`, given the config blob's
/// digest and size. Split out so it can be checked without a registry.
fn signature_manifest(config: (&str, usize), layers: &[SigLayer]) -> serde_json::Value {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            let mut ann = serde_json::Map::new();
            ann.insert(
                "dev.cosignproject.cosign/signature".into(),
                l.signature_b64.clone().into(),
            );
            for (name, value) in [
                ("dev.sigstore.cosign/certificate", &l.certificate_pem),
                ("dev.sigstore.cosign/chain", &l.chain_pem),
                ("dev.sigstore.cosign/bundle", &l.bundle_json),
            ] {
                if let Some(v) = value {
                    ann.insert(name.into(), v.clone().into());
                }
            }
            json!({
                "mediaType": SIMPLE_SIGNING_MEDIA_TYPE,
                "size": l.payload.len(),
                "digest": crate::sha256_hex(&l.payload),
                "annotations": ann,
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

/// `sha256-<hex>.sig`: the tag cosign stores the signatures of `manifest_digest` under.
pub fn signature_tag(manifest_digest: &str) -> String {
    let hex = manifest_digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {manifest_digest}"));
    format!("sha256-{hex}.sig")
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
    let url = registry.url();
    assert!(
        url.starts_with("http://"),
        "push_signature speaks plain HTTP only, registry is at {url}"
    );
    let addr = registry.addr;
    let tag = signature_tag(manifest_digest);
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| crate::sha256_hex(&l.payload))
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "os": "",
        "created": "0001-01-01T00:00:00Z",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("serialize config");
    for l in layers {
        push_blob(addr, repo, &l.payload);
    }
    let config_digest = push_blob(addr, repo, &config);
    let manifest = signature_manifest((&config_digest, config.len()), layers);
    let manifest = serde_json::to_vec(&manifest).expect("serialize manifest");
    let digest = crate::sha256_hex(&manifest);
    let path = format!("/v2/{repo}/manifests/{tag}");
    let resp = http(
        addr,
        "PUT",
        &path,
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    );
    resp.expect_2xx("PUT", &path);
    if let Some(d) = resp.header("docker-content-digest") {
        assert_eq!(d, digest, "registry's digest of the signature manifest");
    }
    digest
}

/// Monolithic blob upload (POST then PUT `?digest=`), like `benches/e2e/run.sh`. Returns the
/// digest.
fn push_blob(addr: SocketAddr, repo: &str, data: &[u8]) -> String {
    let digest = crate::sha256_hex(data);
    let start = format!("/v2/{repo}/blobs/uploads/");
    let resp = http(addr, "POST", &start, &[], &[]);
    resp.expect_2xx("POST", &start);
    let location = resp
        .header("location")
        .unwrap_or_else(|| panic!("POST {start}: no Location header"));
    // Distribution answers an absolute URL; keep only the path and query.
    let mut path = match location.find("://") {
        Some(i) => {
            let rest = &location[i + 3..];
            rest.find('/').map_or("/", |p| &rest[p..]).to_string()
        }
        None => location.to_string(),
    };
    path.push(if path.contains('?') { '&' } else { '?' });
    path.push_str("digest=");
    path.push_str(&digest);
    let resp = http(
        addr,
        "PUT",
        &path,
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    resp.expect_2xx("PUT", &path);
    digest
}

/// A fully read blocking HTTP response.
struct Reply {
    status: u16,
    /// Header lines in order, names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn expect_2xx(&self, method: &str, path: &str) {
        assert!(
            (200..300).contains(&self.status),
            "{method} {path}: registry answered {} {:?}\n{}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        );
    }
}

/// One blocking HTTP/1.1 exchange with a body (`Connection: close`, read to EOF).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let timeout = Duration::from_secs(30);
    let fail = |e: std::io::Error| -> ! { panic!("{method} http://{addr}{path}: {e}") };
    let mut s = TcpStream::connect_timeout(&addr, timeout).unwrap_or_else(|e| fail(e));
    s.set_read_timeout(Some(timeout))
        .unwrap_or_else(|e| fail(e));
    s.set_write_timeout(Some(timeout))
        .unwrap_or_else(|e| fail(e));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    s.write_all(&raw).unwrap_or_else(|e| fail(e));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| fail(e));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no end of headers in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_string_der() {
        assert_eq!(der_utf8_string("ab"), [0x0c, 2, b'a', b'b']);
        let long = "x".repeat(200);
        let der = der_utf8_string(&long);
        assert_eq!(&der[..3], &[0x0c, 0x81, 200]);
        assert_eq!(der.len(), 203);
    }

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
        let m = signature_manifest(("sha256:00", 2), &layers);
        let ann = m["layers"][0]["annotations"].as_object().unwrap();
        assert_eq!(ann.len(), 2);
        assert_eq!(ann["dev.cosignproject.cosign/signature"], "c2ln");
        assert_eq!(ann["dev.sigstore.cosign/bundle"], "{}");
        assert_eq!(m["layers"][0]["size"], 1);
        assert_eq!(m["layers"][0]["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
    }
}
