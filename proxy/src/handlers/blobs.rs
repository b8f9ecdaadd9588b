//! `GET`/`HEAD /v2/<name>/blobs/<digest>`: from the cache (with `Range`), or through a
//! single-flight fetch that hash-checks while it streams.

use http::{header, HeaderValue, Response, StatusCode};
use http_range_header::parse_range_header;
use portcullis_cache::{Blob, Digest};

use super::Outcome;
use crate::app::App;
use crate::body::{empty, full, stream, ResponseBody, Source};
use crate::config::ColdBlobs;
use crate::error::ProxyError;
use crate::fetch::Progress;
use crate::gate;
use crate::route::Target;

pub async fn serve(
    app: &App,
    target: &Target,
    digest: &Digest,
    range: Option<&str>,
    head: bool,
    outcome: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    // The size the verified manifest promised: every path below must deliver exactly that.
    let expected = gate::check_blob(app, target, digest)?;
    let wrong_size = |size: u64, whence: &str| {
        ProxyError::BadUpstream(format!(
            "blob {}@{digest}: {whence} {size} bytes, but the verified manifest says {expected}",
            target.name
        ))
    };
    if let Some(size) = app.store.has_blob(digest)? {
        if size != expected {
            return Err(wrong_size(size, "the cache holds"));
        }
        if !app.offline() && !app.store.is_linked(&target.name, digest)? {
            // Held for another repository: serve it here only if this one has it upstream too.
            crate::fetch::upstream_head(target, digest).await?;
            app.store.link(&target.name, digest)?;
        }
        if let Some(blob) = app.store.blob(digest)? {
            outcome.cache = "hit";
            return cached(blob, digest, range, head);
        }
    }
    if app.offline() {
        return Err(ProxyError::BlobUnknown(format!(
            "{}@{digest} is not held, and this mirror is offline",
            target.name
        )));
    }
    if head {
        outcome.cache = "miss";
        let size = crate::fetch::upstream_head(target, digest).await?;
        if size != expected {
            return Err(wrong_size(size, "the upstream has"));
        }
        return Ok(headers(Response::new(empty()), digest, size));
    }
    let (flight, joined) = app.flights.join(&app.store, target, digest, expected)?;
    outcome.cache = if joined { "joined" } else { "miss" };
    // A fetch started for another repository is this one's only if it has the blob upstream.
    if joined && flight.name != target.name && !app.store.is_linked(&target.name, digest)? {
        crate::fetch::upstream_head(target, digest).await?;
    }
    let mut progress = flight.progress.clone();
    let state = progress
        .wait_for(|p| match p {
            Progress::Starting | Progress::Streaming { size: None, .. } => false,
            Progress::Streaming { size: Some(_), .. } => true,
            Progress::Verified { .. } | Progress::Failed(_) => true,
        })
        .await
        .map_err(|_| ProxyError::Internal("blob fetch vanished".into()))?
        .clone();
    let size = match state {
        Progress::Streaming {
            size: Some(size), ..
        }
        | Progress::Verified { size, .. } => size,
        Progress::Failed(e) => return Err((*e).clone()),
        _ => unreachable!("waited for a size or a verdict"),
    };
    if size != expected {
        return Err(wrong_size(size, "the running fetch expects"));
    }
    if range.is_some() {
        // A range is cut from the committed blob: a client resuming a download, or asking just
        // after a fetch released its body but before it committed, gets its 206, not the whole.
        crate::fetch::until_committed(&mut progress)
            .await
            .ok_or_else(|| ProxyError::Internal("blob fetch vanished".into()))?
            .map_err(|e| (*e).clone())?;
        if let Some(blob) = app.store.blob(digest)? {
            return cached(blob, digest, range, head);
        }
    }
    let source = Source::Following {
        paths: flight.paths.clone(),
        progress,
        early: app.config.cache.cold_blobs == ColdBlobs::Stream,
    };
    Ok(headers(
        Response::new(stream(source, 0, size)),
        digest,
        size,
    ))
}

fn cached(
    blob: Blob,
    digest: &Digest,
    range: Option<&str>,
    head: bool,
) -> Result<Response<ResponseBody>, ProxyError> {
    let size = blob.size();
    let (start, end) = byte_range(range, size)?;
    let body = match (head, blob) {
        (true, _) => empty(),
        (false, Blob::Memory(bytes)) => full(bytes.slice(start as usize..end as usize)),
        (false, Blob::File { file, .. }) => stream(Source::Done(file), start, end),
    };
    let mut resp = headers(Response::new(body), digest, end - start);
    if (start, end) != (0, size) {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let value = format!("bytes {start}-{}/{size}", end - 1);
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// The bytes `start..end` of a `size`-byte blob that a `Range` header asks for: the whole blob
/// when there is no header, it does not parse, or it names several ranges.
pub fn byte_range(range: Option<&str>, size: u64) -> Result<(u64, u64), ProxyError> {
    match range.map(parse_range_header) {
        None | Some(Err(_)) => Ok((0, size)),
        Some(Ok(parsed)) => match parsed.validate(size) {
            // `validate` clamps an end past the blob to its last byte, and to 0 for an empty
            // blob, which has no byte to give: a range must start inside the blob (RFC 9110
            // §14.1.1; found by fuzzing, `fuzz/fuzz_targets/range.rs`).
            Ok(ranges) if ranges.len() == 1 && *ranges[0].start() >= size => {
                Err(ProxyError::RangeNotSatisfiable(size))
            }
            Ok(ranges) if ranges.len() == 1 => Ok((*ranges[0].start(), *ranges[0].end() + 1)),
            Ok(_) => Ok((0, size)), // several ranges: serve the whole blob
            Err(_) => Err(ProxyError::RangeNotSatisfiable(size)),
        },
    }
}

fn headers(mut resp: Response<ResponseBody>, digest: &Digest, len: u64) -> Response<ResponseBody> {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("Docker-Content-Digest", v);
    }
    resp
}

/// Asks the upstream whether this repository holds the blob; its size if so.
#[cfg(test)]
mod tests {
    use super::*;

    fn range(header: &str, size: u64) -> Option<(u64, u64)> {
        match byte_range(Some(header), size) {
            Ok(r) => Some(r),
            Err(ProxyError::RangeNotSatisfiable(s)) if s == size => None,
            Err(e) => panic!("{header} of {size}: {e}"),
        }
    }

    #[test]
    fn ranges_of_a_blob() {
        assert_eq!(byte_range(None, 10).unwrap(), (0, 10));
        assert_eq!(range("bytes=0-4", 10), Some((0, 5)));
        assert_eq!(range("bytes=5-", 10), Some((5, 10)));
        assert_eq!(range("bytes=-3", 10), Some((7, 10)));
        assert_eq!(range("bytes=8-100", 10), Some((8, 10)));
        assert_eq!(range("bytes=0-1,4-5", 10), Some((0, 10)));
        assert_eq!(range("lines=1-2", 10), Some((0, 10)));
        assert_eq!(range("bytes=10-", 10), None);
        assert_eq!(range("bytes=-11", 10), None);
    }

    /// Fuzzing found it: `bytes=0-0` (or `bytes=0-`) of the empty blob validated as the byte
    /// range 0..1, and serving it from memory sliced past the end (a panic).
    #[test]
    fn no_range_of_the_empty_blob() {
        for header in ["bytes=0-0", "bytes=0-", "bytes=0-499", "bytes=5-9"] {
            assert_eq!(range(header, 0), None, "{header}");
        }
        assert_eq!(byte_range(None, 0).unwrap(), (0, 0));
        assert_eq!(range("bytes=0-0,0-0", 0), None);
    }
}
