//! Prometheus counters for every answer: requests by route, status and upstream, cache results,
//! bytes served.

use http::{header, Method};

use super::snapshot::app;
use super::{Next, Req, Resp};
use crate::handlers::Outcome;
use crate::metrics::{RequestLabels, ResultLabel};

pub async fn count(req: Req, next: Next) -> Resp {
    let app = app(&req);
    let head = req.method() == Method::HEAD;
    let resp = next.run(req).await;
    let o = resp
        .extensions()
        .get::<Outcome>()
        .cloned()
        .unwrap_or_default();
    let status = resp.status().as_u16();
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
    let bytes = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if !head && status < 300 {
        m.served_bytes.inc_by(bytes.unwrap_or(0));
    }
    resp
}
