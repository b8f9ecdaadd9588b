//! The one place where errors become OCI error JSON.
//!
//! Every handler returns [`ProxyError`]; [`ProxyError::into_response`] picks the status and the
//! OCI code. What went wrong internally is logged, never sent.
//!
//! Below the handlers, each layer has its own error enum that keeps its cause as a `source`
//! (`AppError`, `ConfigError`, `AirgapError`, `UpstreamSetupError`, …; see
//! `docs/decisions/0009-one-pipeline-gate-and-content.md`). [`Report`] prints one with its whole
//! chain.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::{full, ResponseBody};

/// Where a failure came from: it decides between a 4xx, a 5xx, and whether to serve stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Upstream,
    Internal,
}

/// A failed request, by what the client should learn from it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid repository name {0:?}: {1}")]
    NameInvalid(String, String),
    #[error("{0}")]
    NameUnknown(String),
    #[error("invalid tag {0:?}: tags are 1-128 characters of [A-Za-z0-9_.-], starting with [A-Za-z0-9_]")]
    TagInvalid(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    #[error("{0}")]
    Denied(String),
    /// No valid credentials: a `401` with a Basic challenge.
    #[error("authentication required: {0}")]
    Unauthorized(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("upstream rate limit: {0}")]
    TooManyRequests(String),
    #[error("range not satisfiable for a blob of {0} bytes")]
    RangeNotSatisfiable(u64),
    /// The upstream could not be reached, timed out, or failed (5xx).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The upstream answered with content that failed verification or broke the protocol.
    #[error("upstream sent bad content: {0}")]
    BadUpstream(String),
    /// The upstream sent a manifest that clients could read differently from portcullis, or
    /// that is not a manifest at all: never cached, never served.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// The upstream sent a manifest or document larger than we accept.
    #[error("upstream sent an oversize document: {0}")]
    TooLarge(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::Unavailable(_)
            | ProxyError::BadUpstream(_)
            | ProxyError::ManifestInvalid(_)
            | ProxyError::TooLarge(_) => Origin::Upstream,
            ProxyError::TooManyRequests(_) => Origin::Upstream,
            ProxyError::Internal(_) => Origin::Internal,
            _ => Origin::Client,
        }
    }

    /// Whether a stale cached answer may stand in for this failure.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProxyError::Unavailable(_) | ProxyError::TooManyRequests(_)
        )
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ProxyError::*;
        match self {
            NameInvalid(..) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            TagInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Unsupported(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            RangeNotSatisfiable(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            BadUpstream(_) => (StatusCode::BAD_GATEWAY, "DIGEST_INVALID"),
            TooLarge(_) => (StatusCode::BAD_GATEWAY, "SIZE_INVALID"),
            ManifestInvalid(_) => (StatusCode::BAD_GATEWAY, "MANIFEST_INVALID"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }

    /// OCI error JSON: `{"errors":[{"code","message","detail"}]}`. Internal details stay in
    /// the log.
    pub fn into_response(self, head: bool) -> Response<ResponseBody> {
        let (status, code) = self.status_and_code();
        let message = match &self {
            ProxyError::Internal(_) => "internal error; see the portcullis log".to_owned(),
            other => other.to_string(),
        };
        match self.origin() {
            Origin::Internal => tracing::error!(%code, error = %self, "request failed"),
            Origin::Upstream => tracing::warn!(%code, error = %self, "request failed"),
            Origin::Client => tracing::info!(%code, error = %self, "request refused"),
        }
        let body = json!({"errors": [{"code": code, "message": message, "detail": null}]});
        let bytes = Bytes::from(body.to_string());
        let len = bytes.len();
        let mut resp = Response::new(if head {
            full(Bytes::new())
        } else {
            full(bytes)
        });
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let ProxyError::Unauthorized(_) = &self {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"portcullis\""),
            );
        }
        if let ProxyError::RangeNotSatisfiable(size) = &self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        resp
    }
}

/// An error and its chain of causes, for a log line or the command line: each `source()` that
/// says something its predecessors did not is appended after `": "`. Errors here name their
/// cause in their own message (so that a plain `{e}` loses nothing), and foreign ones (hyper's,
/// rustls') often do not: either way, everything is said once.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = self.0.to_string();
        let mut next = self.0.source();
        while let Some(e) = next {
            let text = e.to_string();
            if !text.is_empty() && !said.contains(&text) {
                said.push_str(": ");
                said.push_str(&text);
            }
            next = e.source();
        }
        f.write_str(&said)
    }
}

impl From<portcullis_cache::Error> for ProxyError {
    /// A store that cannot read or write (a full disk, a RocksDB error) is a `503`: the request
    /// may succeed later, and nothing partial was kept. A corrupt record is a bug: `500`.
    fn from(e: portcullis_cache::Error) -> Self {
        use portcullis_cache::Error;
        match e {
            Error::Db(_) | Error::Io { .. } => {
                ProxyError::Unavailable(format!("the cache cannot be used now: {e}"))
            }
            Error::DigestMismatch { .. } | Error::SizeMismatch { .. } => {
                ProxyError::BadUpstream(e.to_string())
            }
            Error::Corrupt(_) => ProxyError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {source}")]
    struct Says {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Hides {
        source: std::io::Error,
    }

    #[test]
    fn a_report_says_every_cause_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(
            Report(&Says { source: io() }).to_string(),
            "outer: disk on fire"
        );
        assert_eq!(
            Report(&Hides { source: io() }).to_string(),
            "outer: disk on fire"
        );
    }
}
