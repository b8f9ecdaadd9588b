//! `/healthz` (the process is up) and `/readyz` (the cache is open and a configuration is in
//! force). Upstream reachability is reported, never a reason to be unready: stale and cached
//! content can still be served.

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use serde_json::json;

use crate::app::App;
use crate::body::{full, ResponseBody};

pub fn live() -> Response<ResponseBody> {
    text(Bytes::from_static(b"ok"), "text/plain")
}

/// Readiness without details, for a port anyone may ask.
pub fn ready_public() -> Response<ResponseBody> {
    text(Bytes::from_static(br#"{"ready":true}"#), "application/json")
}

/// The readiness report as JSON text.
pub fn readiness(app: &App) -> String {
    json!({
        "ready": true,
        "cache": { "dir": app.config.cache.dir, "bytes": app.store.size() },
        "config": "loaded",
        "offline": app.offline(),
        // Reported, never a reason to be unready: cached and stale content can still be served.
        "upstreams": app.router.upstreams().iter().map(|u| (u.name.clone(), u.reachability())).collect::<std::collections::BTreeMap<_, _>>(),
        // Also reported only: without the bucket, each replica serves from itself and upstream.
        "shared": app.shared.as_ref().map(|t| json!({
            "url": t.config().url,
            "state": if t.up() { "up" } else { "down" },
            "conditional_writes": t.conditional_writes(),
        })),
    })
    .to_string()
}

fn text(body: Bytes, content_type: &'static str) -> Response<ResponseBody> {
    let len = body.len();
    let mut resp = Response::new(full(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}
