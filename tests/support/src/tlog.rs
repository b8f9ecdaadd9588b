//! A test transparency log, the Rekor side of [`crate::TestSigstore`]: a real RFC 6962 Merkle
//! tree over the canonicalized entry bodies it is given, signed checkpoints (signed notes),
//! Rekor v1 SETs, and the `tlogEntries` items of a Sigstore bundle.
//!
//! Two flavours, as the public-good instance has:
//! - **Rekor v1** ([`TestLog::rekor_v1`]): ECDSA P-256 key, log ID = SHA-256 of its DER SPKI,
//!   checkpoint origin `rekor.test - <tree id>` signed as `rekor.test`, entries carry an
//!   `integratedTime` and (optionally) a SET.
//! - **Rekor v2** ([`TestLog::rekor_v2`]): Ed25519 key, log ID = the C2SP signed-note key ID
//!   `SHA-256(origin || "\n" || 0x01 || raw key)`, checkpoint origin = signer name = the log's
//!   host; entries have no `integratedTime` and no SET (a TSA timestamp gives the time).
//!
//! Either way the checkpoint signature line is `— <name> base64(key hint || signature)` where
//! the key hint is the first 4 bytes of the log ID: that is how sigstore-verify picks the key.

use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use p256::elliptic_curve::Generate;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::bundle::Tamper;

/// `validFor.start` of the log keys in the trusted root.
const VALID_FROM: &str = "2020-01-01T00:00:00Z";
/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

type Hash = [u8; 32];

enum LogKey {
    Ecdsa(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl LogKey {
    /// ECDSA: DER ECDSA-SHA256 signature; Ed25519: the raw 64 bytes.
    fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            LogKey::Ecdsa(k) => crate::cosign::sign_der(k, message),
            LogKey::Ed25519(k) => k.sign(message).to_bytes().to_vec(),
        }
    }

    fn spki_der(&self) -> Vec<u8> {
        match self {
            LogKey::Ecdsa(k) => crate::cosign::spki_der(k),
            LogKey::Ed25519(k) => [&ED25519_SPKI_PREFIX[..], k.verifying_key().as_bytes()].concat(),
        }
    }

    fn key_details(&self) -> &'static str {
        match self {
            LogKey::Ecdsa(_) => "PKIX_ECDSA_P256_SHA_256",
            LogKey::Ed25519(_) => "PKIX_ED25519",
        }
    }
}

/// A transparency log with real Merkle inclusion proofs; see the module doc. Appending is
/// thread-safe (`&self`).
pub struct TestLog {
    key: LogKey,
    /// Checkpoint origin line.
    origin: String,
    /// Signer name on the checkpoint signature line.
    name: String,
    base_url: String,
    log_id: Hash,
    leaves: Mutex<Vec<Hash>>,
}

/// Where an appended entry sits and the proof of it against the tree at that moment.
pub(crate) struct Inclusion {
    pub index: u64,
    pub tree_size: u64,
    pub root: Hash,
    pub hashes: Vec<Hash>,
}

/// How [`TestLog::entry`] should describe an appended entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryOptions {
    /// Rekor v1 `integratedTime` (ignored for v2).
    pub integrated_time: i64,
    /// Include the SET (Rekor v1 only).
    pub promise: bool,
    /// Include the inclusion proof and checkpoint.
    pub proof: bool,
    pub tamper: Option<Tamper>,
}

impl TestLog {
    /// A Rekor v1 log (`https://rekor.test`), ECDSA P-256.
    pub fn rekor_v1() -> TestLog {
        let key = LogKey::Ecdsa(p256::ecdsa::SigningKey::generate());
        let log_id = Sha256::digest(key.spki_der()).into();
        TestLog::with(
            key,
            "rekor.test - 8050909264565447525",
            "rekor.test",
            log_id,
        )
    }

    /// A Rekor v2 log (`https://log2025-1.rekor.test`), Ed25519, as rekor-tiles runs.
    pub fn rekor_v2() -> TestLog {
        let key = <ed25519_dalek::SigningKey as Generate>::generate();
        let origin = "log2025-1.rekor.test";
        let mut id = Sha256::new();
        id.update(origin.as_bytes());
        id.update(b"\n\x01");
        id.update(key.verifying_key().as_bytes());
        TestLog::with(LogKey::Ed25519(key), origin, origin, id.finalize().into())
    }

    fn with(key: LogKey, origin: &str, name: &str, log_id: Hash) -> TestLog {
        // Some earlier entries, so that proofs are not trivially empty.
        let filler = (0u8..5)
            .map(|i| leaf_hash(&[&log_id[..], &[i]].concat()))
            .collect();
        TestLog {
            key,
            origin: origin.to_string(),
            name: name.to_string(),
            base_url: format!("https://{name}"),
            log_id,
            leaves: Mutex::new(filler),
        }
    }

    /// The log ID (`logId.keyId` in bundles and the trusted root, raw bytes).
    pub fn log_id(&self) -> [u8; 32] {
        self.log_id
    }

    /// The log ID as hex, as in a Rekor v1 API answer (`logID`).
    pub fn log_id_hex(&self) -> String {
        hex::encode(self.log_id)
    }

    /// The log's public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.spki_der()
    }

    /// The log's public key as SPKI PEM.
    pub fn public_key_pem(&self) -> String {
        crate::cosign::pem("PUBLIC KEY", &self.public_key_der())
    }

    /// Whether this is a Rekor v2 log (no SETs, no integrated time).
    pub fn is_v2(&self) -> bool {
        matches!(self.key, LogKey::Ed25519(_))
    }

    /// This log as an item of a trusted root's `tlogs`.
    pub fn trusted_root_entry(&self) -> Value {
        json!({
            "baseUrl": self.base_url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": B64.encode(self.public_key_der()),
                "keyDetails": self.key.key_details(),
                "validFor": { "start": VALID_FROM }
            },
            "logId": { "keyId": B64.encode(self.log_id) }
        })
    }

    /// Appends `body` (the canonicalized entry) as a leaf; returns its inclusion proof against
    /// the tree it now ends.
    pub(crate) fn append(&self, body: &[u8]) -> Inclusion {
        let mut leaves = self.leaves.lock().expect("log lock");
        leaves.push(leaf_hash(body));
        let index = leaves.len() - 1;
        Inclusion {
            index: index as u64,
            tree_size: leaves.len() as u64,
            root: root_hash(&leaves),
            hashes: inclusion_path(index, &leaves),
        }
    }

    /// The signed checkpoint (signed note) for a tree of `tree_size` with root `root`.
    pub(crate) fn checkpoint(&self, tree_size: u64, root: &Hash) -> String {
        let mut note = format!("{}\n{tree_size}\n{}\n", self.origin, B64.encode(root));
        if !self.is_v2() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos();
            note.push_str(&format!("Timestamp: {nanos}\n"));
        }
        let signature = [&self.log_id[..4], &self.key.sign(note.as_bytes())].concat();
        format!("{note}\n\u{2014} {} {}\n", self.name, B64.encode(signature))
    }

    /// The SET: the log key's signature over the RFC 8785 JSON of
    /// `{body, integratedTime, logID, logIndex}` (body base64, log ID hex).
    pub(crate) fn signed_entry_timestamp(&self, body: &[u8], time: i64, index: u64) -> Vec<u8> {
        let canonical = serde_json_canonicalizer::to_vec(&self.set_payload(body, time, index))
            .expect("canonicalize SET payload");
        self.key.sign(&canonical)
    }

    fn set_payload(&self, body: &[u8], time: i64, index: u64) -> Value {
        json!({
            "body": B64.encode(body),
            "integratedTime": time,
            "logIndex": index,
            "logID": self.log_id_hex(),
        })
    }

    /// cosign's `dev.sigstore.cosign/bundle` annotation for `body` logged at `index`:
    /// `{"SignedEntryTimestamp": .., "Payload": {"body", "integratedTime", "logIndex", "logID"}}`.
    pub(crate) fn cosign_bundle_json(&self, body: &[u8], time: i64, index: u64) -> String {
        let set = self.signed_entry_timestamp(body, time, index);
        let bundle = json!({
            "SignedEntryTimestamp": B64.encode(set),
            "Payload": self.set_payload(body, time, index),
        });
        serde_json::to_string(&bundle).expect("serialize cosign bundle")
    }

    /// Appends `body` (a `kind`/`version` entry) and returns the bundle's `tlogEntries` item
    /// for it, with the SET and inclusion proof `options` ask for, tampered as asked.
    pub(crate) fn entry(
        &self,
        kind: &str,
        version: &str,
        body: &[u8],
        options: EntryOptions,
    ) -> Value {
        let inclusion = self.append(body);
        let mut entry = json!({
            "logIndex": inclusion.index.to_string(),
            "logId": { "keyId": B64.encode(self.log_id) },
            "kindVersion": { "kind": kind, "version": version },
            "canonicalizedBody": B64.encode(body),
        });
        if !self.is_v2() {
            let time = options.integrated_time;
            entry["integratedTime"] = time.to_string().into();
            if options.promise {
                let signed_time = match options.tamper {
                    Some(Tamper::SetTime) => time + 1,
                    _ => time,
                };
                let set = self.signed_entry_timestamp(body, signed_time, inclusion.index);
                entry["inclusionPromise"] = json!({ "signedEntryTimestamp": B64.encode(set) });
            }
        }
        if options.proof {
            entry["inclusionProof"] = self.proof_json(inclusion, options.tamper);
        }
        entry
    }

    fn proof_json(&self, mut inclusion: Inclusion, tamper: Option<Tamper>) -> Value {
        let mut checkpoint_root = inclusion.root;
        match tamper {
            Some(Tamper::ProofHash) => inclusion.hashes[0][0] ^= 1,
            // A validly signed checkpoint for another tree than the proof's.
            Some(Tamper::ProofRoot) => checkpoint_root[0] ^= 1,
            _ => {}
        }
        json!({
            "logIndex": inclusion.index.to_string(),
            "rootHash": B64.encode(inclusion.root),
            "treeSize": inclusion.tree_size.to_string(),
            "hashes": inclusion.hashes.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
            "checkpoint": {
                "envelope": self.checkpoint(inclusion.tree_size, &checkpoint_root)
            }
        })
    }
}

/// RFC 6962 leaf hash: `SHA-256(0x00 || data)`.
pub(crate) fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(data)
        .finalize()
        .into()
}

/// RFC 6962 interior node: `SHA-256(0x01 || left || right)`.
fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two strictly below `n` (n >= 2): where RFC 6962 splits a tree.
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]) over leaf hashes.
fn root_hash(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root_hash(&leaves[..k]), &root_hash(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]): the audit path of leaf `m`, leaf to root.
fn inclusion_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    let (mut path, sibling) = if m < k {
        (inclusion_path(m, &leaves[..k]), root_hash(&leaves[k..]))
    } else {
        (inclusion_path(m - k, &leaves[k..]), root_hash(&leaves[..k]))
    };
    path.push(sibling);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recomputes the root from a leaf and its path, as RFC 9162 2.1.3.2 verifies it.
    fn root_from_path(index: usize, size: usize, leaf: Hash, path: &[Hash]) -> Hash {
        let (mut f_n, mut s_n, mut r) = (index, size - 1, leaf);
        for p in path {
            if f_n % 2 == 1 || f_n == s_n {
                r = node_hash(p, &r);
                while f_n % 2 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            } else {
                r = node_hash(&r, p);
            }
            f_n >>= 1;
            s_n >>= 1;
        }
        r
    }

    #[test]
    fn every_path_of_every_small_tree_leads_to_its_root() {
        for size in 1..=17 {
            let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&[i as u8])).collect();
            let root = root_hash(&leaves);
            for (m, leaf) in leaves.iter().enumerate() {
                let path = inclusion_path(m, &leaves);
                assert_eq!(root_from_path(m, size, *leaf, &path), root, "{m}/{size}");
            }
        }
    }

    #[test]
    fn checkpoint_is_a_signed_note_with_the_log_id_hint() {
        for log in [TestLog::rekor_v1(), TestLog::rekor_v2()] {
            let text = log.checkpoint(3, &[7; 32]);
            let (note, sig) = text.split_once("\n\n").unwrap();
            let mut lines = note.lines();
            assert_eq!(lines.next(), Some(log.origin.as_str()));
            assert_eq!(lines.next(), Some("3"));
            assert_eq!(lines.next(), Some(B64.encode([7; 32]).as_str()));
            let sig = sig.strip_prefix("\u{2014} ").unwrap().trim_end();
            let (name, blob) = sig.split_once(' ').unwrap();
            assert_eq!(name, log.name);
            assert_eq!(&B64.decode(blob).unwrap()[..4], &log.log_id()[..4]);
        }
    }
}
