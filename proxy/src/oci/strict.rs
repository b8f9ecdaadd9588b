//! Reads untrusted JSON the way the strictest client would, and refuses what two parsers could
//! read differently.
//!
//! Docker, containerd, skopeo and distribution decode with Go's `encoding/json`: an object key
//! that is not an exact field name still fills that field when it matches under Go's case
//! folding, and when several keys match, the last one wins. serde reads exact names only and
//! ignores the rest. A document with a duplicate key, or with a key that folds to a field name
//! without being it, is therefore read one way here and another way by the client: refused.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a document is ambiguous.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguity {
    /// serde's message, kept as text: these errors are compared and cloned.
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("the key {0:?} appears twice in one object")]
    Duplicate(String),
    #[error("the key {key:?} is not the field {field:?}, but Go clients read it as that field")]
    Folded { key: String, field: &'static str },
}

/// The fields of one family of documents, and which of them hold free-form maps (whose keys
/// Go matches exactly, so only duplicates matter there).
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub names: &'static [&'static str],
    pub maps: &'static [&'static str],
}

/// Checks `bytes` against `fields` at every depth; returns the parsed tree for the caller's own
/// shape checks.
pub fn check(bytes: &[u8], fields: Fields) -> Result<Raw, Ambiguity> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| Ambiguity::NotJson(e.to_string()))?;
    walk(&raw, fields, false)?;
    Ok(raw)
}

/// A JSON value that keeps every key of every object, in order, duplicates included.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Scalar,
    String(String),
    Array(Vec<Raw>),
    Object(Vec<(String, Raw)>),
}

impl Raw {
    /// The value of `key` in an object (keys are unique once checked).
    pub fn get(&self, key: &str) -> Option<&Raw> {
        match self {
            Raw::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Raw::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Raw::Object(_))
    }
}

fn walk(raw: &Raw, fields: Fields, in_map: bool) -> Result<(), Ambiguity> {
    match raw {
        Raw::Array(items) => items.iter().try_for_each(|v| walk(v, fields, false)),
        Raw::Object(entries) => {
            let mut seen = HashSet::with_capacity(entries.len());
            for (key, value) in entries {
                if !seen.insert(key.as_str()) {
                    return Err(Ambiguity::Duplicate(key.clone()));
                }
                if !in_map && !fields.names.contains(&key.as_str()) {
                    let folded = go_fold(key);
                    if let Some(field) = fields.names.iter().find(|f| go_fold(f) == folded) {
                        return Err(Ambiguity::Folded {
                            key: key.clone(),
                            field,
                        });
                    }
                }
                let map = !in_map && fields.maps.contains(&key.as_str());
                walk(value, fields, map)?;
            }
            Ok(())
        }
        Raw::Scalar | Raw::String(_) => Ok(()),
    }
}

/// Go's key folding (`encoding/json`'s `foldName`): ASCII letters to upper case, any other rune
/// `r` to `unicode.ToUpper(unicode.ToLower(r))`, with Unicode's simple (one-rune) mappings. So
/// U+212A KELVIN SIGN folds to `K`, U+017F LONG S to `S`, U+0130 and U+0131 to `I`.
pub fn go_fold(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_ascii_uppercase()
            } else {
                simple_upper(simple_lower(c))
            }
        })
        .collect()
}

fn simple_lower(c: char) -> char {
    // The one rune whose full lower-case mapping is longer than its simple one.
    if c == '\u{130}' {
        return 'i';
    }
    single(c.to_lowercase()).unwrap_or(c)
}

fn simple_upper(c: char) -> char {
    single(c.to_uppercase()).unwrap_or(c)
}

fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
    let first = it.next()?;
    it.next().is_none().then_some(first)
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Raw, E> {
        Ok(Raw::Scalar)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Raw, E> {
        Ok(Raw::Scalar)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Raw, E> {
        Ok(Raw::Scalar)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Raw, E> {
        Ok(Raw::Scalar)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Scalar)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Raw::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Raw>()? {
            entries.push((k, v));
        }
        Ok(Raw::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: Fields = Fields {
        names: &["mediaType", "layers", "annotations", "os.version"],
        maps: &["annotations"],
    };

    fn verdict(doc: &str) -> Result<(), Ambiguity> {
        check(doc.as_bytes(), FIELDS).map(|_| ())
    }

    #[test]
    fn folds_like_go() {
        assert_eq!(go_fold("mediaType"), "MEDIATYPE");
        assert_eq!(go_fold("\u{212A}ey"), "KEY");
        assert_eq!(go_fold("la\u{17F}t"), "LAST");
        assert_eq!(go_fold("\u{130}\u{131}"), "II");
        assert_eq!(go_fold("stra\u{DF}e"), "STRA\u{DF}E");
    }

    #[test]
    fn exact_fields_and_unknown_keys_pass() {
        assert!(
            verdict(r#"{"mediaType":"a","layers":[{"mediaType":"b","x":1}],"other":true}"#).is_ok()
        );
        assert!(
            verdict(r#"{"annotations":{"MediaType":"fine: a map key","mediatype":"also"}}"#)
                .is_ok()
        );
    }

    #[test]
    fn refuses_duplicates_at_any_depth() {
        assert_eq!(
            verdict(r#"{"mediaType":"a","mediaType":"b"}"#),
            Err(Ambiguity::Duplicate("mediaType".into()))
        );
        assert!(verdict(r#"{"layers":[{"x":1,"x":2}]}"#).is_err());
        assert!(verdict(r#"{"annotations":{"k":"1","k":"2"}}"#).is_err());
    }

    #[test]
    fn refuses_keys_that_fold_to_a_field() {
        for key in [
            "MediaType",
            "MEDIATYPE",
            "Layers",
            "la\u{17F}t",
            "O\u{17F}.version",
        ] {
            let doc = format!(r#"{{"layers":[{{"{key}":"x"}}]}}"#);
            let expected = !matches!(key, "la\u{17F}t");
            assert_eq!(verdict(&doc).is_err(), expected, "{key}");
        }
        // The escape decodes before folding, as in Go.
        assert!(verdict(r#"{"\u004dediaType":"x"}"#).is_err());
        assert!(verdict("{\"\u{212A}ey\":1}").is_ok());
        let kelvin = Fields {
            names: &["key"],
            maps: &[],
        };
        assert!(check("{\"\u{212A}ey\":1}".as_bytes(), kelvin).is_err());
    }

    #[test]
    fn refuses_what_is_not_json() {
        assert!(matches!(verdict("{"), Err(Ambiguity::NotJson(_))));
        assert!(matches!(
            check(b"{\"a\":\"\xff\"}", FIELDS),
            Err(Ambiguity::NotJson(_))
        ));
    }
}
