//! Pins (`[[trust.pins]]`): digests a person reviewed, by image name, as an authority for
//! images that carry no signature at all (Docker Official Images, for one).
//!
//! A pins file is TOML: `"docker.io/library/alpine" = ["sha256:…", …]`, one array per
//! `registry/repository`, with comments saying who pinned what and when (`portcullis pin`
//! writes them). A pin vouches for that exact digest under that exact name; nothing else.
//! A missing file is an empty set, so that a configuration can name the file before the first
//! pin (an empty set vouches for nothing: it fails closed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::PolicyError;

/// A pins file larger than this is refused: a pins file is written by people.
const MAX_PINS_FILE: u64 = 4 << 20;

/// One set of pins: digests by image name.
#[derive(Debug, Clone, Default)]
pub struct PinSet {
    by_name: BTreeMap<String, BTreeSet<String>>,
}

impl PinSet {
    /// Reads the pins file at `path`; `Ok(None)` when there is none yet. The bytes are returned
    /// too: they are part of the policy's fingerprint.
    pub fn load(path: &Path, ctx: &str) -> Result<Option<(PinSet, Vec<u8>)>, PolicyError> {
        let bad = |m: String| PolicyError::Trust(format!("{ctx}: {}: {m}", path.display()));
        let bytes = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(format!("cannot read: {e}"))),
            Ok(m) if m.len() > MAX_PINS_FILE => {
                return Err(bad(format!("larger than {MAX_PINS_FILE} bytes")))
            }
            Ok(_) => std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?,
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8".into()))?;
        Ok(Some((PinSet::parse(text).map_err(bad)?, bytes)))
    }

    /// Parses the text of a pins file.
    pub fn parse(text: &str) -> Result<PinSet, String> {
        let table: BTreeMap<String, Vec<String>> = toml::from_str(text).map_err(|e| {
            format!("not a pins file (\"registry/repository\" = [\"sha256:…\"]): {e}")
        })?;
        let mut by_name = BTreeMap::new();
        for (name, digests) in table {
            check_name(&name)?;
            let mut set = BTreeSet::new();
            for d in digests {
                check_digest(&d).map_err(|e| format!("{name:?}: {e}"))?;
                set.insert(d);
            }
            by_name.insert(name, set);
        }
        Ok(PinSet { by_name })
    }

    /// Whether `digest` is pinned for exactly `name`.
    pub fn contains(&self, name: &str, digest: &str) -> bool {
        self.by_name.get(name).is_some_and(|s| s.contains(digest))
    }

    /// Every pin: name and digest.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_name
            .iter()
            .flat_map(|(n, ds)| ds.iter().map(move |d| (n.as_str(), d.as_str())))
    }
}

/// A normalised `registry/repository`: what the proxy matches rules against. A pin on a name
/// that can never match (a tag or digest in it, upper case, no registry) is a mistake to report,
/// not a pin to ignore.
fn check_name(name: &str) -> Result<(), String> {
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
    let ok = match name.split_once('/') {
        Some((host, repo)) => registry(host) && repo.split('/').all(segment),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a registry/repository name (e.g. \"docker.io/library/alpine\", no tag or digest)"
        ))
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    match d.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{d:?} is not a sha256 digest (sha256: and 64 lowercase hex digits)"
        )),
    }
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
            format!("\"docker.io/library/alpine:3.20\" = [\"{A}\"]"),
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
    fn a_missing_file_is_no_pins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(PinSet::load(&dir.path().join("none.toml"), "t")
            .unwrap()
            .is_none());
    }
}
