//! Registry routes (pull side of the OCI distribution spec): dispatch, and what every response
//! carries.

mod blobs;
mod health;
mod manifests;
mod referrers;
mod tags;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use portcullis_policy::NameDecision;

pub use health::readiness;

use crate::app::App;
use crate::body::{full, ResponseBody};
use crate::content::Accept;
use crate::error::ProxyError;
use crate::metrics::{RequestLabels, ResultLabel};
use crate::route::{parse_path, Endpoint, Target};

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
    pub bytes: Option<u64>,
    /// base, manifest, blob, tags, referrers, other: the metrics label.
    pub route: &'static str,
    /// The verdict's decision, for manifests.
    pub verdict: Option<&'static str>,
}

/// Handles one request. Never fails: errors become OCI error JSON here.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<ResponseBody> {
    let head = req.method() == Method::HEAD;
    match req.uri().path() {
        "/healthz" => return health::live(),
        "/readyz" => return health::ready(&app),
        _ => {}
    }
    let mut outcome = Outcome {
        cache: "none",
        route: "other",
        ..Outcome::default()
    };
    let query = Query::parse(req.uri().query());
    outcome.ns = query.ns.clone();
    let mut resp = match dispatch(&app, &req, &query, &mut outcome).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(head),
    };
    let h = resp.headers_mut();
    h.insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    if let Some(ns) = query
        .ns
        .as_deref()
        .and_then(|ns| HeaderValue::from_str(ns).ok())
    {
        h.insert("OCI-Namespace", ns);
    }
    outcome.bytes = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    record(&app, &outcome, resp.status().as_u16(), head);
    resp.extensions_mut().insert(outcome);
    resp
}

fn record(app: &App, o: &Outcome, status: u16, head: bool) {
    let m = &app.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            route: o.route,
            status,
            upstream: o.upstream.clone().unwrap_or_default(),
        })
        .inc();
    if o.cache != "none" {
        m.cache
            .get_or_create(&ResultLabel { result: o.cache })
            .inc();
    }
    if !head && status < 300 {
        m.served_bytes.inc_by(o.bytes.unwrap_or(0));
    }
}

/// The query parameters registries use.
#[derive(Debug, Default)]
pub struct Query {
    pub ns: Option<String>,
    pub n: Option<String>,
    pub last: Option<String>,
    /// `artifactType`, the referrers filter.
    pub artifact_type: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Query {
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
    query: &Query,
    outcome: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        ref m => {
            return Err(ProxyError::MethodNotAllowed(format!(
                "{m} is not supported: portcullis is a read-only pull-through proxy"
            )))
        }
    };
    // Authentication first: nothing, not even a route lookup, for an unknown client.
    let user = match &app.auth {
        Some(auth) => Some(auth.authenticate(req.headers()).ok_or_else(|| {
            ProxyError::Unauthorized("send basic credentials or a bearer token".into())
        })?),
        None => None,
    };
    let (client_name, endpoint) = parse_path(req.uri().path())?;
    outcome.route = match endpoint {
        Endpoint::Base => "base",
        Endpoint::Manifest(_) => "manifest",
        Endpoint::Blob(_) => "blob",
        Endpoint::Tags => "tags",
        Endpoint::Referrers(_) => "referrers",
    };
    if endpoint == Endpoint::Base {
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
    }
    let target = app.router.route(&client_name, query.ns.as_deref())?;
    if let (Some(auth), Some(user)) = (&app.auth, &user) {
        if !auth.allows(user, &target.name) {
            return Err(ProxyError::Denied(format!(
                "user {user:?} may not pull {}: no [[auth.grant]] gives it",
                target.name
            )));
        }
    }
    outcome.name = Some(target.name.clone());
    outcome.upstream = Some(target.upstream.name.clone());
    admit(app, &target)?;
    match endpoint {
        Endpoint::Base => unreachable!("answered above"),
        Endpoint::Manifest(reference) => {
            outcome.reference = Some(reference.to_string());
            let accept = Accept::from_headers(req.headers());
            manifests::serve(app, &target, &reference, &accept, head, outcome).await
        }
        Endpoint::Blob(digest) => {
            outcome.reference = Some(digest.to_string());
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok());
            blobs::serve(app, &target, &digest, range, head, outcome).await
        }
        Endpoint::Tags => tags::serve(app, &target, query, head).await,
        Endpoint::Referrers(subject) => {
            outcome.reference = Some(subject.to_string());
            let filter = query.artifact_type.as_deref();
            referrers::serve(app, &target, &subject, filter, head, outcome).await
        }
    }
}

/// The allow-list and deny-list, before any upstream traffic. A name that no rule covers and
/// that `[policy] default = "deny"` refuses is also refused here, before any upstream traffic.
fn admit(app: &App, target: &Target) -> Result<(), ProxyError> {
    match app.policy.names.check(&target.name) {
        NameDecision::Refused(why) => Err(ProxyError::Denied(why)),
        NameDecision::Allowed(portcullis_policy::DefaultAction::Deny)
            if app.policy.rules_for(&target.name).is_empty() =>
        {
            let v = app
                .policy
                .evaluate(&target.name, "<digest>", &Default::default());
            Err(ProxyError::Denied(v.message))
        }
        NameDecision::Allowed(_) => Ok(()),
    }
}
