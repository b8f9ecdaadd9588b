//! `portcullis mirror`: the connected side of an air gap. Pulls every `[[mirror]]` image (a
//! reference, or a glob over a repository's tags such as `ghcr.io/acme/app:v1.*`) through the
//! normal path (resolve, verify, fetch every blob hash-checked), then exports them.

use std::path::Path;

use portcullis_cache::Digest;
use portcullis_policy::{Decision, NameDecision};

use super::export::export;
use super::AirgapError;
use crate::app::App;
use crate::content::{self, Accept};
use crate::gate;
use crate::oci::{cosign, Document, Reference};
use crate::route::split_tag;
use crate::route::Target;
use crate::upstream::read_limited;

/// Pulls, verifies and exports; one line per image, and whether all passed.
pub async fn mirror(app: &App, out: &Path) -> Result<(Vec<String>, bool), AirgapError> {
    let mut lines = Vec::new();
    let mut passed = Vec::new();
    let mut all_ok = true;
    let mut images = Vec::new();
    for image in app.config.mirrors.iter().flat_map(|m| &m.images) {
        match expand(app, image).await {
            Ok(found) => images.extend(found),
            Err(why) => {
                all_ok = false;
                lines.push(format!("denied {image}: {why}"));
            }
        }
    }
    for image in images {
        match pull(app, &image).await {
            Ok(reference) => {
                lines.push(format!("verified {reference}"));
                passed.push(reference);
            }
            Err(why) => {
                all_ok = false;
                lines.push(format!("denied {image}: {why}"));
            }
        }
    }
    let written = export(app, &passed, out)?;
    lines.push(format!(
        "exported {} entries to {}",
        written.len(),
        out.display()
    ));
    Ok((lines, all_ok))
}

/// `registry/repo:v1.*`: a glob over the repository's tags, listed upstream.
async fn expand(app: &App, image: &str) -> Result<Vec<String>, AirgapError> {
    let (repo, tag) = split_tag(image).unwrap_or((image, "latest"));
    if !tag.contains(['*', '?', '[']) {
        return Ok(vec![image.to_owned()]);
    }
    let glob = globset::Glob::new(tag)
        .map_err(|source| AirgapError::Glob {
            glob: tag.to_owned(),
            source,
        })?
        .compile_matcher();
    let target = app.router.route(repo, None)?;
    if let NameDecision::Refused(why) = app.policy.names.check(&target.name) {
        return Err(AirgapError::Denied(why));
    }
    let up = &target.upstream;
    let resp = up
        .send(
            http::Method::GET,
            &target.repo,
            "tags/list",
            Some("application/json"),
        )
        .await?;
    if !resp.status().is_success() {
        return Err(AirgapError::TagList {
            upstream: up.name.clone(),
            status: resp.status(),
            name: target.name.clone(),
        });
    }
    let body = read_limited(resp.into_body(), 8 << 20, up.read_timeout).await?;
    #[derive(serde::Deserialize)]
    struct Tags {
        #[serde(default)]
        tags: Option<Vec<String>>,
    }
    let tags: Tags = serde_json::from_slice(&body).map_err(AirgapError::TagListJson)?;
    let found: Vec<String> = tags
        .tags
        .unwrap_or_default()
        .into_iter()
        .filter(|t| glob.is_match(t) && !cosign::is_signature_tag(t))
        .map(|t| format!("{repo}:{t}"))
        .collect();
    if found.is_empty() {
        return Err(AirgapError::NoTagMatches {
            name: target.name.clone(),
            glob: tag.to_owned(),
        });
    }
    Ok(found)
}

async fn pull(app: &App, image: &str) -> Result<String, AirgapError> {
    let (repo, tag) = split_tag(image).unwrap_or((image, "latest"));
    let target = app.router.route(repo, None)?;
    if let NameDecision::Refused(why) = app.policy.names.check(&target.name) {
        return Err(AirgapError::Denied(why));
    }
    let (digest, manifest, _) = content::resolve_tag(app, &target, tag, &Accept::default()).await?;
    let verdict = gate::verdict(app, &target, &digest).await?;
    if verdict.decision == Decision::Deny {
        return Err(AirgapError::Denied(verdict.message.clone()));
    }
    let doc = read(&manifest, &digest)?;
    gate::enforce(app, &target, &digest, &doc, &verdict)?;
    for child in children(&doc, &digest)? {
        let child = child.digest;
        let (m, _) = content::by_digest(app, &target, &child, &Accept::default()).await?;
        let v = gate::verdict(app, &target, &child).await?;
        let child_doc = read(&m, &child)?;
        gate::enforce(app, &target, &child, &child_doc, &v)?;
        for b in blobs(&child_doc, &child)? {
            blob(app, &target, &b.digest, b.size).await?;
        }
    }
    for b in blobs(&doc, &digest)? {
        blob(app, &target, &b.digest, b.size).await?;
    }
    Ok(format!("{}:{tag}", target.name))
}

fn read(m: &portcullis_cache::Manifest, digest: &Digest) -> Result<Document, AirgapError> {
    Document::parse(&m.bytes, Some(&m.media_type)).map_err(invalid(digest))
}

fn children(doc: &Document, digest: &Digest) -> Result<Vec<Reference>, AirgapError> {
    doc.children().map_err(invalid(digest))
}

fn blobs(doc: &Document, digest: &Digest) -> Result<Vec<Reference>, AirgapError> {
    doc.blobs().map_err(invalid(digest))
}

fn invalid(digest: &Digest) -> impl FnOnce(crate::oci::Invalid) -> AirgapError + '_ {
    move |source| AirgapError::Manifest {
        digest: digest.clone(),
        source,
    }
}

/// Fetches a blob through the single-flight path and waits until the store holds it.
async fn blob(app: &App, target: &Target, digest: &Digest, size: u64) -> Result<(), AirgapError> {
    if app.store.has_blob(digest)?.is_some() {
        return Ok(());
    }
    let (flight, _) = app.flights.join(&app.store, target, digest, size)?;
    let mut progress = flight.progress.clone();
    crate::fetch::until_committed(&mut progress)
        .await
        .ok_or_else(|| AirgapError::FetchVanished(digest.clone()))?
        .map_err(|e| AirgapError::Proxy((*e).clone()))
}
