//! `portcullis cache ls` and `cache gc`: what is held, and garbage collection by hand.

use std::time::{Duration, UNIX_EPOCH};

use portcullis_cache::Digest;

use super::AirgapError;
use crate::app::App;
use crate::gate;

/// One line per held tag: name:tag, digest, bytes, verdict under the current policy, last access.
pub fn ls(app: &App) -> Result<Vec<String>, AirgapError> {
    let mut lines = Vec::new();
    for (repo, tag, rec) in app.store.tags()? {
        if tag.contains('\0') {
            continue; // a mapping for a narrower Accept
        }
        let Ok(digest) = rec.digest.parse::<Digest>() else {
            continue;
        };
        let mut bytes = 0u64;
        if let Ok(Some(m)) = app.store.manifest(&digest) {
            bytes += m.bytes.len() as u64;
            for r in &m.refs {
                bytes += app.store.has_blob(r).ok().flatten().unwrap_or(0);
            }
        }
        let verdict = gate::held_verdict(app, &repo, &digest)
            .map(|v| format!("{:?}", v.decision).to_lowercase())
            .unwrap_or_else(|| "-".into());
        let accessed = UNIX_EPOCH + Duration::from_millis(app.store.accessed_ms(&digest));
        lines.push(format!(
            "{repo}:{tag} {digest} {bytes} {verdict} {}",
            humantime::format_rfc3339_seconds(accessed)
        ));
    }
    lines.sort();
    Ok(lines)
}

/// Evicts down to `[cache] max_size`, then removes blobs no held manifest references.
pub fn gc(app: &App) -> Result<String, AirgapError> {
    let evicted = app.store.evict_to_fit()?;
    let orphans = app.store.gc_unreferenced()?;
    Ok(format!(
        "evicted {} items ({} bytes) to fit; removed {} unreferenced blobs ({} bytes); {} bytes held",
        evicted.items,
        evicted.bytes,
        orphans.items,
        orphans.bytes,
        app.store.size()
    ))
}
