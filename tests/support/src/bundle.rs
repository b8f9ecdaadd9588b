//! Sigstore bundles v0.3 (`application/vnd.dev.sigstore.bundle.v0.3+json`, what cosign v3
//! writes) minted against a [`TestSigstore`]: real signatures, real log entries with Merkle
//! inclusion proofs and signed checkpoints, SETs, and RFC 3161 timestamps (whole seconds, with
//! milliseconds, or any `genTime` text: see [`crate::tsa`]).
//!
//! Start from [`TestSigstore::message_bundle`] (a `messageSignature` over an OCI manifest,
//! given by its digest) or [`TestSigstore::dsse_bundle`] (a `dsseEnvelope` holding an in-toto
//! statement, see [`crate::intoto`]), signed by a [`Signer`]; pick the log entry with
//! [`BundleBuilder::log_entry`], options with the other builder methods, and break it on
//! purpose with [`BundleBuilder::tamper`].
//!
//! Negative fixtures that need no [`Tamper`]:
//! - certificate outside the TSA time: a leaf whose `not_after` is before
//!   [`BundleBuilder::with_timestamp_at`]'s time;
//! - statement subject for another digest: [`crate::intoto::cosign_sign_v1_statement`] of digest
//!   A, verified as the artifact B. It is cryptographically valid (it does verify as A);
//! - signed by a key not in the root: a [`crate::Leaf`] of another [`TestSigstore`], or a
//!   [`crate::CosignKey`] other than the one in the policy.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cosign::TestSigstore;
use crate::intoto::{envelope, pae, IN_TOTO_PAYLOAD_TYPE};
use crate::rekor_body::{self, Verifier};
use crate::signer::OtherSigner;
pub use crate::signer::Signer;
use crate::tlog::EntryOptions;

/// Media type of a Sigstore bundle v0.3.
pub const BUNDLE_V03_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Media type of a Sigstore bundle v0.1.
pub const BUNDLE_V01_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle+json;version=0.1";

/// Which transparency log entry a bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEntry {
    /// Rekor v1 (default): `hashedrekord` 0.0.1 for a message signature, `dsse` 0.0.1 for a
    /// DSSE envelope (what cosign v3 writes against Rekor v1); integratedTime, SET, proof.
    RekorV1,
    /// Rekor v1 `intoto` 0.0.2 (legacy `cosign attest`); DSSE only.
    IntotoV002,
    /// Rekor v2 `hashedrekord` 0.0.2 (for DSSE: over the SHA-256 of the PAE, as sigstore-python
    /// logs it): proof and checkpoint, no SET, no integratedTime, so keyless bundles also need
    /// [`BundleBuilder::with_timestamp`].
    RekorV2,
    /// Rekor v2 `dsse` 0.0.2, as rekor-tiles stores DSSE. sigstore-verify 0.15.1 cannot parse
    /// it: such bundles fail with `unsupported Rekor entry format: dsse/0.0.2`.
    RekorV2Dsse,
    /// No log entry (only valid with a timestamp and a policy that skips the log).
    None,
}

/// A deliberate defect, each one a negative fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// One hash of the inclusion proof is flipped: the proof does not lead to the root.
    ProofHash,
    /// The checkpoint is validly signed, but for another root than the proof's `rootHash`.
    ProofRoot,
    /// The SET is the log's signature over `integratedTime + 1` (Rekor v1).
    SetTime,
    /// The log entry (validly logged, SET and proof good) is another signer's signature over the
    /// same content: the CVE-2022-36056 class.
    OtherEntry,
    /// The DSSE payload is altered after signing and logging.
    DssePayload,
}

/// What is signed.
#[derive(Clone)]
enum Content {
    /// A message signature over an artifact with this SHA-256.
    Digest([u8; 32]),
    /// A DSSE envelope over this in-toto statement.
    Dsse(Vec<u8>),
}

impl Content {
    fn sign(&self, signer: Signer) -> Vec<u8> {
        match self {
            Content::Digest(d) => signer.sign_digest(d),
            Content::Dsse(payload) => signer.sign(&pae(IN_TOTO_PAYLOAD_TYPE, payload)),
        }
    }

    /// `(kind, version, canonicalized body)` of the `entry` for `signature` by `verifier`.
    fn log_body(
        &self,
        entry: LogEntry,
        signature: &[u8],
        verifier: &Verifier,
    ) -> (&'static str, &'static str, Vec<u8>) {
        let submitted = |payload: &[u8]| {
            serde_json::to_vec(&envelope(
                IN_TOTO_PAYLOAD_TYPE,
                payload,
                signature,
                Some(""),
            ))
            .expect("serialize envelope")
        };
        match (entry, self) {
            (LogEntry::RekorV1, Content::Digest(d)) => (
                "hashedrekord",
                "0.0.1",
                rekor_body::hashedrekord_v001(d, signature, verifier),
            ),
            (LogEntry::RekorV1, Content::Dsse(p)) => (
                "dsse",
                "0.0.1",
                rekor_body::dsse_v001(&submitted(p), p, signature, verifier),
            ),
            (LogEntry::IntotoV002, Content::Dsse(p)) => {
                let body = rekor_body::intoto_v002(
                    &submitted(p),
                    IN_TOTO_PAYLOAD_TYPE,
                    p,
                    signature,
                    verifier,
                );
                ("intoto", "0.0.2", body)
            }
            (LogEntry::RekorV2, Content::Digest(d)) => (
                "hashedrekord",
                "0.0.2",
                rekor_body::hashedrekord_v002(d, signature, verifier),
            ),
            (LogEntry::RekorV2, Content::Dsse(p)) => {
                let digest = Sha256::digest(pae(IN_TOTO_PAYLOAD_TYPE, p)).into();
                (
                    "hashedrekord",
                    "0.0.2",
                    rekor_body::hashedrekord_v002(&digest, signature, verifier),
                )
            }
            (LogEntry::RekorV2Dsse, Content::Dsse(p)) => (
                "dsse",
                "0.0.2",
                rekor_body::dsse_v002(p, signature, verifier),
            ),
            (entry, _) => panic!("{entry:?} does not log a message signature"),
        }
    }

    /// The bundle's content field, `messageSignature` or `dsseEnvelope`.
    fn json(&self, signature: &[u8]) -> (&'static str, Value) {
        match self {
            Content::Digest(d) => (
                "messageSignature",
                json!({
                    "messageDigest": { "algorithm": "SHA2_256", "digest": B64.encode(d) },
                    "signature": B64.encode(signature)
                }),
            ),
            Content::Dsse(p) => (
                "dsseEnvelope",
                envelope(IN_TOTO_PAYLOAD_TYPE, p, signature, None),
            ),
        }
    }
}

/// One RFC 3161 timestamp to add, and how its `genTime` is written.
#[derive(Clone)]
enum Stamp {
    /// At this unix second (`None`: the signing time) plus these milliseconds (0: whole
    /// seconds, `YYYYMMDDhhmmssZ`).
    At(Option<i64>, u16),
    /// Exactly this `genTime` text.
    GenTime(String),
}

/// Builds one bundle; see the module doc. Defaults: Rekor v1 entry with SET and inclusion
/// proof, no timestamps, signing time in the middle of a keyless leaf's validity (a minute ago
/// for a key).
pub struct BundleBuilder<'a> {
    sigstore: &'a TestSigstore,
    signer: Signer<'a>,
    content: Content,
    entry: LogEntry,
    time: i64,
    set: bool,
    proof: bool,
    timestamps: Vec<Stamp>,
    tamper: Option<Tamper>,
}

impl TestSigstore {
    /// A `messageSignature` bundle: `signer`'s ECDSA P-256 SHA-256 signature over the OCI
    /// manifest whose digest is `manifest_digest` (`sha256:<hex>`), i.e. over the manifest
    /// bytes. Verify with the digest (or the bytes) as the artifact.
    pub fn message_bundle<'a>(
        &'a self,
        signer: Signer<'a>,
        manifest_digest: &str,
    ) -> BundleBuilder<'a> {
        let hex = manifest_digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {manifest_digest}"));
        let digest = hex::decode(hex).ok().and_then(|d| d.try_into().ok());
        let digest = digest.unwrap_or_else(|| panic!("bad sha256 digest: {manifest_digest}"));
        BundleBuilder::new(self, signer, Content::Digest(digest))
    }

    /// A `dsseEnvelope` bundle over the in-toto `statement` (payloadType
    /// `application/vnd.in-toto+json`), e.g. [`crate::intoto::cosign_sign_v1_statement`].
    pub fn dsse_bundle<'a>(&'a self, signer: Signer<'a>, statement: &[u8]) -> BundleBuilder<'a> {
        BundleBuilder::new(self, signer, Content::Dsse(statement.to_vec()))
    }
}

impl<'a> BundleBuilder<'a> {
    fn new(sigstore: &'a TestSigstore, signer: Signer<'a>, content: Content) -> BundleBuilder<'a> {
        let now = unix_now();
        let time = match signer {
            Signer::Keyless(leaf) => ((leaf.not_before + leaf.not_after) / 2).min(now - 1),
            Signer::Key(_) => now - 60,
        };
        BundleBuilder {
            sigstore,
            signer,
            content,
            entry: LogEntry::RekorV1,
            time,
            set: true,
            proof: true,
            timestamps: Vec::new(),
            tamper: None,
        }
    }

    /// The signing time (unix seconds): Rekor v1 `integratedTime`, and the time of
    /// [`BundleBuilder::with_timestamp`].
    pub fn at(mut self, time: i64) -> Self {
        self.time = time;
        self
    }

    /// Which log entry to carry (default [`LogEntry::RekorV1`]).
    pub fn log_entry(mut self, entry: LogEntry) -> Self {
        self.entry = entry;
        self
    }

    /// Leaves out the SET (`inclusionPromise`).
    pub fn without_set(mut self) -> Self {
        self.set = false;
        self
    }

    /// Leaves out the inclusion proof and checkpoint.
    pub fn without_inclusion_proof(mut self) -> Self {
        self.proof = false;
        self
    }

    /// Adds an RFC 3161 timestamp from the test TSA at the signing time.
    pub fn with_timestamp(mut self) -> Self {
        self.timestamps.push(Stamp::At(None, 0));
        self
    }

    /// Adds an RFC 3161 timestamp from the test TSA at `time` (unix seconds).
    pub fn with_timestamp_at(mut self, time: i64) -> Self {
        self.timestamps.push(Stamp::At(Some(time), 0));
        self
    }

    /// Adds an RFC 3161 timestamp from the test TSA `millis` milliseconds after the second
    /// `time`, its `genTime` carrying the fraction (`20261130101112.345Z`), as many TSAs write
    /// it. See [`crate::TestTsa::timestamp_millis`].
    pub fn with_timestamp_millis_at(mut self, time: i64, millis: u16) -> Self {
        self.timestamps.push(Stamp::At(Some(time), millis));
        self
    }

    /// Adds an RFC 3161 timestamp, validly signed by the test TSA, whose `genTime` is exactly
    /// `gen_time` (see [`crate::tsa::gen_time`]): for times DER forbids.
    pub fn with_timestamp_gen_time(mut self, gen_time: &str) -> Self {
        self.timestamps.push(Stamp::GenTime(gen_time.to_owned()));
        self
    }

    /// Breaks the bundle on purpose.
    pub fn tamper(mut self, tamper: Tamper) -> Self {
        self.tamper = Some(tamper);
        self
    }

    /// Signs, logs (appending to the test log) and timestamps: the bundle JSON.
    pub fn build(self) -> String {
        let signature = self.content.sign(self.signer);
        let entries: Vec<Value> = self.log_entry_json(&signature).into_iter().collect();
        let tsa = self.sigstore.tsa();
        let timestamps = self
            .timestamps
            .iter()
            .map(|stamp| match stamp {
                Stamp::At(time, millis) => {
                    tsa.timestamp_millis(&signature, time.unwrap_or(self.time), *millis)
                }
                Stamp::GenTime(text) => tsa.timestamp_gen_time(&signature, text),
            })
            .collect();
        let mut content = self.content.clone();
        if self.tamper == Some(Tamper::DssePayload) {
            content = Content::Dsse(altered(&content));
        }
        assemble(
            BUNDLE_V03_MEDIA_TYPE,
            self.signer.material(BUNDLE_V03_MEDIA_TYPE),
            entries,
            timestamps,
            content.json(&signature),
        )
    }

    fn log_entry_json(&self, signature: &[u8]) -> Option<Value> {
        let log = match self.entry {
            LogEntry::None => return None,
            LogEntry::RekorV1 | LogEntry::IntotoV002 => self.sigstore.rekor(),
            LogEntry::RekorV2 | LogEntry::RekorV2Dsse => self.sigstore.rekor_v2(),
        };
        let (kind, version, body) = if self.tamper == Some(Tamper::OtherEntry) {
            let other = OtherSigner::like(self.sigstore, self.signer);
            let other = other.signer();
            let other_signature = self.content.sign(other);
            self.content
                .log_body(self.entry, &other_signature, &other.verifier())
        } else {
            self.content
                .log_body(self.entry, signature, &self.signer.verifier())
        };
        let options = EntryOptions {
            integrated_time: self.time,
            promise: self.set,
            proof: self.proof,
            tamper: self.tamper,
        };
        Some(log.entry(kind, version, &body, options))
    }
}

/// The statement with `"tampered": true` added to its predicate.
fn altered(content: &Content) -> Vec<u8> {
    let Content::Dsse(payload) = content else {
        panic!("Tamper::DssePayload needs a DSSE bundle");
    };
    let mut statement: Value = serde_json::from_slice(payload).expect("statement is JSON");
    statement["predicate"]["tampered"] = true.into();
    serde_json::to_vec(&statement).expect("serialize statement")
}

/// Bundle JSON from its parts: `material` is `verificationMaterial` without `tlogEntries` and
/// `timestampVerificationData` (added here), `content` the `(field, value)` of the signature.
pub(crate) fn assemble(
    media_type: &str,
    mut material: Value,
    tlog_entries: Vec<Value>,
    timestamps: Vec<Vec<u8>>,
    content: (&str, Value),
) -> String {
    material["tlogEntries"] = tlog_entries.into();
    if !timestamps.is_empty() {
        let tokens: Vec<Value> = timestamps
            .iter()
            .map(|t| json!({ "signedTimestamp": B64.encode(t) }))
            .collect();
        material["timestampVerificationData"] = json!({ "rfc3161Timestamps": tokens });
    }
    let mut bundle = json!({ "mediaType": media_type, "verificationMaterial": material });
    bundle[content.0] = content.1;
    serde_json::to_string_pretty(&bundle).expect("serialize bundle")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}
