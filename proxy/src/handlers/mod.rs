//! Registry routes (pull side of the OCI distribution spec), below the request stack
//! ([`crate::stack`]): each handler parses what is left of the request, calls the gate and the
//! content layer, and maps errors; the [`Outcome`] it fills is what the log and metrics report.

mod blobs;
pub(crate) mod health;
mod manifests;
mod referrers;
mod tags;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use hyper::body::Incoming;

pub use blobs::byte_range;
pub use health::readiness;

use crate::app::App;
use crate::body::{full, ResponseBody};
use crate::content::Accept;
use crate::error::ProxyError;
use crate::route::Endpoint;
use crate::stack::Routed;

/// What the request log says about a request, filled in as it is handled.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub name: Option<String>,
    pub reference: Option<String>,
    pub upstream: Option<String>,
    /// The `?ns=` the client sent (containerd).
    pub ns: Option<String>,
    /// hit, miss, joined (single-flight), stale, or none.
    pub cache: &'static str,
    /// base, manifest, blob, tags, referrers, other: the metrics label.
    pub route: &'static str,
    /// The verdict's decision, for manifests.
    pub verdict: Option<&'static str>,
}

/// The response's [`Outcome`], created empty if no one recorded one yet.
pub fn outcome(resp: &mut Response<ResponseBody>) -> &mut Outcome {
    if resp.extensions().get::<Outcome>().is_none() {
        resp.extensions_mut().insert(Outcome {
            cache: "none",
            route: "other",
            ..Outcome::default()
        });
    }
    resp.extensions_mut()
        .get_mut::<Outcome>()
        .expect("inserted above")
}

/// Handles one request that the stack ([`crate::stack`]) pinned, authenticated, routed and
/// admitted. Never fails: errors become OCI error JSON here.
pub async fn handle(req: Request<Incoming>) -> Response<ResponseBody> {
    let app = crate::stack::app(&req);
    let routed = req
        .extensions()
        .get::<Routed>()
        .cloned()
        .expect("the route layer runs before the handler");
    let mut o = Outcome {
        cache: "none",
        route: "other",
        ..Outcome::default()
    };
    let head = routed.head;
    let mut resp = match dispatch(&app, &req, &routed, &mut o).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(head),
    };
    let kept = outcome(&mut resp);
    kept.reference = o.reference;
    kept.cache = o.cache;
    kept.verdict = o.verdict;
    resp
}

/// The query parameters registries use.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub ns: Option<String>,
    pub n: Option<String>,
    pub last: Option<String>,
    /// `artifactType`, the referrers filter.
    pub artifact_type: Option<String>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "ns" => q.ns = Some(v.into_owned()),
                "n" => q.n = Some(v.into_owned()),
                "last" => q.last = Some(v.into_owned()),
                "artifactType" => q.artifact_type = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    }
}

async fn dispatch(
    app: &Arc<App>,
    req: &Request<Incoming>,
    routed: &Routed,
    outcome: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    let head = routed.head;
    let Some(target) = &routed.target else {
        // `/v2/`: the API is here (and the client's credentials, if any, were good).
        let mut resp = Response::new(if head {
            full(Bytes::new())
        } else {
            full(Bytes::from_static(b"{}"))
        });
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(2));
        return Ok(resp);
    };
    match &routed.endpoint {
        Endpoint::Base => unreachable!("answered above: the base endpoint has no target"),
        Endpoint::Manifest(reference) => {
            outcome.reference = Some(reference.to_string());
            let accept = Accept::from_headers(req.headers());
            manifests::serve(app, target, reference, &accept, head, outcome).await
        }
        Endpoint::Blob(digest) => {
            outcome.reference = Some(digest.to_string());
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok());
            blobs::serve(app, target, digest, range, head, outcome).await
        }
        Endpoint::Tags => tags::serve(app, target, &routed.query, head).await,
        Endpoint::Referrers(subject) => {
            outcome.reference = Some(subject.to_string());
            let filter = routed.query.artifact_type.as_deref();
            referrers::serve(app, target, subject, filter, head, outcome).await
        }
    }
}
