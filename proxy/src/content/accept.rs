//! `Accept` negotiation for manifests. Docker sends one header line per media type; containerd
//! sends one comma-joined line: read them all.

use http::{header, HeaderMap};

/// The manifest media types portcullis serves.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The media types a client accepts. Empty means anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accept {
    types: Vec<String>,
}

impl Accept {
    pub fn from_headers(headers: &HeaderMap) -> Accept {
        let mut types = Vec::new();
        for value in headers.get_all(header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let mt = item
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                if mt == "*/*" {
                    return Accept::default();
                }
                if !mt.is_empty() && !types.contains(&mt) {
                    types.push(mt);
                }
            }
        }
        Accept { types }
    }

    pub fn accepts(&self, media_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == media_type)
    }

    /// The `Accept` to send upstream: the client's, or every type we serve.
    pub fn upstream_header(&self) -> String {
        if self.types.is_empty() {
            MANIFEST_TYPES.join(", ")
        } else {
            self.types.join(", ")
        }
    }

    /// The tag-mapping key: a tag can resolve to different manifests for clients that accept
    /// different types, so a narrower `Accept` gets a mapping of its own.
    pub fn tag_key(&self, tag: &str) -> String {
        let mask: String = MANIFEST_TYPES
            .iter()
            .map(|t| if self.accepts(t) { '1' } else { '0' })
            .collect();
        if mask == "1111" {
            tag.to_owned()
        } else {
            format!("{tag}\0{mask}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn reads_every_line_and_every_item() {
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT, HeaderValue::from_static(MANIFEST_TYPES[3]));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.docker.distribution.manifest.list.v2+json; q=0.5, application/vnd.oci.image.manifest.v1+json"),
        );
        let a = Accept::from_headers(&h);
        assert!(a.accepts(MANIFEST_TYPES[3]));
        assert!(a.accepts(MANIFEST_TYPES[2]));
        assert!(a.accepts(MANIFEST_TYPES[1]));
        assert!(!a.accepts(MANIFEST_TYPES[0]));
        assert_eq!(a.tag_key("v1"), "v1\u{0}0111");
    }

    #[test]
    fn wildcard_and_absent_accept_everything() {
        let mut h = HeaderMap::new();
        assert_eq!(Accept::from_headers(&h).tag_key("v1"), "v1");
        h.append(header::ACCEPT, HeaderValue::from_static("text/plain, */*"));
        assert!(Accept::from_headers(&h).accepts(MANIFEST_TYPES[0]));
    }
}
