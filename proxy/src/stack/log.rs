//! The request log: one line per request, with what the layers and the handler recorded in the
//! response's [`Outcome`], in a span that every event logged while handling it carries.

use std::time::Instant;

use tracing::Instrument as _;

use super::{Next, Req, Resp};
use crate::handlers::Outcome;

/// Logs method, name, reference, upstream, cache status, bytes, duration and status.
pub async fn line(req: Req, next: Next) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let start = Instant::now();
    let span = tracing::info_span!(
        "request",
        %method,
        %path,
        verdict = tracing::field::Empty
    );
    let resp = next.run(req).instrument(span.clone()).await;
    let o = resp
        .extensions()
        .get::<Outcome>()
        .cloned()
        .unwrap_or_default();
    let status = resp.status().as_u16();
    if let Some(v) = o.verdict {
        span.record("verdict", v);
    }
    let bytes = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let _inside = span.enter();
    tracing::info!(
        target: "portcullis::request",
        %method,
        %path,
        status,
        name = %o.name.as_deref().unwrap_or("-"),
        reference = %o.reference.as_deref().unwrap_or("-"),
        upstream = %o.upstream.as_deref().unwrap_or("-"),
        ns = %o.ns.as_deref().unwrap_or("-"),
        cache = %o.cache,
        verdict = %o.verdict.unwrap_or("-"),
        bytes = bytes.unwrap_or(0),
        ms = start.elapsed().as_secs_f64() * 1000.0,
        outcome = %if status < 400 { "ok" } else { "error" },
    );
    resp
}
