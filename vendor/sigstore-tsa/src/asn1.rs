//! ASN.1 types for RFC 3161 Time-Stamp Protocol
//!
//! This module defines the ASN.1 structures used in the Time-Stamp Protocol
//! as specified in RFC 3161.

use const_oid::ObjectIdentifier;
#[cfg(any(feature = "client", test))]
use der::asn1::Uint;
use der::Encode;
use der::{
    asn1::{BitString, GeneralizedTime, Int, OctetString},
    Decode, DecodeValue, EncodeValue, FixedTag, Header, Length, Reader, Sequence, Tag, Writer,
};
#[cfg(any(feature = "client", test))]
use rand::RngExt;
use sigstore_types::HashAlgorithm;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_cert::{ext::pkix::name::GeneralName, ext::Extensions};

/// OID for SHA-256: 2.16.840.1.101.3.4.2.1
pub const OID_SHA256: ObjectIdentifier = const_oid::db::rfc5912::ID_SHA_256;

/// OID for SHA-384: 2.16.840.1.101.3.4.2.2
pub const OID_SHA384: ObjectIdentifier = const_oid::db::rfc5912::ID_SHA_384;

/// OID for SHA-512: 2.16.840.1.101.3.4.2.3
pub const OID_SHA512: ObjectIdentifier = const_oid::db::rfc5912::ID_SHA_512;

/// OID for id-ct-TSTInfo: 1.2.840.113549.1.9.16.1.4
pub const OID_TST_INFO: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");

/// Generates a random nonce for RFC 3161 timestamp requests.
///
/// Uses `der::asn1::Uint` to guarantee correct minimal positive DER INTEGER
/// encoding. Raw random bytes are passed through `Uint::new` which strips
/// leading zeros and adds sign-bit padding as required by DER.
#[cfg(any(feature = "client", test))]
pub fn generate_nonce() -> Int {
    let nonce: u64 = rand::rng().random();
    let uint = Uint::new(&nonce.to_be_bytes()).expect("valid uint from random u64");
    Int::from(uint)
}

/// Algorithm identifier with optional parameters
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct AlgorithmIdentifier {
    /// Algorithm OID
    pub algorithm: ObjectIdentifier,
    /// Optional parameters (usually NULL for hash algorithms)
    #[asn1(optional = "true")]
    pub parameters: Option<der::Any>,
}

impl AlgorithmIdentifier {
    /// Create a SHA-256 algorithm identifier
    pub fn sha256() -> Self {
        Self {
            algorithm: OID_SHA256,
            parameters: None,
        }
    }

    /// Create a SHA-384 algorithm identifier
    pub fn sha384() -> Self {
        Self {
            algorithm: OID_SHA384,
            parameters: None,
        }
    }

    /// Create a SHA-512 algorithm identifier
    pub fn sha512() -> Self {
        Self {
            algorithm: OID_SHA512,
            parameters: None,
        }
    }
}

impl TryFrom<HashAlgorithm> for AlgorithmIdentifier {
    type Error = crate::Error;

    fn try_from(algo: HashAlgorithm) -> Result<Self, Self::Error> {
        match algo {
            HashAlgorithm::Sha2256 => Ok(Self::sha256()),
            HashAlgorithm::Sha2384 => Ok(Self::sha384()),
            HashAlgorithm::Sha2512 => Ok(Self::sha512()),
            other => Err(crate::Error::Asn1(format!(
                "no RFC 3161 algorithm identifier for {other}"
            ))),
        }
    }
}

/// Message imprint containing hash algorithm and hashed message (ASN.1/DER format).
///
/// RFC 3161 Section 2.4.1
///
/// Note: This is different from `sigstore_types::MessageImprint` which is the
/// JSON/serde representation used in bundles.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct Asn1MessageImprint {
    /// Hash algorithm used
    pub hash_algorithm: AlgorithmIdentifier,
    /// Hashed message
    pub hashed_message: OctetString,
}

#[cfg(any(feature = "client", test))]
impl Asn1MessageImprint {
    /// Create a new message imprint
    pub fn new(algorithm: AlgorithmIdentifier, digest: Vec<u8>) -> Self {
        Self {
            hash_algorithm: algorithm,
            hashed_message: OctetString::new(digest).expect("valid octet string"),
        }
    }
}

/// Time-stamp request
/// RFC 3161 Section 2.4.1
#[cfg(any(feature = "client", test))]
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TimeStampReq {
    /// Version (must be 1)
    pub version: u8,
    /// Message imprint to be timestamped
    pub message_imprint: Asn1MessageImprint,
    /// Optional policy OID
    #[asn1(optional = "true")]
    pub req_policy: Option<ObjectIdentifier>,
    /// Optional nonce
    #[asn1(optional = "true")]
    pub nonce: Option<Int>,
    /// Whether to include certificates in response
    #[asn1(default = "default_false")]
    pub cert_req: bool,
    // Extensions omitted for simplicity
}

fn default_false() -> bool {
    false
}

#[cfg(any(feature = "client", test))]
impl TimeStampReq {
    /// Create a new timestamp request with an automatically generated nonce
    pub fn new(message_imprint: Asn1MessageImprint) -> Self {
        Self {
            version: 1,
            message_imprint,
            req_policy: None,
            nonce: Some(generate_nonce()),
            cert_req: true,
        }
    }

    /// Encode to DER
    pub fn to_der(&self) -> Result<Vec<u8>, der::Error> {
        Encode::to_der(self)
    }
}

/// PKI status values
/// RFC 3161 Section 2.4.2
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[repr(u8)]
pub enum PkiStatus {
    /// Granted
    Granted = 0,
    /// Granted with modifications
    GrantedWithMods = 1,
    /// Rejection
    Rejection = 2,
    /// Waiting
    Waiting = 3,
    /// Revocation warning
    RevocationWarning = 4,
    /// Revocation notification
    RevocationNotification = 5,
}

impl TryFrom<u8> for PkiStatus {
    type Error = ();

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(PkiStatus::Granted),
            1 => Ok(PkiStatus::GrantedWithMods),
            2 => Ok(PkiStatus::Rejection),
            3 => Ok(PkiStatus::Waiting),
            4 => Ok(PkiStatus::RevocationWarning),
            5 => Ok(PkiStatus::RevocationNotification),
            _ => Err(()),
        }
    }
}

/// PKI status info
/// RFC 3161 Section 2.4.2
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct PkiStatusInfo {
    /// Status value
    pub status: u8,
    /// Optional human-readable status text (PKIFreeText: SEQUENCE OF UTF8String).
    #[asn1(optional = "true")]
    pub status_string: Option<Vec<String>>,
    /// Optional failure info
    #[asn1(optional = "true")]
    pub fail_info: Option<BitString>,
}

/// Accuracy of the timestamp
/// RFC 3161 Section 2.4.2
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct Accuracy {
    /// Seconds
    #[asn1(optional = "true")]
    pub seconds: Option<u64>,
    /// Milliseconds (1-999)
    #[asn1(context_specific = "0", optional = "true")]
    pub millis: Option<u16>,
    /// Microseconds (1-999)
    #[asn1(context_specific = "1", optional = "true")]
    pub micros: Option<u16>,
}

/// TSTInfo - the actual timestamp token info
/// RFC 3161 Section 2.4.2
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TstInfo {
    /// Version (must be 1)
    pub version: u8,
    /// Policy OID
    pub policy: ObjectIdentifier,
    /// Message imprint
    pub message_imprint: Asn1MessageImprint,
    /// Serial number
    pub serial_number: Int,
    /// Generation time (may carry fractional seconds, see [`GenTime`])
    pub gen_time: GenTime,
    /// Accuracy
    #[asn1(optional = "true")]
    pub accuracy: Option<Accuracy>,
    /// Ordering
    #[asn1(default = "default_false")]
    pub ordering: bool,
    /// Nonce
    #[asn1(optional = "true")]
    pub nonce: Option<Int>,
    /// TSA name
    #[asn1(context_specific = "0", optional = "true", tag_mode = "EXPLICIT")]
    pub tsa: Option<GeneralName>,
    /// Extensions
    #[asn1(context_specific = "1", optional = "true", tag_mode = "IMPLICIT")]
    pub extensions: Option<Extensions>,
}

/// The `genTime` of a [`TstInfo`]: a DER `GeneralizedTime` as RFC 3161 §2.4.2 profiles it.
///
/// [`GeneralizedTime`] implements RFC 5280's profile for certificates, which forbids fractional
/// seconds. RFC 3161 allows them (`genTime` is `YYYYMMDDhhmmss[.s...]Z`) and many timestamp
/// authorities write milliseconds, so `TSTInfo` needs this wider type. The DER rules of
/// X.690 §11.7 still apply: the time is UTC with a final `Z`, the seconds are always present,
/// the decimal separator is a full stop, and a fraction has no trailing zeros (a zero fraction
/// is omitted together with its point). Fractions are represented to the nanosecond, so at
/// most nine fraction digits are accepted.
#[derive(Copy, Clone, Debug, Eq, PartialEq, PartialOrd, Ord)]
pub struct GenTime {
    /// The whole seconds, parsed by `der` with all of its checks.
    seconds: GeneralizedTime,
    /// The fraction of a second, in nanoseconds.
    nanos: u32,
}

impl GenTime {
    /// `YYYYMMDDhhmmss`.
    const DATE_TIME_LENGTH: usize = 14;
    /// Fraction digits beyond the nanosecond are not represented.
    const MAX_FRACTION_DIGITS: usize = 9;
    /// `YYYYMMDDhhmmss.nnnnnnnnnZ`.
    const MAX_LENGTH: usize = Self::DATE_TIME_LENGTH + 1 + Self::MAX_FRACTION_DIGITS + 1;

    /// A [`GenTime`] from a [`Duration`] since `UNIX_EPOCH`, to the nanosecond.
    #[cfg(test)]
    pub fn from_unix_duration(unix_duration: Duration) -> der::Result<Self> {
        let whole = Duration::from_secs(unix_duration.as_secs());
        Ok(Self {
            seconds: GeneralizedTime::from_unix_duration(whole)?,
            nanos: unix_duration.subsec_nanos(),
        })
    }

    /// The duration of this time since `UNIX_EPOCH`, fraction included.
    pub fn to_unix_duration(self) -> Duration {
        self.seconds.to_unix_duration() + Duration::from_nanos(self.nanos.into())
    }

    /// This time as a [`SystemTime`], fraction included.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + self.to_unix_duration()
    }

    /// The fraction's digits without trailing zeros (none for whole seconds).
    fn fraction_digits(&self) -> ([u8; Self::MAX_FRACTION_DIGITS], usize) {
        let mut digits = [b'0'; Self::MAX_FRACTION_DIGITS];
        let mut rest = self.nanos;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let len = digits
            .iter()
            .rposition(|digit| *digit != b'0')
            .map_or(0, |last| last + 1);
        (digits, len)
    }
}

impl FixedTag for GenTime {
    const TAG: Tag = Tag::GeneralizedTime;
}

impl<'a> DecodeValue<'a> for GenTime {
    fn decode_value<R: Reader<'a>>(reader: &mut R, header: Header) -> der::Result<Self> {
        let length = usize::try_from(header.length)?;
        if !(Self::DATE_TIME_LENGTH + 1..=Self::MAX_LENGTH).contains(&length) {
            return Err(Self::TAG.value_error());
        }
        let mut buffer = [0u8; Self::MAX_LENGTH];
        let bytes = reader.read_into(&mut buffer[..length])?;
        let Some((b'Z', rest)) = bytes.split_last() else {
            return Err(Self::TAG.value_error());
        };
        let (date_time, fraction) = rest.split_at(Self::DATE_TIME_LENGTH);

        // The whole seconds are an RFC 5280 time: let `der` parse and range-check them.
        let mut whole = [0u8; Self::DATE_TIME_LENGTH + 3];
        whole[0] = Self::TAG.into();
        whole[1] = Self::DATE_TIME_LENGTH as u8 + 1;
        whole[2..2 + Self::DATE_TIME_LENGTH].copy_from_slice(date_time);
        whole[2 + Self::DATE_TIME_LENGTH] = b'Z';
        let seconds = GeneralizedTime::from_der(&whole)?;

        let nanos = match fraction {
            [] => 0,
            [b'.', digits @ .., last]
                if *last != b'0' && digits.iter().chain([last]).all(u8::is_ascii_digit) =>
            {
                let mut nanos = 0u32;
                for digit in digits.iter().chain([last]) {
                    nanos = nanos * 10 + u32::from(digit - b'0');
                }
                nanos * 10u32.pow((Self::MAX_FRACTION_DIGITS - digits.len() - 1) as u32)
            }
            _ => return Err(Self::TAG.value_error()),
        };
        Ok(Self { seconds, nanos })
    }
}

impl EncodeValue for GenTime {
    fn value_len(&self) -> der::Result<Length> {
        let (_, digits) = self.fraction_digits();
        let point = usize::from(digits > 0);
        (Self::DATE_TIME_LENGTH + point + digits + 1).try_into()
    }

    fn encode_value(&self, writer: &mut impl Writer) -> der::Result<()> {
        let mut whole = [0u8; Self::DATE_TIME_LENGTH + 3];
        let whole = self.seconds.encode_to_slice(&mut whole)?;
        writer.write(&whole[2..2 + Self::DATE_TIME_LENGTH])?;
        let (digits, len) = self.fraction_digits();
        if len > 0 {
            writer.write_byte(b'.')?;
            writer.write(&digits[..len])?;
        }
        writer.write_byte(b'Z')
    }
}

/// Time-stamp response
/// RFC 3161 Section 2.4.2
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct TimeStampResp {
    /// Status information
    pub status: PkiStatusInfo,
    /// Time-stamp token (CMS ContentInfo)
    #[asn1(optional = "true")]
    pub time_stamp_token: Option<der::Any>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    #[test]
    fn test_message_imprint_encode() {
        let digest = vec![0u8; 32]; // SHA-256 produces 32 bytes
        let imprint = Asn1MessageImprint::new(AlgorithmIdentifier::sha256(), digest);
        let der = Encode::to_der(&imprint).unwrap();
        assert!(!der.is_empty());
    }

    #[test]
    fn test_timestamp_req_encode() {
        let digest = vec![0u8; 32];
        let imprint = Asn1MessageImprint::new(AlgorithmIdentifier::sha256(), digest);
        let req = TimeStampReq::new(imprint);
        let der = req.to_der().unwrap();
        assert!(!der.is_empty());
    }

    #[test]
    fn test_timestamp_req_has_nonce() {
        let digest = vec![0u8; 32];
        let imprint = Asn1MessageImprint::new(AlgorithmIdentifier::sha256(), digest);
        let req = TimeStampReq::new(imprint);

        // Verify that the request has a nonce
        assert!(
            req.nonce.is_some(),
            "Nonce should be automatically generated"
        );
    }

    #[test]
    fn test_generate_nonce_roundtrips_as_canonical_der() {
        // Encode → decode round-trip. The der crate's Int decoder calls
        // `validate_canonical` internally, which rejects non-minimal
        // encodings (e.g. 0x00 0x35 — the same check Go's encoding/asn1
        // performs). If our nonce encoding is ever non-minimal, the
        // decode step will fail with a non-canonical error.
        for _ in 0..1000 {
            let nonce = generate_nonce();
            let encoded = Encode::to_der(&nonce).expect("DER encoding must succeed");
            let decoded = Int::from_der(&encoded);
            assert!(
                decoded.is_ok(),
                "nonce failed canonical DER round-trip: {:02x?} → {:?}",
                encoded,
                decoded.err()
            );
        }
    }

    #[test]
    fn test_uint_produces_canonical_der_for_problematic_patterns() {
        // These are the exact byte patterns that caused HTTP 400 with the
        // old code. Encode via Uint→Int, then decode to trigger
        // validate_canonical.

        let cases: &[&[u8]] = &[
            &[0x00, 0x35],             // leading zero unnecessary (0x35 high bit clear)
            &[0x00, 0xFF],             // leading zero IS needed (0xFF high bit set)
            &[0x00, 0x00, 0x42],       // two leading zeros, both unnecessary
            &[0x00, 0x00, 0x00, 0x01], // many leading zeros
        ];

        for input in cases {
            let uint = Uint::new(input).unwrap();
            let int = Int::from(uint);
            let encoded = Encode::to_der(&int).unwrap();
            let decoded = Int::from_der(&encoded);
            assert!(
                decoded.is_ok(),
                "input {:02x?} produced non-canonical DER: {:02x?} → {:?}",
                input,
                encoded,
                decoded.err()
            );
        }
    }

    /// `genTime` TLV with the given text.
    fn gen_time_der(text: &str) -> Vec<u8> {
        let mut der = vec![0x18, text.len() as u8];
        der.extend_from_slice(text.as_bytes());
        der
    }

    #[test]
    fn test_gen_time_whole_seconds() {
        // 2026-11-30T10:11:12Z
        let der = gen_time_der("20261130101112Z");
        let time = GenTime::from_der(&der).unwrap();
        assert_eq!(time.to_unix_duration(), Duration::from_secs(1_796_033_472));
        assert_eq!(time.to_der().unwrap(), der);
        assert_eq!(
            GeneralizedTime::from_der(&der).unwrap().to_unix_duration(),
            time.to_unix_duration()
        );
    }

    #[test]
    fn test_gen_time_fractional_seconds() {
        // RFC 3161 §2.4.2 allows a fraction; DER keeps it without trailing zeros.
        for (text, nanos) in [
            ("20261130101112.345Z", 345_000_000),
            ("20261130101112.5Z", 500_000_000),
            ("20261130101112.05Z", 50_000_000),
            ("20261130101112.000001Z", 1_000),
            ("20261130101112.123456789Z", 123_456_789),
            ("20261130101112.000000001Z", 1),
        ] {
            let der = gen_time_der(text);
            let time = GenTime::from_der(&der).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                time.to_unix_duration(),
                Duration::new(1_796_033_472, nanos),
                "{text}"
            );
            // Re-encoding gives back the exact bytes.
            assert_eq!(time.to_der().unwrap(), der, "{text}");
            let built = GenTime::from_unix_duration(Duration::new(1_796_033_472, nanos)).unwrap();
            assert_eq!(built, time, "{text}");
            // RFC 5280's profile, for certificates, still refuses them.
            assert!(GeneralizedTime::from_der(&der).is_err(), "{text}");
        }
    }

    #[test]
    fn test_gen_time_rejects_what_der_forbids() {
        for text in [
            "20261130101112.340Z",        // trailing zero
            "20261130101112.0Z",          // a zero fraction is omitted, point and all
            "20261130101112.Z",           // a point without digits
            "20261130101112,345Z",        // comma as decimal separator
            "20261130101112.3a5Z",        // not a digit
            "20261130101112.+45Z",        // not a digit
            "20261130101112.345",         // no Z
            "20261130101112.345+0100",    // local time with offset
            "20261130101112.345z",        // lower-case z
            "20261130101112.1234567891Z", // finer than a nanosecond
            "202611301011Z",              // no seconds
            "202611301011.5Z",            // fraction of a minute
            "20261130241112Z",            // hour 24
            "20261130101160Z",            // second 60
            "20261330101112.5Z",          // month 13
            "2026113010111.25Z",          // seconds cut short
            "",
        ] {
            assert!(GenTime::from_der(&gen_time_der(text)).is_err(), "{text:?}");
        }
        // A UTCTime is not a GeneralizedTime.
        let mut utc = gen_time_der("261130101112Z");
        utc[0] = 0x17;
        assert!(GenTime::from_der(&utc).is_err());
    }

    #[test]
    fn test_tst_info_with_fractional_gen_time_roundtrips() {
        let tst_info = TstInfo {
            version: 1,
            policy: ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.2"),
            message_imprint: Asn1MessageImprint::new(AlgorithmIdentifier::sha256(), vec![7; 32]),
            serial_number: Int::new(&[1]).unwrap(),
            gen_time: GenTime::from_unix_duration(Duration::new(1_796_033_472, 345_000_000))
                .unwrap(),
            accuracy: None,
            ordering: false,
            nonce: None,
            tsa: None,
            extensions: None,
        };
        let der = tst_info.to_der().unwrap();
        let expected = gen_time_der("20261130101112.345Z");
        assert!(der.windows(expected.len()).any(|w| w == expected));
        assert_eq!(TstInfo::from_der(&der).unwrap(), tst_info);
    }

    #[test]
    fn test_pki_status() {
        assert!(PkiStatus::try_from(0).is_ok());
        assert!(PkiStatus::try_from(5).is_ok());
        assert!(PkiStatus::try_from(6).is_err());
    }
}
