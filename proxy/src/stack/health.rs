//! `/healthz` and `/readyz`: probes answer before authentication and routing.

use http::Method;

use super::snapshot::app;
use super::{Next, Req, Resp};
use crate::handlers::health;

pub async fn probes(req: Req, next: Next) -> Resp {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return next.run(req).await;
    }
    match req.uri().path() {
        "/healthz" => health::live(),
        "/readyz" => health::ready(&app(&req)),
        _ => next.run(req).await,
    }
}
