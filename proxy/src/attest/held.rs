//! Summaries and the documents that carry them, as the store keeps them.
//!
//! - `attest` (keyed by the verdict key: policy fingerprint, name, digest): the signed
//!   envelope, made once per verdict under the attester's lock, and remade only when the key
//!   or the verifier id changed.
//! - `attest.parent` (the verdict key of an index's child): the index that vouched for it, whose
//!   evidence the child's summary lists.
//! - `attest.doc` (fingerprint, name, document digest): each document served as portcullis'
//!   own, with its blobs, so that it can be served by digest and its blobs written back after
//!   an eviction.
//!
//! Every key starts with the policy fingerprint: a policy change leaves them behind, and
//! [`App::collect_orphans`](crate::App::collect_orphans) deletes them with the old verdicts.

use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use portcullis_cache::Digest;
use portcullis_policy::{Verdict, BUNDLE_MEDIA_TYPE_PREFIX};
use serde::{Deserialize, Serialize};

use super::forms::Doc;
use super::vsa::{self, Facts, Input};
use super::Attester;
use crate::app::App;
use crate::content::{referrers, Accept};
use crate::error::ProxyError;
use crate::gate;
use crate::oci::cosign::evidence_artifact;
use crate::oci::{Document, Reference};
use crate::route::Target;

/// The store's meta namespaces (see the module's docs).
pub const SUMMARY: &str = "attest";
pub const PARENT: &str = "attest.parent";
pub const DOC: &str = "attest.doc";

/// A signed summary as kept: the envelope, and what it was signed as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The DSSE envelope JSON, exactly as served.
    pub envelope: String,
    /// The signing key's hint, and the verifier id: a change of either makes a new summary.
    pub hint: String,
    pub verifier_id: String,
    /// `timeVerified`, also the bundle artifact's creation time.
    pub time_verified: String,
}

impl Summary {
    /// What docs name their summary by.
    pub fn id(&self) -> Digest {
        Digest::of(self.envelope.as_bytes())
    }
}

/// The summary of `name@digest` under the policy in force, made now if there is none yet (or
/// it was signed with another key or verifier id). `verdict` must be one that passed
/// ([`gate::verified`]).
pub fn ensure(
    app: &App,
    attester: &Attester,
    target: &Target,
    digest: &Digest,
    verdict: &Verdict,
) -> Result<Arc<Summary>, ProxyError> {
    let key = gate::verdict_key(app, &target.name, digest);
    if let Some(s) = current(app, attester, &key)? {
        return Ok(s);
    }
    // Made once per verdict: concurrent requests wait here and find the first one's record.
    let _making = attester
        .making
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = current(app, attester, &key)? {
        return Ok(s);
    }
    let mut inputs = inputs(app, target, digest)?;
    if let Some(parent) = app.store.meta(PARENT, &key)? {
        if let Some(parent) = std::str::from_utf8(&parent)
            .ok()
            .and_then(|p| p.parse::<Digest>().ok())
        {
            for i in self::inputs(app, target, &parent)? {
                if !inputs.contains(&i) {
                    inputs.push(i);
                }
            }
        }
    }
    let time_verified = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let statement = vsa::statement(&Facts {
        name: &target.name,
        digest,
        fingerprint: app.policy.fingerprint(),
        verifier_id: &attester.verifier_id,
        time_verified: &time_verified,
        inputs: &inputs,
        verified_levels: vsa::verified_levels(verdict),
    });
    let envelope = vsa::envelope(&attester.key, &statement).to_string();
    let summary = Summary {
        envelope,
        hint: attester.key.hint.clone(),
        verifier_id: attester.verifier_id.clone(),
        time_verified,
    };
    let raw = serde_json::to_vec(&summary).map_err(|e| ProxyError::Internal(e.to_string()))?;
    app.store.put_meta(SUMMARY, &key, &raw)?;
    app.metrics.summaries_signed.inc();
    tracing::info!(name = %target.name, %digest, policy = app.policy.fingerprint(),
        inputs = inputs.len(), "verification summary signed");
    let summary = Arc::new(summary);
    attester.held.insert(key, Arc::clone(&summary));
    Ok(summary)
}

/// The summary held for `key`, if it was signed as the attester signs now.
fn current(app: &App, attester: &Attester, key: &str) -> Result<Option<Arc<Summary>>, ProxyError> {
    let held = match attester.held.get(key) {
        Some(s) => Some(s),
        None => app
            .store
            .meta(SUMMARY, key)?
            .and_then(|raw| serde_json::from_slice::<Summary>(&raw).ok())
            .map(Arc::new),
    };
    let Some(s) = held else { return Ok(None) };
    if s.hint != attester.key.hint || s.verifier_id != attester.verifier_id {
        return Ok(None);
    }
    attester.held.insert(key.to_owned(), Arc::clone(&s));
    Ok(Some(s))
}

/// Records that the verified index `parent` vouched for `children`.
pub fn vouched(
    app: &App,
    target: &Target,
    parent: &Digest,
    children: &[Reference],
) -> Result<(), ProxyError> {
    for child in children {
        let key = gate::verdict_key(app, &target.name, &child.digest);
        app.store
            .put_meta(PARENT, &key, parent.to_string().as_bytes())?;
    }
    Ok(())
}

/// The evidence the gate read for `digest`, as the store holds it: the cosign `.sig` and `.att`
/// artifacts and the Sigstore bundle artifacts among its referrers, each one that is
/// verification material for `digest`. The policy saw all of them; the summary lists all of
/// them (the VSA asks for every attestation used, and which one an authority accepted is not
/// part of the verdict).
fn inputs(app: &App, target: &Target, digest: &Digest) -> Result<Vec<Input>, ProxyError> {
    let input = |d: &Digest| Input {
        uri: format!("oci://{}@{d}", target.name),
        digest: d.clone(),
    };
    let mut out = Vec::new();
    for suffix in ["sig", "att"] {
        let tag = format!("{}.{suffix}", digest.tag_form());
        let Some(rec) = app
            .store
            .tag(&target.name, &Accept::default().tag_key(&tag))?
        else {
            continue;
        };
        let Ok(d) = rec.digest.parse::<Digest>() else {
            continue;
        };
        if is_evidence_for(app, &d, Some(&tag), digest)? {
            out.push(input(&d));
        }
    }
    if let Some(index) = referrers::held_index(app, target, digest)? {
        for r in &index.manifests {
            let bundle = r
                .artifact_type
                .as_deref()
                .is_some_and(|t| t.starts_with(BUNDLE_MEDIA_TYPE_PREFIX));
            if bundle && is_evidence_for(app, &r.digest, None, digest)? {
                out.push(input(&r.digest));
            }
        }
    }
    Ok(out)
}

/// Whether the held manifest `d` is verification material for `subject` that reached the
/// policy: every blob of it was fetched, checked and kept (a blob refused as evidence is not
/// kept, and neither is the policy told of it).
fn is_evidence_for(
    app: &App,
    d: &Digest,
    tag: Option<&str>,
    subject: &Digest,
) -> Result<bool, ProxyError> {
    let Some(m) = app.store.manifest(d)? else {
        return Ok(false);
    };
    let artifact = Document::parse(&m.bytes, Some(&m.media_type))
        .ok()
        .and_then(|doc| evidence_artifact(&doc, tag))
        .filter(|a| &a.subject == subject);
    let Some(artifact) = artifact else {
        return Ok(false);
    };
    for (r, _) in &artifact.blobs {
        if app.store.has_blob(&r.digest)? != Some(r.size) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn doc_key(app: &App, target: &Target, digest: &Digest) -> String {
    format!("{}\0{}\0{digest}", app.policy.fingerprint(), target.name)
}

/// Makes `doc` servable in `target`'s repository: its record (for requests by digest), its
/// blobs in the store (written again if evicted) and linked to the repository, and the gate
/// open for them at their sizes. Returns its digest.
pub fn hold(
    app: &App,
    attester: &Attester,
    target: &Target,
    doc: &Doc,
) -> Result<Digest, ProxyError> {
    let digest = Digest::of(doc.manifest.as_bytes());
    let mut refs = Vec::new();
    for blob in &doc.blobs {
        let d = Digest::of(blob.as_bytes());
        if app.store.has_blob(&d)?.is_none() {
            let mut w = app.store.blob_writer(&d, Some(blob.len() as u64))?;
            w.write(bytes::Bytes::copy_from_slice(blob.as_bytes()))?;
            w.commit()?;
        }
        refs.push(Reference {
            digest: d,
            size: blob.len() as u64,
            media_type: String::new(),
        });
    }
    let key = doc_key(app, target, &digest);
    if attester.written.contains_key(&key) {
        return Ok(digest);
    }
    for r in &refs {
        app.store.link(&target.name, &r.digest)?;
    }
    gate::open_gate(app, target, &refs)?;
    let raw = serde_json::to_vec(doc).map_err(|e| ProxyError::Internal(e.to_string()))?;
    app.store.put_meta(DOC, &key, &raw)?;
    attester.written.insert(key, ());
    Ok(digest)
}

/// The document `digest` portcullis made in `target`'s repository under the policy in force,
/// if it is one.
pub fn doc(app: &App, target: &Target, digest: &Digest) -> Result<Option<Doc>, ProxyError> {
    Ok(app
        .store
        .meta(DOC, &doc_key(app, target, digest))?
        .and_then(|raw| serde_json::from_slice(&raw).ok()))
}
