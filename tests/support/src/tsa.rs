//! A test RFC 3161 timestamp authority: a self-signed root and a leaf with the critical
//! `timeStamping` EKU (ECDSA P-256), listed in the trusted root's `timestampAuthorities`, that
//! mints timestamp tokens at any chosen time.
//!
//! What it mints is what a bundle's `rfc3161Timestamps[].signedTimestamp` holds: the DER
//! `TimeStampResp` (status granted) around the `TimeStampToken` (CMS `ContentInfo` holding
//! `SignedData` over a `TSTInfo`), as the bundle spec says and TSAs answer. Its message imprint
//! is SHA-256 of the bundle's signature bytes (the message signature, or the DSSE envelope's
//! signature): that is what sigstore-verify hashes. The CMS signer is named by issuer and serial
//! number; the signed attributes are contentType, messageDigest and ESS signingCertificateV2.
//!
//! `genTime` comes in both forms RFC 3161 §2.4.2 allows: whole seconds (`20261130101112Z`,
//! [`TestTsa::timestamp`]) and with a fraction of a second (`20261130101112.345Z`,
//! [`TestTsa::timestamp_millis`]), as many real TSAs write it. [`TestTsa::timestamp_gen_time`]
//! signs any text at all, for tokens that are validly signed but carry a malformed time.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::SigningKey;
use p256::elliptic_curve::Generate as _;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::der::{explicit, octets, oid, seq, set_of, tlv, uint};

const SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
const ECDSA_WITH_SHA256: &[u64] = &[1, 2, 840, 10045, 4, 3, 2];
const SIGNED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 2];
const TST_INFO: &[u64] = &[1, 2, 840, 113549, 1, 9, 16, 1, 4];
const CONTENT_TYPE: &[u64] = &[1, 2, 840, 113549, 1, 9, 3];
const MESSAGE_DIGEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 4];
const SIGNING_CERTIFICATE_V2: &[u64] = &[1, 2, 840, 113549, 1, 9, 16, 2, 47];
const EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37];
const TIME_STAMPING: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 8];
/// The TSA policy OID its tokens name (a private arc: nothing checks it).
const TSA_POLICY: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 99, 1];
/// Tag of a GeneralizedTime.
const GENERALIZED_TIME: u8 = 0x18;

/// A test timestamp authority; see the module doc.
pub struct TestTsa {
    root_der: Vec<u8>,
    leaf_der: Vec<u8>,
    key: SigningKey,
    serial: AtomicU64,
}

impl Default for TestTsa {
    fn default() -> Self {
        TestTsa::new()
    }
}

impl TestTsa {
    /// A fresh root and timestamping leaf, both valid 2020-01-01 to 2100-01-01.
    pub fn new() -> TestTsa {
        let (root, root_der) = crate::cosign::new_ca("test tsa root");
        let key = SigningKey::generate();
        let leaf_der = timestamping_leaf(&key, &root);
        TestTsa {
            root_der,
            leaf_der,
            key,
            serial: AtomicU64::new(1),
        }
    }

    /// The chain as DER, leaf first, root last (the trusted root's order).
    pub fn chain_der(&self) -> [Vec<u8>; 2] {
        [self.leaf_der.clone(), self.root_der.clone()]
    }

    /// This TSA as an item of a trusted root's `timestampAuthorities`, valid from 2020.
    pub fn trusted_root_entry(&self) -> Value {
        let certificates: Vec<Value> = self
            .chain_der()
            .iter()
            .map(|der| json!({ "rawBytes": B64.encode(der) }))
            .collect();
        json!({
            "subject": { "organization": "portcullis-test", "commonName": "test tsa" },
            "uri": "https://tsa.test",
            "certChain": { "certificates": certificates },
            "validFor": { "start": "2020-01-01T00:00:00Z" }
        })
    }

    /// A DER RFC 3161 `TimeStampResp` whose token is over `signature` (imprint: SHA-256 of these
    /// bytes) with `genTime` = unix second `time`, in whole seconds (`YYYYMMDDhhmmssZ`).
    pub fn timestamp(&self, signature: &[u8], time: i64) -> Vec<u8> {
        self.token(signature, &crate::der::generalized_time(time))
    }

    /// Like [`TestTsa::timestamp`], at `millis` milliseconds past the second `time`, written as
    /// DER writes a fraction: `20261130101112.345Z`, trailing zeros dropped (`.5`, not `.500`),
    /// and no fraction at all for 0.
    pub fn timestamp_millis(&self, signature: &[u8], time: i64, millis: u16) -> Vec<u8> {
        assert!(millis < 1000, "{millis} ms is not a fraction of a second");
        let digits = format!("{millis:03}");
        self.timestamp_gen_time(signature, &gen_time(time, digits.trim_end_matches('0')))
    }

    /// A response whose token's `genTime` is exactly the characters `gen_time` (e.g.
    /// `20261130101112.340Z`, which DER forbids): validly signed whatever it says.
    pub fn timestamp_gen_time(&self, signature: &[u8], gen_time: &str) -> Vec<u8> {
        self.token(signature, &tlv(GENERALIZED_TIME, gen_time.as_bytes()))
    }

    /// The `TimeStampResp` granting the signed token, `gen_time` being the whole GeneralizedTime
    /// TLV of its `TSTInfo`.
    fn token(&self, signature: &[u8], gen_time: &[u8]) -> Vec<u8> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let tst_info = seq(&[
            &uint(1),
            &oid(TSA_POLICY),
            &seq(&[&seq(&[&oid(SHA256)]), &octets(&Sha256::digest(signature))]),
            &uint(serial),
            gen_time,
        ]);
        let encap = seq(&[&oid(TST_INFO), &explicit(0, &octets(&tst_info))]);
        let signed_data = seq(&[
            &uint(3),
            &set_of(vec![seq(&[&oid(SHA256)])]),
            &encap,
            &explicit(0, &self.leaf_der), // certificates [0] IMPLICIT SET OF
            &set_of(vec![self.signer_info(&tst_info)]),
        ]);
        let token = seq(&[&oid(SIGNED_DATA), &explicit(0, &signed_data)]);
        let granted = seq(&[&uint(0)]); // PKIStatusInfo { status granted }
        seq(&[&granted, &token])
    }

    /// The CMS `SignerInfo`: the leaf's ECDSA signature over the DER SET of signed attributes.
    fn signer_info(&self, tst_info: &[u8]) -> Vec<u8> {
        let attribute = |id: &[u64], value: Vec<u8>| seq(&[&oid(id), &set_of(vec![value])]);
        let ess_cert_id = seq(&[&octets(&Sha256::digest(&self.leaf_der))]);
        let attrs = set_of(vec![
            attribute(CONTENT_TYPE, oid(TST_INFO)),
            attribute(MESSAGE_DIGEST, octets(&Sha256::digest(tst_info))),
            attribute(SIGNING_CERTIFICATE_V2, seq(&[&seq(&[&ess_cert_id])])),
        ]);
        let signature = crate::cosign::sign_der(&self.key, &attrs);
        let (issuer, serial) = crate::der::issuer_and_serial(&self.leaf_der);
        // Signed as a SET (0x31), carried as [0] IMPLICIT.
        let mut implicit_attrs = attrs;
        implicit_attrs[0] = 0xa0;
        seq(&[
            &uint(1),
            &seq(&[&issuer, &serial]),
            &seq(&[&oid(SHA256)]),
            &implicit_attrs,
            &seq(&[&oid(ECDSA_WITH_SHA256)]),
            &octets(&signature),
        ])
    }
}

/// The text of a `genTime` at unix second `time`: `YYYYMMDDhhmmss`, then `.` and `fraction`
/// when that is not empty, then `Z`. The fraction is written as given (trailing zeros, letters
/// and all), so negative fixtures can be made with it.
pub fn gen_time(time: i64, fraction: &str) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(time)
        .unwrap_or_else(|e| panic!("unix time {time} out of range: {e}"));
    let point = if fraction.is_empty() { "" } else { "." };
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{point}{fraction}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The TSA leaf for `key`, issued by `root`: CN `test tsa`, digitalSignature, and the
/// extendedKeyUsage extension marked critical with timeStamping only (RFC 3161 2.3).
fn timestamping_leaf(key: &SigningKey, root: &Issuer<'static, KeyPair>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "portcullis-test");
    dn.push(DnType::CommonName, "test tsa");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    let mut eku =
        CustomExtension::from_oid_content(EXTENDED_KEY_USAGE, seq(&[&oid(TIME_STAMPING)]));
    eku.set_criticality(true);
    params.custom_extensions = vec![eku];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params
        .signed_by(&crate::cosign::P256Public::of(key), root)
        .expect("issue TSA leaf")
        .der()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::der::read;

    #[test]
    fn leaf_has_a_critical_timestamping_eku() {
        let tsa = TestTsa::new();
        let mut ext = oid(EXTENDED_KEY_USAGE);
        ext.extend([0x01, 0x01, 0xff]);
        ext.extend(octets(&seq(&[&oid(TIME_STAMPING)])));
        assert!(tsa.leaf_der.windows(ext.len()).any(|w| w == ext));
    }

    #[test]
    fn token_carries_the_imprint_and_time() {
        let tsa = TestTsa::new();
        let response = tsa.timestamp(b"sig", 0);
        let status = read(read(&response).content);
        assert_eq!(status.raw, seq(&[&uint(0)]));
        let content_info = read(status.rest);
        let signed_data = read(read(read(content_info.content).rest).content);
        let version = read(signed_data.content);
        let encap = read(read(version.rest).rest);
        let e_content = read(read(encap.content).rest);
        let tst_info = read(read(e_content.content).content).raw.to_vec();
        assert!(contains(&tst_info, &Sha256::digest(b"sig")));
        assert!(contains(&tst_info, b"19700101000000Z"));
    }

    /// The `genTime` TLV of `token`'s TSTInfo.
    fn gen_time_of(response: &[u8]) -> Vec<u8> {
        let content_info = read(read(read(response).content).rest);
        let signed_data = read(read(read(content_info.content).rest).content);
        let encap = read(read(read(signed_data.content).rest).rest);
        let tst_info = read(read(read(read(encap.content).rest).content).content);
        let policy = read(read(tst_info.content).rest);
        let imprint = read(policy.rest);
        let serial = read(imprint.rest);
        read(serial.rest).raw.to_vec()
    }

    #[test]
    fn gen_time_comes_in_whole_seconds_and_with_a_fraction() {
        let tsa = TestTsa::new();
        // 2026-11-30T10:11:12Z
        let at = 1_796_033_472;
        assert_eq!(gen_time(at, ""), "20261130101112Z");
        assert_eq!(gen_time(at, "345"), "20261130101112.345Z");
        let whole = gen_time_of(&tsa.timestamp(b"sig", at));
        assert_eq!(whole, tlv(GENERALIZED_TIME, b"20261130101112Z"));
        for (millis, text) in [
            (345, "20261130101112.345Z"),
            (340, "20261130101112.34Z"),
            (5, "20261130101112.005Z"),
            (500, "20261130101112.5Z"),
            (0, "20261130101112Z"),
        ] {
            let token = tsa.timestamp_millis(b"sig", at, millis);
            assert_eq!(gen_time_of(&token), tlv(GENERALIZED_TIME, text.as_bytes()));
        }
        let bad = tsa.timestamp_gen_time(b"sig", "20261130101112.340Z");
        assert_eq!(
            gen_time_of(&bad),
            tlv(GENERALIZED_TIME, b"20261130101112.340Z")
        );
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
}
