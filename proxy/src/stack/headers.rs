//! What every registry answer carries: `Docker-Distribution-API-Version`, and `OCI-Namespace`
//! echoing the `?ns=` the request was routed by (containerd's `hosts.toml`).

use http::HeaderValue;

use super::{Next, Req, Resp};
use crate::handlers::{outcome, Query};

pub async fn registry(req: Req, next: Next) -> Resp {
    let ns = Query::parse(req.uri().query()).ns;
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    if let Some(v) = ns.as_deref().and_then(|ns| HeaderValue::from_str(ns).ok()) {
        h.insert("OCI-Namespace", v);
    }
    outcome(&mut resp).ns = ns;
    resp
}
