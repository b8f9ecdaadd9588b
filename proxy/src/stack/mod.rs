//! The request path as one ordered tower stack, assembled here, outermost layer first. Each
//! layer is an `async fn(Request, Next) -> Response` in a file of its own; what a layer learns
//! for the ones outside it travels in the response's [`Outcome`](crate::handlers::Outcome).

mod auth;
mod from_fn;
mod headers;
mod health;
mod log;
mod metrics;
mod route;
mod snapshot;

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use tower::util::BoxCloneService;
use tower::ServiceBuilder;

pub use auth::Peer;
pub use from_fn::Next;
pub use route::Routed;
pub use snapshot::app;

use crate::body::ResponseBody;
use crate::server::State;

pub type Req = Request<Incoming>;
pub type Resp = Response<ResponseBody>;

/// The registry API's service for one listener.
pub fn service(state: State) -> BoxCloneService<Req, Resp, Infallible> {
    let handler = tower::service_fn(|req: Req| async move {
        Ok::<_, Infallible>(crate::handlers::handle(req).await)
    });
    let stack = ServiceBuilder::new()
        // One log line per request, with what every layer below learnt.
        .layer(from_fn::layer(log::line))
        // Each request sees one whole configuration, whatever reloads happen meanwhile.
        .layer(from_fn::layer(move |req, next| {
            snapshot::pin(state.clone(), req, next)
        }))
        // Liveness and readiness answer before anything else, credentials included.
        .layer(from_fn::layer(health::probes))
        // Count what the client got, errors from any layer below included.
        .layer(from_fn::layer(metrics::count))
        // Every answer carries the API version, and echoes the `?ns=` it was routed by.
        .layer(from_fn::layer(headers::registry))
        // Nothing, not even a route lookup, for a client without valid credentials.
        .layer(from_fn::layer(auth::authenticate))
        // The method, the path, the upstream, the user's grant and the allow/deny lists, all
        // before any upstream traffic.
        .layer(from_fn::layer(route::admit))
        .service(handler);
    BoxCloneService::new(stack)
}
