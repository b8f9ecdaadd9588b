//! Pins (`[[trust.pins]]`): digests a person reviewed, by image name, as an authority for
//! images that carry no signature at all (Docker Official Images, for one).
//!
//! A pins file is TOML: `"docker.io/library/alpine" = ["sha256:…", …]`, one array per
//! `registry/repository`, with comments saying who pinned what and when (`portcullis pin`
//! writes them). A pin vouches for that exact digest under that exact name; nothing else.
//! A key may name a tag too (`"docker.io/library/alpine:3.20" = [...]`, what `portcullis pin`
//! writes for a tag): its digests vouch for the name like any pin, and the last one is what
//! the tag is expected to point at (an `immutable_tags` rule follows it, and only it, so that
//! a tag moved back to an older reviewed digest is still a move).
//! A missing file is an empty set, so that a configuration can name the file before the first
//! pin (an empty set vouches for nothing: it fails closed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A pins file larger than this is refused: a pins file is written by people.
const MAX_PINS_FILE: u64 = 4 << 20;

/// A pins file that cannot be read as one (the trust error names the file).
#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    #[error("larger than {MAX_PINS_FILE} bytes")]
    TooLarge,
    #[error("not UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    #[error("not a pins file (\"registry/repository[:tag]\" = [\"sha256:…\"]): {0}")]
    Toml(#[source] Box<toml::de::Error>),
    #[error("{0:?} is not a registry/repository[:tag] name (e.g. \"docker.io/library/alpine\" or \"docker.io/library/alpine:3.20\", no digest)")]
    Name(String),
    #[error("{name:?}: {digest:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)")]
    Digest { name: String, digest: String },
}

/// One set of pins: digests by image name, and the latest pin of each pinned tag.
#[derive(Debug, Clone, Default)]
pub struct PinSet {
    by_name: BTreeMap<String, BTreeSet<String>>,
    by_tag: BTreeMap<(String, String), String>,
}

impl PinSet {
    /// Reads the pins file at `path`; `Ok(None)` when there is none yet. The bytes are returned
    /// too: they are part of the policy's fingerprint.
    pub fn load(path: &Path) -> Result<Option<(PinSet, Vec<u8>)>, PinsError> {
        let bytes = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PinsError::Read(e)),
            Ok(m) if m.len() > MAX_PINS_FILE => return Err(PinsError::TooLarge),
            Ok(_) => std::fs::read(path).map_err(PinsError::Read)?,
        };
        let text = std::str::from_utf8(&bytes).map_err(PinsError::NotUtf8)?;
        Ok(Some((PinSet::parse(text)?, bytes)))
    }

    /// Parses the text of a pins file.
    pub fn parse(text: &str) -> Result<PinSet, PinsError> {
        let table: BTreeMap<String, Vec<String>> =
            toml::from_str(text).map_err(|e| PinsError::Toml(Box::new(e)))?;
        let mut pins = PinSet::default();
        for (key, digests) in table {
            let (name, tag) = split_key(&key)?;
            if let Some(d) = digests.iter().find(|d| !is_digest(d)) {
                return Err(PinsError::Digest {
                    name: key.clone(),
                    digest: d.clone(),
                });
            }
            if let (Some(tag), Some(last)) = (tag, digests.last()) {
                pins.by_tag
                    .insert((name.to_owned(), tag.to_owned()), last.clone());
            }
            pins.by_name
                .entry(name.to_owned())
                .or_default()
                .extend(digests);
        }
        Ok(pins)
    }

    /// Whether `digest` is pinned for exactly `name`.
    pub fn contains(&self, name: &str, digest: &str) -> bool {
        self.by_name.get(name).is_some_and(|s| s.contains(digest))
    }

    /// The digest `name:tag` was last pinned at, if it was pinned by tag.
    pub fn for_tag(&self, name: &str, tag: &str) -> Option<&str> {
        self.by_tag
            .get(&(name.to_owned(), tag.to_owned()))
            .map(String::as_str)
    }
}

/// A pins key: a normalised `registry/repository` (what the proxy matches rules against), with
/// an optional `:tag`. A pin on a name that can never match (a digest in it, upper case, no
/// registry) is a mistake to report, not a pin to ignore.
pub fn split_key(key: &str) -> Result<(&str, Option<&str>), PinsError> {
    let segment = |seg: &str| {
        !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    let registry = |host: &str| {
        let (h, port) = host.split_once(':').unwrap_or((host, "0"));
        segment(h) && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    };
    // Distribution's tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
    let tag_ok = |t: &str| {
        (1..=128).contains(&t.len())
            && !t.starts_with(['.', '-'])
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    let bad = || PinsError::Name(key.to_owned());
    let (host, rest) = key.split_once('/').ok_or_else(bad)?;
    let (repo, tag) = match rest.rsplit_once(':') {
        Some((repo, tag)) => (repo, Some(tag)),
        None => (rest, None),
    };
    let name_len = host.len() + 1 + repo.len();
    if registry(host) && repo.split('/').all(segment) && tag.is_none_or(tag_ok) {
        Ok((&key[..name_len], tag))
    } else {
        Err(bad())
    }
}

fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn pins_vouch_for_exact_name_and_digest() {
        let p = PinSet::parse(&format!(
            "# reviewed by ops\n\"docker.io/library/alpine\" = [\n  \"{A}\", # 3.20\n]\n\"127.0.0.1:5000/a/b\" = [\"{A}\"]\n"
        ))
        .unwrap();
        assert!(p.contains("docker.io/library/alpine", A));
        assert!(p.contains("127.0.0.1:5000/a/b", A));
        assert!(!p.contains("docker.io/library/alpine2", A));
        assert!(!p.contains("docker.io/library/alpine", &A.replace('a', "b")));
    }

    #[test]
    fn malformed_pins_are_errors() {
        for bad in [
            format!("\"alpine\" = [\"{A}\"]"),
            format!("\"docker.io/library/alpine:.x\" = [\"{A}\"]"),
            format!("\"docker.io/library/alpine@{A}\" = [\"{A}\"]"),
            format!("\"docker.io:x/library/alpine\" = [\"{A}\"]"),
            format!("\"docker.io/Library/alpine\" = [\"{A}\"]"),
            "\"docker.io/library/alpine\" = [\"sha256:abc\"]".to_owned(),
            format!("\"docker.io/library/alpine\" = [\"{}\"]", A.to_uppercase()),
            "\"docker.io/library/alpine\" = \"sha256:x\"".to_owned(),
        ] {
            assert!(PinSet::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tag_key_pins_for_the_name_and_its_last_digest_is_the_tag_s() {
        let b = format!("sha256:{}", "b".repeat(64));
        let p = PinSet::parse(&format!(
            "\"127.0.0.1:5000/library/alpine:3.20\" = [\"{A}\", \"{b}\"]\n"
        ))
        .unwrap();
        assert!(p.contains("127.0.0.1:5000/library/alpine", A));
        assert!(p.contains("127.0.0.1:5000/library/alpine", &b));
        assert_eq!(
            p.for_tag("127.0.0.1:5000/library/alpine", "3.20"),
            Some(b.as_str())
        );
        assert_eq!(p.for_tag("127.0.0.1:5000/library/alpine", "3.21"), None);
    }

    #[test]
    fn a_missing_file_is_no_pins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(PinSet::load(&dir.path().join("none.toml"))
            .unwrap()
            .is_none());
    }
}
