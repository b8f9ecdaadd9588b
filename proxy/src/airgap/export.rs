//! `portcullis export`: images and their evidence, from the cache into an OCI image layout (a
//! directory, or a tar when the output ends in `.tar`) for the other side of a gap: the cosign
//! `.sig` and `.att` artifacts, and the referrers (Sigstore bundles among them) as the
//! `sha256-<hex>` referrers tag and the artifact manifests it lists, with their blobs.

use std::collections::BTreeMap;
use std::path::Path;

use portcullis_cache::{Blob, Digest};

use super::layout::{tar_dir, Descriptor, Writer, REF_NAME};
use super::AirgapError;
use crate::app::App;
use crate::content::referrers::{self, ReferrersIndex, INDEX_MEDIA_TYPE};
use crate::route::split_tag;
use crate::route::Target;

/// Writes `refs` (`registry/repo:tag`) with their signatures; returns the entries written.
pub fn export(app: &App, refs: &[String], out: &Path) -> Result<Vec<String>, AirgapError> {
    let as_tar = out.extension().is_some_and(|e| e == "tar");
    let dir = if as_tar {
        std::env::temp_dir().join(format!("portcullis-export-{}", std::process::id()))
    } else {
        out.to_owned()
    };
    let result = write(app, refs, &dir).and_then(|written| {
        if as_tar {
            tar_dir(&dir, out)?;
        }
        Ok(written)
    });
    if as_tar {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn write(app: &App, refs: &[String], dir: &Path) -> Result<Vec<String>, AirgapError> {
    let mut w = Writer::create(dir)?;
    let mut written = Vec::new();
    for r in refs {
        let (repo, tag) = split_tag(r).unwrap_or((r.as_str(), "latest"));
        let target = app.router.route(repo, None)?;
        let mut entries = vec![tag.to_owned()];
        let rec = app
            .store
            .tag(&target.name, tag)?
            .ok_or_else(|| AirgapError::TagNotHeld {
                name: target.name.clone(),
                tag: tag.to_owned(),
            })?;
        let digest: Digest = rec.digest.parse()?;
        entries.push(format!("{}.sig", digest.tag_form()));
        entries.push(format!("{}.att", digest.tag_form()));
        if let Some(entry) = referrers(app, &w, &target, &digest)? {
            written.push(format!("{}:{}", target.name, digest.tag_form()));
            w.entry(entry);
        }
        for t in entries {
            let Some(rec) = app.store.tag(&target.name, &t)? else {
                continue; // an image without signatures exports without them
            };
            let d: Digest = rec.digest.parse()?;
            let (media_type, size) = tree(app, &w, &d)?;
            let reference = format!("{}:{t}", target.name);
            w.entry(Descriptor {
                media_type,
                digest: d.to_string(),
                size,
                annotations: BTreeMap::from([(REF_NAME.to_owned(), reference.clone())]),
            });
            written.push(reference);
        }
    }
    w.finish()?;
    Ok(written)
}

/// Writes the held referrers of `digest` whose manifests and blobs are all held, and an index
/// of them (the referrers tag schema's `sha256-<hex>`): its layout entry, if there are any.
fn referrers(
    app: &App,
    w: &Writer,
    target: &Target,
    digest: &Digest,
) -> Result<Option<Descriptor>, AirgapError> {
    let Some(held) = referrers::held_index(app, target, digest)? else {
        return Ok(None);
    };
    let mut carried = Vec::new();
    for r in &held.manifests {
        if held_fully(app, &r.digest)? {
            tree(app, w, &r.digest)?;
            carried.push(r.clone());
        }
    }
    if carried.is_empty() {
        return Ok(None);
    }
    let index = ReferrersIndex::new(carried);
    let bytes = serde_json::to_vec(&index).map_err(AirgapError::ReferrersIndex)?;
    let index_digest = Digest::of(&bytes);
    w.put_bytes(&index_digest, &bytes)?;
    Ok(Some(Descriptor {
        media_type: INDEX_MEDIA_TYPE.to_owned(),
        digest: index_digest.to_string(),
        size: bytes.len() as u64,
        annotations: BTreeMap::from([(
            REF_NAME.to_owned(),
            format!("{}:{}", target.name, digest.tag_form()),
        )]),
    }))
}

/// Whether a manifest and everything it references are held (referrers the gate never read,
/// such as SBOMs nobody pulled, are not).
fn held_fully(app: &App, digest: &Digest) -> Result<bool, AirgapError> {
    let Some(m) = app.store.manifest(digest)? else {
        return Ok(false);
    };
    for r in &m.refs {
        let held = app.store.has_blob(r)?.is_some() || held_fully(app, r)?;
        if !held {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes a manifest and everything it references; its media type and size.
fn tree(app: &App, w: &Writer, digest: &Digest) -> Result<(String, u64), AirgapError> {
    let m = app
        .store
        .manifest(digest)?
        .ok_or_else(|| AirgapError::ManifestNotHeld(digest.clone()))?;
    w.put_bytes(digest, &m.bytes)?;
    for r in &m.refs {
        if app.store.manifest(r)?.is_some() {
            tree(app, w, r)?;
            continue;
        }
        match app.store.blob(r)? {
            Some(Blob::Memory(bytes)) => w.put_bytes(r, &bytes)?,
            Some(Blob::File { file, .. }) => w.put_file(r, file)?,
            None => {
                return Err(AirgapError::BlobNotHeld {
                    blob: r.clone(),
                    manifest: digest.clone(),
                })
            }
        }
    }
    Ok((m.media_type, m.bytes.len() as u64))
}
