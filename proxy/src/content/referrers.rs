//! Referrer lists (OCI distribution 1.1, "Listing Referrers"): what the referrers endpoint
//! serves and what the gate reads.
//!
//! The upstream's referrers API is asked first. A `404` (distribution 2.8 has no such API) or an
//! answer that is not an OCI index falls back to the referrers tag schema: the `sha256-<hex>` tag
//! holding an index of the referrers; no such tag means no referrers. A referrer is only a
//! pointer: nothing listed here is trusted, and the gate fetches and verifies what it points to.
//! The list is cached per repository and subject with the time it was fetched, under the tag
//! rules of manifests: fresh within `tag_ttl`, served stale up to `max_stale` while the upstream
//! is down, never cached from a transient failure; offline, only what is held.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::{header, Method, StatusCode};
use portcullis_cache::{now_ms, Digest};
use serde::{Deserialize, Serialize};

use super::{manifests, Accept, Obtained};
use crate::app::App;
use crate::error::ProxyError;
use crate::route::Target;
use crate::upstream::{read_limited, status_error};

/// The media type of an OCI image index: what the referrers API answers with.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// At most this many referrers of one subject are kept; the rest are dropped with a warning.
pub const MAX_REFERRERS: usize = 256;
/// Pages of an upstream referrers answer that are followed (`Link: <…>; rel="next"`).
const MAX_PAGES: usize = 8;
/// The store's meta namespace for cached lists.
const META: &str = "referrers";

/// One referrer, as the referrers API lists it: a pointer to an artifact manifest, never trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referrer {
    /// The artifact manifest's media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The artifact manifest's digest: fetch it by this and check the bytes hash to it.
    pub digest: Digest,
    pub size: u64,
    /// What the artifact is (e.g. `application/vnd.dev.sigstore.bundle.v0.3+json`); what
    /// `?artifactType=` filters on.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The referrers of one subject as an OCI image index: what the endpoint serves (serialized as
/// is) and what the gate reads (`manifests`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrersIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Distinct by digest, at most [`MAX_REFERRERS`], in the upstream's order.
    pub manifests: Vec<Referrer>,
}

/// A cached list and when it was fetched (the in-memory layer holds these).
#[derive(Debug, Clone)]
pub struct HeldReferrers {
    fetched_at_ms: u64,
    index: Arc<ReferrersIndex>,
}

/// The RocksDB record of a [`HeldReferrers`].
#[derive(Serialize, Deserialize)]
struct Record<I> {
    fetched_at_ms: u64,
    index: I,
}

/// Just enough of an index to find its descriptors; each is then read on its own.
#[derive(Deserialize)]
struct RawIndex {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<serde_json::Value>,
}

impl ReferrersIndex {
    /// An index of `manifests`, without duplicate digests, cut to [`MAX_REFERRERS`].
    pub fn new(manifests: Vec<Referrer>) -> ReferrersIndex {
        let mut seen = HashSet::new();
        let manifests = manifests
            .into_iter()
            .filter(|r| seen.insert(r.digest.clone()))
            .take(MAX_REFERRERS)
            .collect();
        ReferrersIndex {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE.to_owned(),
            manifests,
        }
    }

    /// The referrers whose `artifactType` is `artifact_type`.
    pub fn filtered(&self, artifact_type: &str) -> ReferrersIndex {
        let manifests = self
            .manifests
            .iter()
            .filter(|r| r.artifact_type.as_deref() == Some(artifact_type))
            .cloned()
            .collect();
        ReferrersIndex::new(manifests)
    }
}

/// The referrers of `subject` in `target`'s repository, for the gate: from the cache while fresh,
/// else from the upstream (API, then tag schema), else stale within `max_stale` if the upstream is
/// down. Empty when there are none. Errors are the upstream's (`Unavailable` with nothing held,
/// `BadUpstream` for an answer that is no index) or the store's.
pub async fn referrers(
    app: &App,
    target: &Target,
    subject: &Digest,
) -> Result<(Arc<ReferrersIndex>, Obtained), ProxyError> {
    let key = format!("{}\0{subject}", target.name);

    let held = held(app, &key)?;
    if app.offline() {
        return match held {
            Some(h) => Ok((h.index, Obtained::Hit)),
            // An imported referrers tag, if the cache holds one.
            None => Ok((
                Arc::new(from_tag(app, target, subject).await?.0),
                Obtained::Hit,
            )),
        };
    }
    let cache = &app.config.cache;
    let age_of =
        |h: &HeldReferrers| Duration::from_millis(now_ms().saturating_sub(h.fetched_at_ms));
    if let Some(h) = &held {
        if age_of(h) < cache.tag_ttl {
            return Ok((Arc::clone(&h.index), Obtained::Hit));
        }
    }
    // The fleet's list, when another replica fetched it more recently: same TTL and stale rules.
    let mut shared = match &app.shared {
        Some(tier) => {
            tier.record::<Record<ReferrersIndex>>("referrers", &key)
                .await
        }
        None => None,
    };
    let mut held = held;
    if let Some(rec) = &shared {
        let newer = held
            .as_ref()
            .is_none_or(|h| h.fetched_at_ms < rec.value.fetched_at_ms);
        if newer && rec.value.fetched_at_ms <= now_ms() + 60_000 {
            let index = Arc::new(ReferrersIndex::new(rec.value.index.manifests.clone()));
            let h = adopt(app, &key, rec.value.fetched_at_ms, index)?;
            if age_of(&h) < cache.tag_ttl {
                return Ok((h.index, Obtained::Shared));
            }
            held = Some(h);
        }
    }
    let age = held.as_ref().map(age_of);
    match fetch(app, target, subject).await {
        Ok((index, cacheable)) => {
            let index = Arc::new(index);
            if cacheable {
                remember(app, key.clone(), &index)?;
                // Lists with no referrers stay with this replica, as they stay off its disk.
                if let (Some(tier), false) = (&app.shared, index.manifests.is_empty()) {
                    let record = Record {
                        fetched_at_ms: now_ms(),
                        index: (*index).clone(),
                    };
                    tier.write_record("referrers", &key, &record, shared.take());
                }
            }
            Ok((index, Obtained::Miss))
        }
        Err(e) if e.is_transient() => match (held, age) {
            (Some(h), Some(age)) if age < cache.max_stale => {
                tracing::warn!(name = %target.name, %subject, age = ?age, error = %e,
                    "upstream unavailable: serving the last known referrers (stale)");
                app.metrics.stale_serves.inc();
                Ok((h.index, Obtained::Stale))
            }
            _ => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The referrers of `subject` the cache holds, whatever their age, without asking anyone: what
/// an export carries across a gap.
pub fn held_index(
    app: &App,
    target: &Target,
    subject: &Digest,
) -> Result<Option<Arc<ReferrersIndex>>, ProxyError> {
    Ok(held(app, &format!("{}\0{subject}", target.name))?.map(|h| h.index))
}

/// The list from the upstream, and whether it may be cached (not if a stale tag stood in).
async fn fetch(
    app: &App,
    target: &Target,
    subject: &Digest,
) -> Result<(ReferrersIndex, bool), ProxyError> {
    let up = &target.upstream;
    let api = tokio::time::timeout(up.timeout, from_api(app, target, subject))
        .await
        .map_err(|_| {
            ProxyError::Unavailable(format!("{}: referrers took over {:?}", up.name, up.timeout))
        })??;
    match api {
        Some(list) => Ok((ReferrersIndex::new(list), true)),
        None => from_tag(app, target, subject).await,
    }
}

/// The upstream's referrers API, every page; `None` when it has none (a `404`, or a first answer
/// that is not an OCI index, as oras-go decides).
async fn from_api(
    app: &App,
    target: &Target,
    subject: &Digest,
) -> Result<Option<Vec<Referrer>>, ProxyError> {
    let up = &target.upstream;
    let what = format!("referrers of {}@{subject}", target.name);
    let limit = app.config.server.max_manifest_size.as_u64();
    let mut tail = format!("referrers/{subject}");
    let mut out = Vec::new();
    for page in 0..MAX_PAGES {
        let resp = up
            .send(Method::GET, &target.repo, &tail, Some(INDEX_MEDIA_TYPE))
            .await?;
        let is_index = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == INDEX_MEDIA_TYPE);
        match resp.status() {
            StatusCode::OK if is_index => {}
            StatusCode::OK | StatusCode::NOT_FOUND if page == 0 => return Ok(None),
            status => {
                return Err(status_error(&up.name, status, &what, || {
                    ProxyError::BadUpstream(format!("{what}: page {page} is missing"))
                }))
            }
        }
        let next = resp
            .headers()
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(next_query);
        let body = read_limited(resp.into_body(), limit as usize, up.read_timeout)
            .await
            .map_err(|e| match e {
                ProxyError::TooLarge(_) => ProxyError::TooLarge(format!(
                    "{what} is larger than the {limit}-byte limit ([server] max_manifest_size)"
                )),
                e => e,
            })?;
        out.extend(descriptors(&body, &what)?);
        match next {
            Some(query) if out.len() < MAX_REFERRERS => {
                tail = format!("referrers/{subject}?{query}");
            }
            _ => break,
        }
    }
    Ok(Some(out))
}

/// The referrers tag schema: the index tagged `sha256-<hex>`, resolved and cached like any tag
/// (so an air-gapped copy holds it too). No such tag: no referrers.
async fn from_tag(
    app: &App,
    target: &Target,
    subject: &Digest,
) -> Result<(ReferrersIndex, bool), ProxyError> {
    let tag = subject.tag_form();
    let accept = Accept::default();
    let (manifest, obtained) = match manifests::resolve_tag(app, target, &tag, &accept).await {
        Ok((_, m, obtained)) => (m, obtained),
        Err(ProxyError::ManifestUnknown(_)) => return Ok((ReferrersIndex::new(Vec::new()), true)),
        Err(e) => return Err(e),
    };
    let what = format!("referrers tag {}:{tag}", target.name);
    let list = descriptors(&manifest.bytes, &what)?;
    Ok((ReferrersIndex::new(list), obtained != Obtained::Stale))
}

/// The descriptors of an index. A body that is no index is the upstream's fault; a descriptor
/// that does not parse (no size, a digest we cannot check) is skipped with a warning.
fn descriptors(body: &[u8], what: &str) -> Result<Vec<Referrer>, ProxyError> {
    let raw: RawIndex = serde_json::from_slice(body)
        .map_err(|e| ProxyError::BadUpstream(format!("{what} is not an OCI image index: {e}")))?;
    if let Some(mt) = raw.media_type.filter(|mt| mt != INDEX_MEDIA_TYPE) {
        return Err(ProxyError::BadUpstream(format!(
            "{what} is a {mt}, not an OCI image index"
        )));
    }
    let total = raw.manifests.len();
    let list: Vec<Referrer> = raw
        .manifests
        .into_iter()
        .filter_map(|v| {
            serde_json::from_value(v)
                .map_err(|e| tracing::warn!(what, error = %e, "skipped a bad referrer descriptor"))
                .ok()
        })
        .collect();
    if total > MAX_REFERRERS {
        tracing::warn!(
            what,
            total,
            "more referrers than {MAX_REFERRERS}: the rest are ignored"
        );
    }
    Ok(list)
}

/// The query of a `Link: <…?query>; rel="next"` header. Only the query is kept: the next page is
/// asked of the same path, whatever the link names.
fn next_query(link: &str) -> Option<String> {
    let (target, params) = link.split_once('>')?;
    if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
        return None;
    }
    let target = target.trim_start().strip_prefix('<')?;
    let (_, query) = target.split_once('?')?;
    (!query.is_empty()).then(|| query.to_owned())
}

fn held(app: &App, key: &str) -> Result<Option<HeldReferrers>, ProxyError> {
    if let Some(h) = app.referrers.get(key) {
        return Ok(Some(h));
    }
    let Some(raw) = app.store.meta(META, key)? else {
        return Ok(None);
    };
    // An unreadable record (an older format) is as good as none: it is fetched again.
    let Ok(record) = serde_json::from_slice::<Record<ReferrersIndex>>(&raw) else {
        return Ok(None);
    };
    let h = HeldReferrers {
        fetched_at_ms: record.fetched_at_ms,
        index: Arc::new(record.index),
    };
    app.referrers.insert(key.to_owned(), h.clone());
    Ok(Some(h))
}

/// Holds a list fetched by another replica at `fetched_at_ms`, as if fetched here then.
fn adopt(
    app: &App,
    key: &str,
    fetched_at_ms: u64,
    index: Arc<ReferrersIndex>,
) -> Result<HeldReferrers, ProxyError> {
    let record = Record {
        fetched_at_ms,
        index: &*index,
    };
    let raw = serde_json::to_vec(&record).map_err(|e| ProxyError::Internal(e.to_string()))?;
    app.store.put_meta(META, key, &raw)?;
    let held = HeldReferrers {
        fetched_at_ms,
        index,
    };
    app.referrers.insert(key.to_owned(), held.clone());
    Ok(held)
}

fn remember(app: &App, key: String, index: &Arc<ReferrersIndex>) -> Result<(), ProxyError> {
    let record = Record {
        fetched_at_ms: now_ms(),
        index: &**index,
    };
    // A negative answer ("no referrers") lives in memory only, under the same TTL: any client
    // can ask about any digest, and those answers must not accumulate on disk.
    if !index.manifests.is_empty() {
        let raw = serde_json::to_vec(&record).map_err(|e| ProxyError::Internal(e.to_string()))?;
        app.store.put_meta(META, &key, &raw)?;
    }
    let held = HeldReferrers {
        fetched_at_ms: record.fetched_at_ms,
        index: Arc::clone(index),
    };
    app.referrers.insert(key, held);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn referrer(data: &[u8], artifact_type: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": Digest::of(data),
            "size": data.len(),
            "artifactType": artifact_type,
        })
    }

    #[test]
    fn bad_descriptors_are_skipped_and_duplicates_dropped() {
        let mut unsupported = referrer(b"c", None);
        unsupported["digest"] = format!("sha512:{}", "a".repeat(128)).into();
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [
                referrer(b"a", Some("x")),
                { "mediaType": "m", "digest": Digest::of(b"b") },
                unsupported,
                referrer(b"a", Some("x")),
                referrer(b"d", None),
            ],
        });
        let list = descriptors(&serde_json::to_vec(&body).unwrap(), "t").unwrap();
        let index = ReferrersIndex::new(list);
        let digests: Vec<Digest> = index.manifests.iter().map(|r| r.digest.clone()).collect();
        assert_eq!(digests, [Digest::of(b"a"), Digest::of(b"d")]);
        assert_eq!(index.filtered("x").manifests.len(), 1);
        let served = serde_json::to_value(&index).unwrap();
        assert_eq!(served["manifests"][1].get("artifactType"), None);
        assert_eq!(served["mediaType"], INDEX_MEDIA_TYPE);
    }

    #[test]
    fn an_image_manifest_is_no_index() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "layers": [],
        });
        let err = descriptors(&serde_json::to_vec(&body).unwrap(), "t").unwrap_err();
        assert!(matches!(err, ProxyError::BadUpstream(_)), "{err}");
    }

    #[test]
    fn lists_are_capped() {
        let many = (0..MAX_REFERRERS + 10)
            .map(|i| Referrer {
                media_type: "m".into(),
                digest: Digest::of(&i.to_be_bytes()),
                size: 1,
                artifact_type: None,
                annotations: BTreeMap::new(),
            })
            .collect();
        assert_eq!(ReferrersIndex::new(many).manifests.len(), MAX_REFERRERS);
    }

    #[test]
    fn next_pages_keep_only_the_query() {
        assert_eq!(
            next_query(r#"</v2/a/referrers/sha256:00?last=x&n=2>; rel="next""#).as_deref(),
            Some("last=x&n=2")
        );
        assert_eq!(next_query(r#"<https://elsewhere/x?n=1>; rel="prev""#), None);
        assert_eq!(next_query("garbage"), None);
    }
}
