//! Small blobs read whole (signature payloads, envelopes, bundles, artifact configs): from the
//! store, else from the upstream, capped at the size their descriptor gives, hash-checked, and
//! cached only once the caller's `check` (what the bytes must be) has passed. Concurrent reads
//! of one digest share one upstream fetch. With a shared tier, the bucket is asked before the
//! upstream and holds what passed.

use std::io::Read as _;

use bytes::Bytes;
use http::Method;
use portcullis_cache::{Blob, Digest};

use super::Obtained;
use crate::app::App;
use crate::error::ProxyError;
use crate::route::Target;
use crate::upstream::{read_limited, status_error};

/// The blob `digest` of exactly `size` bytes (at most `max`), once `check` accepts it.
pub async fn small(
    app: &App,
    target: &Target,
    digest: &Digest,
    size: u64,
    max: u64,
    check: impl Fn(&[u8]) -> Result<(), ProxyError>,
) -> Result<(Bytes, Obtained), ProxyError> {
    let what = format!("blob {}@{digest}", target.name);
    if size > max {
        return Err(ProxyError::Denied(format!(
            "{what} declares {size} bytes, more than the {max} read whole"
        )));
    }
    let checked = |bytes: Bytes| {
        if bytes.len() as u64 != size {
            return Err(ProxyError::Denied(format!(
                "{what} is {} bytes, not the {size} its descriptor says",
                bytes.len()
            )));
        }
        check(&bytes)?;
        Ok(bytes)
    };
    match app.store.blob(digest)? {
        Some(Blob::Memory(bytes)) => return Ok((checked(bytes)?, Obtained::Hit)),
        Some(Blob::File { mut file, size }) if size <= max => {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf)
                .map_err(|e| ProxyError::Internal(format!("reading cached {digest}: {e}")))?;
            return Ok((checked(buf.into())?, Obtained::Hit));
        }
        Some(_) => return Ok((checked(Bytes::new())?, Obtained::Hit)),
        None => {}
    }
    if app.offline() {
        return Err(ProxyError::BlobUnknown(format!(
            "{what} is not held, and this mirror is offline"
        )));
    }
    let (fetched, obtained) = match from_shared(app, target, digest, size).await? {
        Some(bytes) => (bytes, Obtained::Shared),
        None => {
            let bytes = app
                .fetching
                .run(digest.clone(), || fetch(target, digest, size, &what))
                .await?;
            (bytes, Obtained::Miss)
        }
    };
    let bytes = checked(fetched)?;
    if let (Some(tier), Obtained::Miss) = (&app.shared, obtained) {
        tier.put_small("evidence", digest, bytes.clone(), None);
    }
    if app.store.has_blob(digest)?.is_none() {
        let mut w = app.store.blob_writer(digest, Some(bytes.len() as u64))?;
        w.write(bytes.clone())?;
        w.commit()?;
    }
    app.store.link(&target.name, digest)?;
    Ok((bytes, obtained))
}

/// The blob from the shared tier, if it holds bytes that hash to `digest` and this repository
/// has it upstream (the bucket holds every repository's evidence: linking it here unchecked
/// would open it to this repository's clients).
async fn from_shared(
    app: &App,
    target: &Target,
    digest: &Digest,
    size: u64,
) -> Result<Option<Bytes>, ProxyError> {
    let Some(tier) = app.shared.as_ref() else {
        return Ok(None);
    };
    let Some(got) = tier.small("evidence", digest, size).await else {
        return Ok(None);
    };
    let actual = Digest::of(&got.bytes);
    if &actual != digest {
        tier.refused("evidence", digest, &format!("the bytes hash to {actual}"));
        return Ok(None);
    }
    if !app.store.is_linked(&target.name, digest)? {
        match crate::fetch::upstream_head(target, digest).await {
            Ok(_) => {}
            Err(e) if e.is_transient() => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(got.bytes))
}

/// One GET of at most `size` bytes that hash to `digest`.
async fn fetch(
    target: &Target,
    digest: &Digest,
    size: u64,
    what: &str,
) -> Result<Bytes, ProxyError> {
    let up = &target.upstream;
    let resp = up
        .send(Method::GET, &target.repo, &format!("blobs/{digest}"), None)
        .await?;
    if !resp.status().is_success() {
        return Err(status_error(&up.name, resp.status(), what, || {
            ProxyError::BadUpstream(format!("{what} is listed but missing upstream"))
        }));
    }
    let bytes = read_limited(resp.into_body(), size as usize, up.read_timeout).await?;
    let actual = Digest::of(&bytes);
    if &actual != digest {
        return Err(ProxyError::BadUpstream(format!(
            "{what}: the bytes hash to {actual}; nothing was cached"
        )));
    }
    Ok(bytes)
}
