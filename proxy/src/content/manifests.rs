//! Manifests: by digest (held, else fetched and checked to hash to it), and tags resolved to
//! digests (a held mapping within `tag_ttl`, else a `HEAD` revalidation, else a fetch; a stale
//! mapping within `max_stale` while the upstream is down; offline, only what is held). Every
//! manifest fetched is read strictly ([`crate::oci`]) before it is cached.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method};
use portcullis_cache::{now_ms, Digest, Manifest, TagRecord};

use super::{Accept, Obtained};
use crate::app::App;
use crate::error::ProxyError;
use crate::oci::Document;
use crate::route::Target;
use crate::upstream::{content_length, read_limited, status_error};

/// The manifest `digest`, and how it was obtained.
pub async fn by_digest(
    app: &App,
    target: &Target,
    digest: &Digest,
    accept: &Accept,
) -> Result<(Manifest, Obtained), ProxyError> {
    if let Some(m) = app.store.manifest(digest)? {
        if app.offline() || app.store.is_linked(&target.name, digest)? {
            return Ok((m, Obtained::Hit));
        }
    }
    if app.offline() {
        return Err(offline_miss(&format!("{}@{digest}", target.name)));
    }
    if let Some(m) = from_shared(app, target, digest, accept).await? {
        return Ok((m, Obtained::Shared));
    }
    let (_, m) = fetch(app, target, &digest.to_string(), Some(digest), accept).await?;
    Ok((m, Obtained::Miss))
}

/// The manifest `digest` from the shared tier, if it holds bytes that hash to it and read
/// strictly, exactly as an upstream's would; held from then on. As for content held for another
/// repository, a `HEAD` first asks whether this repository has it upstream.
async fn from_shared(
    app: &App,
    target: &Target,
    digest: &Digest,
    accept: &Accept,
) -> Result<Option<Manifest>, ProxyError> {
    let Some(tier) = &app.shared else {
        return Ok(None);
    };
    let limit = app.config.server.max_manifest_size.as_u64();
    let Some(got) = tier.small("manifest", digest, limit).await else {
        return Ok(None);
    };
    let actual = Digest::of(&got.bytes);
    if &actual != digest {
        tier.refused("manifest", digest, &format!("the bytes hash to {actual}"));
        return Ok(None);
    }
    match revalidate(target, &digest.to_string(), accept).await {
        Ok(_) => {}
        Err(e) if e.is_transient() => return Ok(None),
        Err(e) => return Err(e),
    }
    let doc = match Document::parse(&got.bytes, got.content_type.as_deref()) {
        Ok(doc) => doc,
        Err(e) => {
            tier.refused("manifest", digest, &e.to_string());
            return Ok(None);
        }
    };
    let refs = doc.all_refs();
    app.store
        .put_manifest(digest, &doc.media_type, &got.bytes, &refs)?;
    app.store.link(&target.name, digest)?;
    Ok(Some(Manifest {
        media_type: doc.media_type,
        bytes: got.bytes,
        refs,
    }))
}

/// Resolves a tag to a verified-by-hash manifest: cached mapping within `tag_ttl`, else a `HEAD`
/// revalidation, else a fetch; a stale mapping within `max_stale` while the upstream is down.
pub async fn resolve_tag(
    app: &App,
    target: &Target,
    tag: &str,
    accept: &Accept,
) -> Result<(Digest, Manifest, Obtained), ProxyError> {
    let key = accept.tag_key(tag);
    if app.offline() {
        // The last verified mapping, whatever its age.
        let held = match app.store.tag(&target.name, &key)? {
            Some(rec) => match rec.digest.parse::<Digest>() {
                Ok(d) => app.store.manifest(&d)?.map(|m| (d, m)),
                Err(_) => None,
            },
            None => None,
        };
        let (d, m) = held.ok_or_else(|| offline_miss(&format!("{}:{tag}", target.name)))?;
        return Ok((d, m, Obtained::Hit));
    }
    // Concurrent pulls of one tag share one revalidation or fetch: twenty cold clients make one
    // upstream request (registries rate-limit manifest GETs), not twenty.
    let flight = format!("{}\0{key}", target.name);
    app.resolving
        .run(flight, || resolve_online(app, target, tag, &key, accept))
        .await
}

async fn resolve_online(
    app: &App,
    target: &Target,
    tag: &str,
    key: &str,
    accept: &Accept,
) -> Result<(Digest, Manifest, Obtained), ProxyError> {
    let cache = &app.config.cache;
    // The fleet's mapping, when a replica confirmed it more recently than this one: the TTL and
    // stale rules then run on the fleet's last confirmation.
    let id = format!("{}\0{key}", target.name);
    let mut shared = None;
    if let Some(tier) = &app.shared {
        let fresh_here = app.store.tag(&target.name, key)?.is_some_and(|rec| {
            Duration::from_millis(now_ms().saturating_sub(rec.fetched_at_ms)) < cache.tag_ttl
        });
        if !fresh_here {
            shared = tier.record::<TagRecord>("tag", &id).await;
        }
    }
    let adopted = match &shared {
        Some(rec) => adopt(app, target, tag, key, &rec.value, accept).await?,
        None => false,
    };
    let mut previous = None;
    if let Some(rec) = app.store.tag(&target.name, key)? {
        let age = Duration::from_millis(now_ms().saturating_sub(rec.fetched_at_ms));
        let digest: Option<Digest> = rec.digest.parse().ok();
        let held = match &digest {
            Some(d) => app.store.manifest(d)?.map(|m| (d.clone(), m)),
            None => None,
        };
        previous = digest;
        if let Some((d, m)) = held {
            if age < cache.tag_ttl {
                let obtained = if adopted {
                    Obtained::Shared
                } else {
                    Obtained::Hit
                };
                return Ok((d, m, obtained));
            }
            match revalidate(target, tag, accept).await {
                Ok(Some(now)) if now == d => {
                    remember(app, target, key, &d, &m.media_type, shared.take())?;
                    return Ok((d, m, Obtained::Hit));
                }
                Ok(_) => {} // moved, or no digest header: fetch below
                Err(e) if e.is_transient() && age < cache.max_stale => {
                    tracing::warn!(name = %target.name, tag, digest = %d, age = ?age, error = %e,
                        "upstream unavailable: serving the last known tag mapping (stale)");
                    app.metrics.stale_serves.inc();
                    return Ok((d, m, Obtained::Stale));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let (digest, m) = fetch(app, target, tag, None, accept).await?;
    if let Some(old) = previous.filter(|old| *old != digest) {
        moved(app, target, tag, &old, &digest);
    }
    remember(app, target, key, &digest, &m.media_type, shared.take())?;
    Ok((digest, m, Obtained::Miss))
}

/// Takes the shared tier's mapping `rec` for this replica's, if it is more recent and its
/// manifest can be had (held, or from the shared tier with every check an upstream's gets).
/// The bucket is no more trusted than the upstream: the gate decides on whatever it names, and a
/// mapping dated in the future (which would never expire) is ignored.
async fn adopt(
    app: &App,
    target: &Target,
    tag: &str,
    key: &str,
    rec: &TagRecord,
    accept: &Accept,
) -> Result<bool, ProxyError> {
    let held = app.store.tag(&target.name, key)?;
    if held
        .as_ref()
        .is_some_and(|h| h.fetched_at_ms >= rec.fetched_at_ms)
        || rec.fetched_at_ms > now_ms() + 60_000
    {
        return Ok(false);
    }
    let Ok(digest) = rec.digest.parse::<Digest>() else {
        return Ok(false);
    };
    let manifest = match app.store.manifest(&digest)? {
        // Held for another repository: this one's only if the upstream has it here too.
        Some(_) if !app.store.is_linked(&target.name, &digest)? => {
            match revalidate(target, &digest.to_string(), accept).await {
                Ok(_) => {
                    app.store.link(&target.name, &digest)?;
                    app.store.manifest(&digest)?
                }
                Err(_) => None,
            }
        }
        Some(m) => Some(m),
        None => from_shared(app, target, &digest, accept)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(name = %target.name, %digest, error = %e,
                    "shared tag mapping names a manifest this repository lacks: ignored");
                None
            }),
    };
    match manifest {
        Some(m) if accept.accepts(&m.media_type) => {
            // Another replica saw the tag move: the move is logged and counted here too.
            if let Some(old) = held.and_then(|h| h.digest.parse::<Digest>().ok()) {
                if old != digest {
                    moved(app, target, tag, &old, &digest);
                }
            }
            app.store.put_tag(&target.name, key, rec)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// A tag that points elsewhere than when it was last seen: the seeds' first example of an
/// untrusted registry. Whether the new digest is served is the gate's decision
/// (`immutable_tags`); seeing it is everyone's business.
fn moved(app: &App, target: &Target, tag: &str, old: &Digest, new: &Digest) {
    tracing::warn!(name = %target.name, tag, old = %old, new = %new,
        upstream = %target.upstream.name, "tag moved upstream");
    app.metrics
        .tag_moves
        .get_or_create(&crate::metrics::UpstreamLabel {
            upstream: target.upstream.name.clone(),
        })
        .inc();
}

fn remember(
    app: &App,
    target: &Target,
    key: &str,
    digest: &Digest,
    media_type: &str,
    shared: Option<crate::shared::Record<TagRecord>>,
) -> Result<(), ProxyError> {
    let record = TagRecord {
        digest: digest.to_string(),
        media_type: media_type.to_owned(),
        fetched_at_ms: now_ms(),
    };
    if let Some(tier) = &app.shared {
        let id = format!("{}\0{key}", target.name);
        tier.write_record("tag", &id, &record, shared);
    }
    Ok(app.store.put_tag(&target.name, key, &record)?)
}

/// `HEAD` the tag upstream (Docker Hub counts GETs, not HEADs): the digest it points at now, if
/// the upstream says.
async fn revalidate(
    target: &Target,
    tag: &str,
    accept: &Accept,
) -> Result<Option<Digest>, ProxyError> {
    let up = &target.upstream;
    let accept = accept.upstream_header();
    let resp = tokio::time::timeout(
        up.timeout,
        up.send(
            Method::HEAD,
            &target.repo,
            &format!("manifests/{tag}"),
            Some(&accept),
        ),
    )
    .await
    .map_err(|_| ProxyError::Unavailable(format!("{}: HEAD timed out", up.name)))??;
    if !resp.status().is_success() {
        let what = format!("{}:{tag}", target.name);
        return Err(status_error(&up.name, resp.status(), &what, || {
            ProxyError::ManifestUnknown(format!("{what} is not in the upstream"))
        }));
    }
    Ok(resp
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok()?.parse().ok()))
}

/// GETs a manifest, checks its bytes hash to `expected` (and to whatever digest the upstream
/// claims), and stores it.
async fn fetch(
    app: &App,
    target: &Target,
    reference: &str,
    expected: Option<&Digest>,
    accept: &Accept,
) -> Result<(Digest, Manifest), ProxyError> {
    let up = &target.upstream;
    tokio::time::timeout(
        up.timeout,
        fetch_inner(app, target, reference, expected, accept),
    )
    .await
    .map_err(|_| {
        ProxyError::Unavailable(format!(
            "{}: manifest fetch took over {:?}",
            up.name, up.timeout
        ))
    })?
}

async fn fetch_inner(
    app: &App,
    target: &Target,
    reference: &str,
    expected: Option<&Digest>,
    accept: &Accept,
) -> Result<(Digest, Manifest), ProxyError> {
    let up = &target.upstream;
    let what = format!("manifest {}:{reference}", target.name);
    let resp = up
        .send(
            Method::GET,
            &target.repo,
            &format!("manifests/{reference}"),
            Some(&accept.upstream_header()),
        )
        .await?;
    if !resp.status().is_success() {
        return Err(status_error(&up.name, resp.status(), &what, || {
            ProxyError::ManifestUnknown(format!("{what} is not in the upstream"))
        }));
    }
    let limit = app.config.server.max_manifest_size.as_u64();
    if content_length(&resp).is_some_and(|n| n > limit) {
        return Err(ProxyError::TooLarge(format!(
            "{what} is larger than the {limit}-byte limit ([server] max_manifest_size)"
        )));
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|v| !v.is_empty());
    let claimed = resp
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes: Bytes = read_limited(resp.into_body(), limit as usize, up.read_timeout)
        .await
        .map_err(|e| match e {
            ProxyError::TooLarge(_) => ProxyError::TooLarge(format!(
                "{what} is larger than the {limit}-byte limit ([server] max_manifest_size)"
            )),
            e => e,
        })?;
    let digest = Digest::of(&bytes);
    if let Some(expected) = expected {
        if &digest != expected {
            return Err(ProxyError::BadUpstream(format!(
                "{what}: the bytes hash to {digest}, not {expected}; nothing was cached"
            )));
        }
    }
    if let Some(claimed) = claimed {
        if claimed != digest.to_string() {
            return Err(ProxyError::BadUpstream(format!(
                "{what}: the upstream says {claimed} but the bytes hash to {digest}; nothing was cached"
            )));
        }
    }
    // Refused before anything is cached: a document clients could read differently.
    let doc = Document::parse(&bytes, content_type.as_deref()).map_err(invalid(target, &digest))?;
    let children = doc.all_refs();
    let media_type = doc.media_type;
    app.store
        .put_manifest(&digest, &media_type, &bytes, &children)?;
    app.store.link(&target.name, &digest)?;
    if let Some(tier) = &app.shared {
        tier.put_small("manifest", &digest, bytes.clone(), content_type.clone());
    }
    if app.store.size() > app.config.cache.max_size.as_u64() {
        let store = std::sync::Arc::clone(&app.store);
        let metrics = app.metrics.clone();
        tokio::task::spawn_blocking(move || crate::fetch::evict_if_over(&store, &metrics));
    }
    Ok((
        digest,
        Manifest {
            media_type,
            bytes,
            refs: children,
        },
    ))
}

/// What an offline mirror says for content it does not hold.
pub fn offline_miss(what: &str) -> ProxyError {
    ProxyError::ManifestUnknown(format!(
        "{what} is not held, and this mirror is offline: import it (portcullis import) first"
    ))
}

/// Maps a manifest that cannot be read unambiguously to the error clients get, with a log line.
pub fn invalid<'a>(
    target: &'a Target,
    digest: &'a Digest,
) -> impl Fn(crate::oci::Invalid) -> ProxyError + 'a {
    move |e| {
        tracing::warn!(name = %target.name, %digest, error = %e, "manifest refused");
        ProxyError::ManifestInvalid(format!("{}@{digest}: {e}", target.name))
    }
}
