//! `portcullis mirror`: the connected side of an air gap. Pulls every `[[mirror]]` image through
//! the normal path (resolve, verify, fetch every blob hash-checked), then exports them.

use std::path::Path;
use std::time::Duration;

use portcullis_cache::Digest;
use portcullis_policy::{Decision, NameDecision};

use super::export::export;
use super::split_ref;
use crate::app::App;
use crate::fetch::Progress;
use crate::handlers::manifests::{self, Refs};
use crate::handlers::{gate, Accept, Outcome};
use crate::route::Target;

/// Pulls, verifies and exports; one line per image, and whether all passed.
pub async fn mirror(app: &App, out: &Path) -> Result<(Vec<String>, bool), String> {
    let mut lines = Vec::new();
    let mut passed = Vec::new();
    let mut all_ok = true;
    let images: Vec<String> = app
        .config
        .mirrors
        .iter()
        .flat_map(|m| m.images.clone())
        .collect();
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

async fn pull(app: &App, image: &str) -> Result<String, String> {
    let (repo, tag) = split_ref(image).unwrap_or((image, "latest"));
    let target = app.router.route(repo, None).map_err(|e| e.to_string())?;
    if let NameDecision::Refused(why) = app.policy.names.check(&target.name) {
        return Err(why);
    }
    let mut outcome = Outcome::default();
    let (digest, manifest) =
        manifests::resolve_tag(app, &target, tag, &Accept::default(), &mut outcome)
            .await
            .map_err(|e| e.to_string())?;
    let verdict = gate::verdict(app, &target, &digest)
        .await
        .map_err(|e| e.to_string())?;
    if verdict.decision == Decision::Deny {
        return Err(verdict.message.clone());
    }
    gate::enforce(app, &target, &digest, &manifest, &verdict).map_err(|e| e.to_string())?;
    let refs = Refs::parse(&manifest.bytes)?;
    for child in refs.children()? {
        let mut o = Outcome::default();
        let m = manifests::by_digest(app, &target, &child, &Accept::default(), &mut o)
            .await
            .map_err(|e| e.to_string())?;
        let v = gate::verdict(app, &target, &child)
            .await
            .map_err(|e| e.to_string())?;
        gate::enforce(app, &target, &child, &m, &v).map_err(|e| e.to_string())?;
        for b in Refs::parse(&m.bytes)?.blobs()? {
            blob(app, &target, &b).await?;
        }
    }
    for b in refs.blobs()? {
        blob(app, &target, &b).await?;
    }
    Ok(format!("{}:{tag}", target.name))
}

/// Fetches a blob through the single-flight path and waits until it is committed.
async fn blob(app: &App, target: &Target, digest: &Digest) -> Result<(), String> {
    if app
        .store
        .has_blob(digest)
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let (flight, _) = app
        .flights
        .join(&app.store, target, digest)
        .map_err(|e| e.to_string())?;
    let mut progress = flight.progress.clone();
    let state = progress
        .wait_for(|p| matches!(p, Progress::Verified { .. } | Progress::Failed(_)))
        .await
        .map_err(|_| "blob fetch vanished".to_owned())?
        .clone();
    if let Progress::Failed(e) = state {
        return Err(e.to_string());
    }
    for _ in 0..600 {
        if app
            .store
            .has_blob(digest)
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("blob {digest} was verified but not committed"))
}
