//! `GET /v2/<name>/tags/list`, with `n` and `last` passed through and the `Link` header
//! rewritten to the name the client used.

use http::{header, HeaderValue, Method, Response};
use serde::Deserialize;

use super::Query;
use crate::app::App;
use crate::body::{empty, full, ResponseBody};
use crate::error::ProxyError;
use crate::route::Target;
use crate::upstream::{read_limited, status_error};

const MAX_TAG_LIST: usize = 8 * 1024 * 1024;

/// Only checked for shape: the upstream's bytes are passed on unchanged.
#[derive(Deserialize)]
struct TagList {
    #[serde(rename = "tags")]
    _tags: Option<Vec<String>>,
}

pub async fn serve(
    app: &App,
    target: &Target,
    query: &Query,
    head: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    if app.offline() {
        return held_tags(app, target, query, head);
    }
    let up = &target.upstream;
    let what = format!("tags of {}", target.name);
    let mut tail = "tags/list".to_owned();
    let params = pagination(query, None)?;
    if !params.is_empty() {
        tail = format!("{tail}?{params}");
    }
    let resp = up
        .send(Method::GET, &target.repo, &tail, Some("application/json"))
        .await?;
    if !resp.status().is_success() {
        return Err(status_error(&up.name, resp.status(), &what, || {
            ProxyError::NameUnknown(format!("repository {} is not in the upstream", target.name))
        }));
    }
    let link = resp
        .headers()
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| next_link(v, &target.client_name, target.ns.as_deref()));
    let bytes = read_limited(resp.into_body(), MAX_TAG_LIST, up.read_timeout).await?;
    serde_json::from_slice::<TagList>(&bytes)
        .map_err(|e| ProxyError::BadUpstream(format!("{what}: not a tag list: {e}")))?;
    let len = bytes.len();
    let mut out = Response::new(if head { empty() } else { full(bytes) });
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LINK, link);
    }
    Ok(out)
}

/// Offline: the tags the cache holds for this repository, paginated here.
fn held_tags(
    app: &App,
    target: &Target,
    query: &Query,
    head: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    let mut tags: Vec<String> = app
        .store
        .tags()?
        .into_iter()
        .filter(|(repo, tag, _)| repo == &target.name && !tag.contains('\0'))
        .map(|(_, tag, _)| tag)
        .collect();
    if tags.is_empty() {
        return Err(ProxyError::NameUnknown(format!(
            "repository {} is not held, and this mirror is offline",
            target.name
        )));
    }
    tags.sort();
    if let Some(last) = &query.last {
        tags.retain(|t| t > last);
    }
    if let Some(n) = query.n.as_deref().and_then(|n| n.parse::<usize>().ok()) {
        tags.truncate(n);
    }
    let body = serde_json::json!({ "name": target.client_name, "tags": tags }).to_string();
    let len = body.len();
    let mut out = Response::new(if head { empty() } else { full(body.into()) });
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(out)
}

/// `n` and `last` as a query string, checked to be what they claim.
fn pagination(query: &Query, ns: Option<&str>) -> Result<String, ProxyError> {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    if let Some(n) = &query.n {
        n.parse::<u32>()
            .map_err(|_| ProxyError::Unsupported(format!("n={n:?} is not a number")))?;
        out.append_pair("n", n);
    }
    if let Some(last) = &query.last {
        out.append_pair("last", last);
    }
    if let Some(ns) = ns {
        out.append_pair("ns", ns);
    }
    Ok(out.finish())
}

/// Rewrites the upstream's `Link: </v2/<repo>/tags/list?…>; rel="next"` for the client's name.
fn next_link(upstream_link: &str, client_name: &str, ns: Option<&str>) -> Option<String> {
    let inner = upstream_link
        .split('>')
        .next()?
        .trim_start()
        .strip_prefix('<')?;
    let query = inner.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut q = Query::default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "n" => q.n = Some(v.into_owned()),
            "last" => q.last = Some(v.into_owned()),
            _ => {}
        }
    }
    let params = pagination(&q, ns).ok()?;
    Some(format!(
        "</v2/{client_name}/tags/list?{params}>; rel=\"next\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_rewritten_to_the_clients_name_and_namespace() {
        let upstream = r#"</v2/library/alpine/tags/list?last=3.19&n=2>; rel="next""#;
        assert_eq!(
            next_link(upstream, "alpine", None).unwrap(),
            r#"</v2/alpine/tags/list?n=2&last=3.19>; rel="next""#
        );
        assert_eq!(
            next_link(upstream, "library/alpine", Some("docker.io")).unwrap(),
            r#"</v2/library/alpine/tags/list?n=2&last=3.19&ns=docker.io>; rel="next""#
        );
        assert_eq!(next_link("garbage", "a", None), None);
    }
}
