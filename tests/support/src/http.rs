//! A small async plain-HTTP client (hyper-util's legacy client) for asserting on responses.
//!
//! A new client is made per call: a pooled client kept across `#[tokio::test]` runtimes would
//! hold connections whose runtime is gone.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Whole-exchange limit: long enough for a 50 MiB blob through a cold proxy.
const TIMEOUT: Duration = Duration::from_secs(120);

/// A fully read response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: ::http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The header's value as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `method url` with `headers` (a repeated name sends repeated header lines, as Docker
/// does for Accept) and an empty body. Panics on a transport error or after 120 s.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> Response {
    try_request(method, url, headers, Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// `GET url` with no extra headers.
pub async fn get(url: &str) -> Response {
    request("GET", url, &[]).await
}

/// As [`request`] with a body, returning transport errors (refused connection, reset, timeout)
/// instead of panicking.
pub async fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Response, String> {
    let mut builder = ::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no full response within {TIMEOUT:?}"))?
}
