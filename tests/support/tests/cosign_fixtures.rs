//! Checks the cosign fixtures with independent code: p256 for key signatures and the SET,
//! a hand-built RFC 8785 string for the SET's signed bytes, rustls-webpki for the leaf's chain,
//! and a real distribution registry for the pushed signature manifest.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey as _;
use portcullis_testkit::{
    http, push_signature, simple_signing_payload, tempdir, CosignKey, Registry, SigLayer,
    TestSigstore,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// codeSigning, 1.3.6.1.5.5.7.3.3, as webpki wants it (OID value bytes).
const CODE_SIGNING: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 3];
/// serverAuth, 1.3.6.1.5.5.7.3.1.
const SERVER_AUTH: &[u8] = &[0x2b, 6, 1, 5, 5, 7, 3, 1];

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

const NOT_BEFORE: i64 = 1_700_000_000;
const NOT_AFTER: i64 = NOT_BEFORE + 600;

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The DER inside a one-certificate PEM, decoded here rather than by the fixture code.
fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    B64.decode(b64).unwrap()
}

fn verify_der_sig(key: &VerifyingKey, payload: &[u8], sig_b64: &str) -> bool {
    let sig = DerSignature::try_from(B64.decode(sig_b64).unwrap().as_slice()).unwrap();
    key.verify(payload, &sig).is_ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn at(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs as u64))
}

/// Chains `leaf_der` to the CA root found in `trusted_root` for `usage` at `time`.
fn verify_chain(
    trusted_root: &Value,
    leaf_der: &[u8],
    time: UnixTime,
    usage: &'static [u8],
) -> Result<(), webpki::Error> {
    let ca = &trusted_root["certificateAuthorities"][0]["certChain"]["certificates"][0]["rawBytes"];
    let root_der = CertificateDer::from(B64.decode(ca.as_str().unwrap()).unwrap());
    let anchor = webpki::anchor_from_trusted_cert(&root_der).unwrap();
    let leaf_der = CertificateDer::from(leaf_der.to_vec());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &[],
        time,
        webpki::KeyUsage::required(usage),
        None,
        None,
    )
    .map(|_| ())
}

#[test]
fn key_signature_verifies_with_the_public_pem() {
    let key = CosignKey::generate();
    let pem = key.public_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    let dir = tempdir();
    let path = dir.path().join("cosign.pub");
    key.write_public(&path);
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, pem);

    let vk = VerifyingKey::from_public_key_pem(&written).unwrap();
    let payload = simple_signing_payload("127.0.0.1:5000/test/small", &digest_of(b"image"));
    let sig = key.sign(&payload);
    assert!(verify_der_sig(&vk, &payload, &sig));

    let mut tampered = payload.clone();
    tampered[10] ^= 1;
    assert!(!verify_der_sig(&vk, &tampered, &sig));
    let other = VerifyingKey::from_public_key_pem(&CosignKey::generate().public_pem()).unwrap();
    assert!(!verify_der_sig(&other, &payload, &sig));
}

#[test]
fn trusted_root_has_the_expected_shape() {
    let ss = TestSigstore::new();
    let root: Value = serde_json::from_str(&ss.trusted_root_json()).unwrap();
    assert_eq!(
        root["mediaType"],
        "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
    );
    let tlog = &root["tlogs"][0];
    assert_eq!(tlog["baseUrl"], "https://rekor.test");
    assert_eq!(tlog["hashAlgorithm"], "SHA2_256");
    assert_eq!(tlog["publicKey"]["keyDetails"], "PKIX_ECDSA_P256_SHA_256");
    assert_eq!(
        tlog["publicKey"]["validFor"]["start"],
        "2020-01-01T00:00:00Z"
    );
    let raw = B64
        .decode(tlog["publicKey"]["rawBytes"].as_str().unwrap())
        .unwrap();
    let key_id = B64
        .decode(tlog["logId"]["keyId"].as_str().unwrap())
        .unwrap();
    assert_eq!(key_id, Sha256::digest(&raw).to_vec());
    assert_eq!(ss.log_id_hex(), hex::encode(&key_id));

    let ca = &root["certificateAuthorities"][0];
    assert_eq!(ca["uri"], "https://fulcio.test");
    assert_eq!(ca["subject"]["organization"], "portcullis-test");
    assert_eq!(ca["subject"]["commonName"], "test fulcio");
    assert_eq!(ca["validFor"]["start"], "2020-01-01T00:00:00Z");
    let ca_der = B64
        .decode(
            ca["certChain"]["certificates"][0]["rawBytes"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(ca_der, pem_to_der(&ss.ca_pem()));
    assert_eq!(root["ctlogs"], Value::Array(vec![]));
    // The Rekor v2 log (Ed25519) and the TSA; their shape is checked by sigstore-verify in
    // bundle_fixtures.rs.
    assert_eq!(root["tlogs"][1]["publicKey"]["keyDetails"], "PKIX_ED25519");
    let tsa = &root["timestampAuthorities"][0];
    assert_eq!(
        tsa["certChain"]["certificates"].as_array().unwrap().len(),
        2
    );
}

#[test]
fn set_verifies_with_the_log_key_from_the_trusted_root() {
    let ss = TestSigstore::new();
    let leaf = ss.issue_leaf(
        "dev@example.com",
        "https://issuer.test",
        NOT_BEFORE,
        NOT_AFTER,
    );
    let payload = simple_signing_payload("127.0.0.1:5000/test/small", &digest_of(b"image"));
    let sig = leaf.sign(&payload);
    let integrated = NOT_BEFORE + 60;
    let bundle: Value =
        serde_json::from_str(&ss.set_bundle(&payload, &sig, &leaf.cert_pem, integrated)).unwrap();

    // The log key, taken back out of trusted_root.json.
    let root: Value = serde_json::from_str(&ss.trusted_root_json()).unwrap();
    let raw = root["tlogs"][0]["publicKey"]["rawBytes"].as_str().unwrap();
    let log_key = VerifyingKey::from_public_key_der(&B64.decode(raw).unwrap()).unwrap();

    let p = &bundle["Payload"];
    assert_eq!(p["integratedTime"], integrated);
    assert_eq!(p["logIndex"], 1);
    assert_eq!(p["logID"], ss.log_id_hex());
    // RFC 8785 for this shape: keys in code-unit order, no whitespace, integers as-is.
    let canonical = |p: &Value| {
        format!(
            r#"{{"body":{},"integratedTime":{},"logID":{},"logIndex":{}}}"#,
            p["body"], p["integratedTime"], p["logID"], p["logIndex"]
        )
    };
    let set = bundle["SignedEntryTimestamp"].as_str().unwrap();
    assert!(verify_der_sig(&log_key, canonical(p).as_bytes(), set));

    // Any change to the signed fields breaks it.
    let mut moved = p.clone();
    moved["integratedTime"] = (integrated + 1).into();
    assert!(!verify_der_sig(&log_key, canonical(&moved).as_bytes(), set));
    let other_log = TestSigstore::new();
    let other_raw: Value = serde_json::from_str(&other_log.trusted_root_json()).unwrap();
    let other_key = VerifyingKey::from_public_key_der(
        &B64.decode(
            other_raw["tlogs"][0]["publicKey"]["rawBytes"]
                .as_str()
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(!verify_der_sig(&other_key, canonical(p).as_bytes(), set));

    // The hashedrekord entry names the payload hash, the signature and the leaf.
    let body: Value =
        serde_json::from_slice(&B64.decode(p["body"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(body["apiVersion"], "0.0.1");
    assert_eq!(body["kind"], "hashedrekord");
    let spec = &body["spec"];
    assert_eq!(spec["data"]["hash"]["algorithm"], "sha256");
    assert_eq!(
        spec["data"]["hash"]["value"],
        hex::encode(Sha256::digest(&payload))
    );
    assert_eq!(spec["signature"]["content"], sig.as_str());
    let pk = B64
        .decode(spec["signature"]["publicKey"]["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(pk).unwrap(), leaf.cert_pem);

    // And the leaf's signature verifies with the key in the leaf certificate.
    let leaf_der = CertificateDer::from(pem_to_der(&leaf.cert_pem));
    let ee = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    let sig_der = B64.decode(&sig).unwrap();
    ee.verify_signature(webpki::aws_lc_rs::ECDSA_P256_SHA256, &payload, &sig_der)
        .unwrap();
    assert!(ee
        .verify_signature(webpki::aws_lc_rs::ECDSA_P256_SHA256, b"other", &sig_der)
        .is_err());
}

#[test]
fn leaf_chains_to_the_root_for_code_signing_inside_its_window_only() {
    let ss = TestSigstore::new();
    let root: Value = serde_json::from_str(&ss.trusted_root_json()).unwrap();
    let leaf = ss.issue_leaf(
        "dev@example.com",
        "https://issuer.test",
        NOT_BEFORE,
        NOT_AFTER,
    );
    let der = pem_to_der(&leaf.cert_pem);
    assert_eq!(der, leaf.cert_der);

    verify_chain(&root, &der, at(NOT_BEFORE + 1), CODE_SIGNING).unwrap();
    verify_chain(&root, &der, at(NOT_AFTER - 1), CODE_SIGNING).unwrap();
    assert!(matches!(
        verify_chain(&root, &der, at(NOT_BEFORE - 1), CODE_SIGNING),
        Err(webpki::Error::CertNotValidYet { .. })
    ));
    assert!(matches!(
        verify_chain(&root, &der, at(NOT_AFTER + 1), CODE_SIGNING),
        Err(webpki::Error::CertExpired { .. })
    ));
    // codeSigning is the only purpose.
    assert!(verify_chain(&root, &der, at(NOT_BEFORE + 1), SERVER_AUTH).is_err());
    // Another instance's root does not anchor it.
    let other: Value = serde_json::from_str(&TestSigstore::new().trusted_root_json()).unwrap();
    assert!(verify_chain(&other, &der, at(NOT_BEFORE + 1), CODE_SIGNING).is_err());
}

#[test]
fn leaf_carries_fulcio_extensions() {
    let ss = TestSigstore::new();
    let issuer = "https://token.actions.githubusercontent.com";
    let oid_prefix = [0x06, 0x0a, 0x2b, 6, 1, 4, 1, 0x83, 0xbf, 0x30, 1];

    let email = ss.issue_leaf("dev@example.com", issuer, NOT_BEFORE, NOT_AFTER);
    let der = email.cert_der.clone();
    // 1.3.6.1.4.1.57264.1.1: OCTET STRING of the raw issuer text.
    let mut v1 = oid_prefix.to_vec();
    v1.extend([1, 0x04, issuer.len() as u8]);
    v1.extend(issuer.as_bytes());
    assert!(contains(&der, &v1), "legacy issuer extension");
    // 1.3.6.1.4.1.57264.1.8: OCTET STRING of a DER UTF8String of the issuer.
    let mut v8 = oid_prefix.to_vec();
    v8.extend([8, 0x04, issuer.len() as u8 + 2, 0x0c, issuer.len() as u8]);
    v8.extend(issuer.as_bytes());
    assert!(contains(&der, &v8), "issuer (v2) extension");
    // SAN (2.5.29.17), critical, holding an rfc822Name [1].
    assert!(contains(
        &der,
        &[0x06, 3, 0x55, 0x1d, 0x11, 0x01, 0x01, 0xff]
    ));
    let mut rfc822 = vec![0x81, "dev@example.com".len() as u8];
    rfc822.extend(b"dev@example.com");
    assert!(contains(&der, &rfc822));
    // Empty subject: the CA's name appears once, as the issuer.
    assert_eq!(der.windows(11).filter(|w| *w == b"test fulcio").count(), 1);

    let workflow = "https://github.com/o/r/.github/workflows/ci.yml@refs/heads/main";
    let uri = ss.issue_leaf(workflow, issuer, NOT_BEFORE, NOT_AFTER);
    let mut uri_san = vec![0x86, workflow.len() as u8];
    uri_san.extend(workflow.as_bytes());
    assert!(contains(&uri.cert_der, &uri_san), "URI SAN");
    assert!(!contains(&uri.cert_der, &rfc822));
    let root: Value = serde_json::from_str(&ss.trusted_root_json()).unwrap();
    verify_chain(&root, &uri.cert_der, at(NOT_BEFORE + 1), CODE_SIGNING).unwrap();
}

/// Pushes a keyed and a keyless signature layer to a real registry, from inside a runtime, and
/// reads the manifest, its annotations and a layer blob back.
#[tokio::test]
async fn pushed_signature_manifest_reads_back() {
    let work = tempdir();
    let reg = Registry::start(work.path());
    let image = digest_of(b"some image manifest");
    let reference = format!("{}/test/small", reg.host());
    let payload = simple_signing_payload(&reference, &image);

    let key = CosignKey::generate();
    let ss = TestSigstore::new();
    let leaf = ss.issue_leaf(
        "dev@example.com",
        "https://issuer.test",
        NOT_BEFORE,
        NOT_AFTER,
    );
    let leaf_sig = leaf.sign(&payload);
    let bundle = ss.set_bundle(&payload, &leaf_sig, &leaf.cert_pem, NOT_BEFORE + 1);
    let layers = [
        SigLayer {
            payload: payload.clone(),
            signature_b64: key.sign(&payload),
            certificate_pem: None,
            chain_pem: None,
            bundle_json: None,
        },
        SigLayer {
            payload: payload.clone(),
            signature_b64: leaf_sig.clone(),
            certificate_pem: Some(leaf.cert_pem.clone()),
            chain_pem: Some(ss.ca_pem()),
            bundle_json: Some(bundle.clone()),
        },
    ];
    let digest = push_signature(&reg, "test/small", &image, &layers);

    let tag = format!("sha256-{}.sig", image.strip_prefix("sha256:").unwrap());
    let url = format!("{}/v2/test/small/manifests/{tag}", reg.url());
    let resp = http::request("GET", &url, &[("Accept", OCI_MANIFEST)]).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(digest_of(&resp.body), digest);
    assert_eq!(resp.header("docker-content-digest"), Some(digest.as_str()));
    let m: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], OCI_MANIFEST);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let got = m["layers"].as_array().unwrap();
    assert_eq!(got.len(), 2);
    for l in got {
        assert_eq!(
            l["mediaType"],
            "application/vnd.dev.cosign.simplesigning.v1+json"
        );
        assert_eq!(l["digest"], digest_of(&payload));
        assert_eq!(l["size"], payload.len());
    }
    let keyed = got[0]["annotations"].as_object().unwrap();
    assert_eq!(keyed.len(), 1);
    assert_eq!(
        keyed["dev.cosignproject.cosign/signature"],
        layers[0].signature_b64.as_str()
    );
    let keyless = got[1]["annotations"].as_object().unwrap();
    assert_eq!(
        keyless["dev.cosignproject.cosign/signature"],
        leaf_sig.as_str()
    );
    assert_eq!(
        keyless["dev.sigstore.cosign/certificate"],
        leaf.cert_pem.as_str()
    );
    assert_eq!(keyless["dev.sigstore.cosign/chain"], ss.ca_pem().as_str());
    assert_eq!(keyless["dev.sigstore.cosign/bundle"], bundle.as_str());

    // The payload blob and the config blob are there too.
    let blob = http::get(&format!(
        "{}/v2/test/small/blobs/{}",
        reg.url(),
        digest_of(&payload)
    ))
    .await;
    assert_eq!(blob.status, 200);
    assert_eq!(&blob.body[..], &payload[..]);
    let config = http::get(&format!(
        "{}/v2/test/small/blobs/{}",
        reg.url(),
        m["config"]["digest"].as_str().unwrap()
    ))
    .await;
    assert_eq!(config.status, 200);

    // Pushing again (another signature) moves the tag.
    let again = push_signature(&reg, "test/small", &image, &layers[..1]);
    assert_ne!(again, digest);
    let resp = http::request("HEAD", &url, &[("Accept", OCI_MANIFEST)]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("docker-content-digest"), Some(again.as_str()));
}

/// Also callable from a plain `#[test]` (no runtime).
#[test]
fn push_signature_works_without_a_runtime() {
    let work = tempdir();
    let reg = Registry::start(work.path());
    let image = digest_of(b"another manifest");
    let key = CosignKey::generate();
    let payload = simple_signing_payload(&format!("{}/a/b", reg.host()), &image);
    let digest = push_signature(
        &reg,
        "a/b",
        &image,
        &[SigLayer {
            signature_b64: key.sign(&payload),
            payload,
            ..SigLayer::default()
        }],
    );
    assert!(digest.starts_with("sha256:"));
    assert!(reg.count_requests("PUT", "/v2/a/b/manifests/sha256-") == 1);
}
