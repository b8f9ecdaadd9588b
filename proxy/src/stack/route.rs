//! Route and admit: a read-only method, a path the distribution grammar accepts, an upstream
//! (`?ns=`, a path prefix, or the default), the user's grant, and the allow/deny lists, all
//! before any upstream traffic. What it found travels on as [`Routed`].

use http::Method;
use portcullis_policy::NameDecision;

use super::auth::User;
use super::snapshot::app;
use super::{Next, Req, Resp};
use crate::app::App;
use crate::error::ProxyError;
use crate::handlers::{outcome, Query};
use crate::route::{parse_path, Endpoint, Target};

/// Where a request goes, for the handler.
#[derive(Clone)]
pub struct Routed {
    pub endpoint: Endpoint,
    /// `None` for the base endpoint (`/v2/`), which names no repository.
    pub target: Option<Target>,
    pub query: Query,
    pub head: bool,
}

pub async fn admit(mut req: Req, next: Next) -> Resp {
    let head = req.method() == Method::HEAD;
    let (route, routed) = match routed(&app(&req), &req) {
        Ok(r) => r,
        Err((route, e)) => {
            let mut resp = e.into_response(head);
            outcome(&mut resp).route = route;
            return resp;
        }
    };
    let (name, upstream) = match &routed.target {
        Some(t) => (Some(t.name.clone()), Some(t.upstream.name.clone())),
        None => (None, None),
    };
    req.extensions_mut().insert(routed);
    let mut resp = next.run(req).await;
    let o = outcome(&mut resp);
    o.route = route;
    o.name = name;
    o.upstream = upstream;
    resp
}

/// The metrics label of an endpoint.
fn label(endpoint: &Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Base => "base",
        Endpoint::Manifest(_) => "manifest",
        Endpoint::Blob(_) => "blob",
        Endpoint::Tags => "tags",
        Endpoint::Referrers(_) => "referrers",
    }
}

fn routed(app: &App, req: &Req) -> Result<(&'static str, Routed), (&'static str, ProxyError)> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        ref m => {
            return Err((
                "other",
                ProxyError::MethodNotAllowed(format!(
                    "{m} is not supported: portcullis is a read-only pull-through proxy"
                )),
            ))
        }
    };
    let (client_name, endpoint) = parse_path(req.uri().path()).map_err(|e| ("other", e))?;
    let route = label(&endpoint);
    let query = Query::parse(req.uri().query());
    if endpoint == Endpoint::Base {
        let routed = Routed {
            endpoint,
            target: None,
            query,
            head,
        };
        return Ok((route, routed));
    }
    let target = app
        .router
        .route_request(&client_name, query.ns.as_deref())
        .map_err(|e| (route, e))?;
    if let (Some(auth), Some(User(user))) = (&app.auth, req.extensions().get::<User>()) {
        if !auth.allows(user, &target.name) {
            let e = ProxyError::Denied(format!(
                "user {user:?} may not pull {}: no [[auth.grant]] gives it",
                target.name
            ));
            return Err((route, e));
        }
    }
    check_lists(app, &target).map_err(|e| (route, e))?;
    let routed = Routed {
        endpoint,
        target: Some(target),
        query,
        head,
    };
    Ok((route, routed))
}

/// The allow-list and deny-list. A name that no rule covers and that `[policy] default =
/// "deny"` refuses is refused here too.
fn check_lists(app: &App, target: &Target) -> Result<(), ProxyError> {
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
