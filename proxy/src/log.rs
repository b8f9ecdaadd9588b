//! The request log: one line per request, with what the handler recorded in [`Outcome`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower::{Layer, Service};
use tracing::Instrument as _;

use crate::handlers::Outcome;

/// Logs method, name, reference, upstream, cache status, bytes, duration and status.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogLayer;

#[derive(Debug, Clone)]
pub struct Log<S> {
    inner: S,
}

impl<S> Layer<S> for LogLayer {
    type Service = Log<S>;

    fn layer(&self, inner: S) -> Log<S> {
        Log { inner }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Log<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let start = Instant::now();
        // One span per request: every event logged while handling it (a denial, a stale serve)
        // carries the request, and the span gets the verdict once it is known.
        let span = tracing::info_span!(
            "request",
            %method,
            %path,
            verdict = tracing::field::Empty
        );
        let fut = self.inner.call(req).instrument(span.clone());
        Box::pin(async move {
            let resp = fut.await?;
            let o = resp
                .extensions()
                .get::<Outcome>()
                .cloned()
                .unwrap_or_default();
            let status = resp.status().as_u16();
            if let Some(v) = o.verdict {
                span.record("verdict", v);
            }
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
                bytes = o.bytes.unwrap_or(0),
                ms = start.elapsed().as_secs_f64() * 1000.0,
                outcome = %if status < 400 { "ok" } else { "error" },
            );
            Ok(resp)
        })
    }
}
