//! `/healthz` and `/readyz`: probes answer before authentication and routing. The registry port
//! answers anyone, so its `/readyz` says only that it is ready; the details (cache directory,
//! upstreams' state) are on the metrics listener.

use http::Method;

use super::{Next, Req, Resp};
use crate::handlers::health;

pub async fn probes(req: Req, next: Next) -> Resp {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return next.run(req).await;
    }
    match req.uri().path() {
        "/healthz" => health::live(),
        "/readyz" => health::ready_public(),
        _ => next.run(req).await,
    }
}
