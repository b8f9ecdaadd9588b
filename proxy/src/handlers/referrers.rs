//! `GET`/`HEAD /v2/<name>/referrers/<digest>`: the subject's referrers from
//! [`content::referrers`](crate::content::referrers), with portcullis' own verification summary
//! of a subject that passed (`[attest]`), filtered by `?artifactType=`. A referrer is only a
//! pointer: what it points to passes the gate when it is fetched.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use portcullis_cache::Digest;

use super::Outcome;
use crate::app::App;
use crate::body::{empty, full, ResponseBody};
use crate::content::referrers::{self, INDEX_MEDIA_TYPE};
use crate::error::ProxyError;
use crate::route::Target;

/// Serves the referrers index, filtered by `?artifactType=` if given. Always `200`, even when
/// there are none (the spec's answer to a subject without referrers).
pub async fn serve(
    app: &App,
    target: &Target,
    subject: &Digest,
    artifact_type: Option<&str>,
    head: bool,
    outcome: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Only for a manifest this repository holds (a client pulls the image first): a lookup for
    // any digest a client makes up would cost an upstream call and a record each.
    let held =
        app.store.manifest(subject)?.is_some() && app.store.is_linked(&target.name, subject)?;
    let all = if held {
        let (all, obtained) = referrers::referrers(app, target, subject).await?;
        outcome.cache = obtained.as_str();
        // With `[attest]`, the summary of a subject that passed is listed first.
        crate::attest::referrers(app, target, subject, all)?
    } else {
        Arc::new(referrers::ReferrersIndex::new(Vec::new()))
    };
    let index = match artifact_type {
        Some(t) => Arc::new(all.filtered(t)),
        None => all,
    };
    let body = serde_json::to_vec(&*index).map_err(|e| ProxyError::Internal(e.to_string()))?;
    let len = body.len();
    let mut resp = Response::new(if head {
        empty()
    } else {
        full(Bytes::from(body))
    });
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(INDEX_MEDIA_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if artifact_type.is_some() {
        h.insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}
