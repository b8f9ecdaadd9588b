//! `portcullis import`: an OCI image layout that crossed the gap on a disk is verified against
//! the policy exactly as a pull would be, and only what passes is imported. Blobs are streamed
//! through the cache's hashing writer; an image becomes visible only at the end, when its tag
//! mapping is written, so an interrupted import leaves nothing servable that was not verified.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::Path;

use portcullis_cache::{now_ms, Digest, TagRecord};
use portcullis_policy::{Decision, Evidence, NameDecision};

use super::layout::{Descriptor, Layout, REF_NAME};
use super::split_ref;
use crate::app::App;
use crate::handlers::gate;
use crate::oci::cosign::{self, is_signature_tag, EvidenceArtifact, MAX_EVIDENCE_BLOB};
use crate::oci::{Document, Reference};
use crate::route::Target;

/// What happened to one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// `imported`, `unchanged` or `rejected`.
    pub outcome: &'static str,
    pub reference: String,
    pub digest: String,
    pub reason: Option<String>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.outcome, self.reference, self.digest)?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

/// A manifest read from the layout, digest-checked and read strictly.
struct Node {
    digest: Digest,
    bytes: bytes::Bytes,
    doc: Document,
    blobs: Vec<Digest>,
    children: Vec<Digest>,
}

/// Imports every image of the layout at `path`. `name` names the repository of entries whose
/// ref name is a bare tag (as `skopeo copy … oci:DIR:TAG` writes).
pub fn import(app: &App, path: &Path, name: Option<&str>) -> Result<Vec<Line>, String> {
    let layout = Layout::open(path)?;
    let mut sigs: HashMap<(String, String), Descriptor> = HashMap::new();
    let mut images = Vec::new();
    let mut lines = Vec::new();
    for d in &layout.index.manifests {
        let Some(reference) = d.annotations.get(REF_NAME) else {
            continue; // unnamed entries are reachable only through a named one
        };
        let (repo, tag) = match (split_ref(reference), name) {
            (Some((r, t)), _) if r.contains('/') || name.is_none() => (r.to_owned(), t.to_owned()),
            (_, Some(n)) => (n.to_owned(), reference.clone()),
            _ => {
                lines.push(rejected(
                    reference,
                    &d.digest,
                    "the entry names no repository; pass --name registry/repo".into(),
                ));
                continue;
            }
        };
        let target = match app.router.route(&repo, None) {
            Ok(t) => t,
            Err(e) => {
                lines.push(rejected(reference, &d.digest, e.to_string()));
                continue;
            }
        };
        if is_signature_tag(&tag) {
            sigs.insert((target.name.clone(), tag), d.clone());
        } else {
            images.push((target, tag, d.clone()));
        }
    }
    let mut progress = Progress::new(images.len());
    for (target, tag, d) in images {
        let reference = format!("{}:{tag}", target.name);
        let line = match one(app, &layout, &target, &tag, &d, &sigs, &mut progress) {
            Ok(outcome) => Line {
                outcome,
                reference,
                digest: d.digest.clone(),
                reason: None,
            },
            Err(why) => rejected(&reference, &d.digest, why),
        };
        progress.image_done();
        lines.push(line);
    }
    progress.finish();
    Ok(lines)
}

fn rejected(reference: &str, digest: &str, why: String) -> Line {
    Line {
        outcome: "rejected",
        reference: reference.to_owned(),
        digest: digest.to_owned(),
        reason: Some(why),
    }
}

fn one(
    app: &App,
    layout: &Layout,
    target: &Target,
    tag: &str,
    d: &Descriptor,
    sigs: &HashMap<(String, String), Descriptor>,
    progress: &mut Progress,
) -> Result<&'static str, String> {
    let digest: Digest = d.digest.parse().map_err(|e| format!("{e}"))?;
    if let NameDecision::Refused(why) = app.policy.names.check(&target.name) {
        return Err(why);
    }
    let max = app.config.server.max_manifest_size.as_u64();
    let top = node(layout, &digest, Some(&d.media_type), max)?;
    let mut nodes = Vec::new();
    for child in &top.children {
        nodes.push(node(layout, child, None, max)?);
    }

    // The signatures and attestations that travelled with it, checked like any content: only
    // an artifact whose every blob is small verification material counts, or is imported.
    let mut evidence = Evidence::default();
    let mut sig_nodes: Vec<(String, Node, EvidenceArtifact)> = Vec::new();
    let mut payloads = Vec::new();
    for suffix in ["sig", "att"] {
        let tag = format!("{}.{suffix}", digest.tag_form());
        let Some(sd) = sigs.get(&(target.name.clone(), tag.clone())) else {
            continue;
        };
        let sd_digest: Digest = sd.digest.parse().map_err(|e| format!("{e}"))?;
        let sn = node(layout, &sd_digest, Some(&sd.media_type), max)?;
        let artifact = match cosign::evidence_artifact(&sn.doc, Some(&tag)) {
            Some(a) if a.subject == digest => a,
            _ => {
                tracing::warn!(name = %target.name, tag, "ignoring a signature tag that is not verification material");
                continue;
            }
        };
        let checked: Vec<(Digest, bytes::Bytes)> = artifact
            .blobs
            .iter()
            .map(|(r, material)| {
                let bytes = layout.read_verified(&r.digest, MAX_EVIDENCE_BLOB)?;
                if bytes.len() as u64 != r.size {
                    return Err(format!("{tag}: blob {} is not {} bytes", r.digest, r.size));
                }
                artifact.check(*material, &bytes).map_err(|why| {
                    format!("{tag}: blob {} is not {material:?}: {why}", r.digest)
                })?;
                Ok((r.digest.clone(), bytes))
            })
            .collect::<Result<_, String>>()?;
        for (layer, (_, bytes)) in sn.doc.layers().iter().zip(checked.iter().skip(1)) {
            evidence
                .signatures
                .extend(cosign::signature_layer(layer, bytes.to_vec()));
            evidence
                .attestations
                .extend(cosign::attestation_layer(layer, bytes.to_vec()));
        }
        payloads.extend(checked);
        sig_nodes.push((tag, sn, artifact));
    }
    let verdict = app
        .policy
        .evaluate(&target.name, &digest.to_string(), &evidence);
    if verdict.decision == Decision::Deny {
        return Err(verdict.message);
    }

    let all_blobs: Vec<Digest> = {
        let mut seen = HashSet::new();
        std::iter::once(&top)
            .chain(&nodes)
            .flat_map(|n| n.blobs.iter().cloned())
            .filter(|b| seen.insert(b.clone()))
            .collect()
    };
    let unchanged = app
        .store
        .tag(&target.name, tag)
        .ok()
        .flatten()
        .is_some_and(|r| r.digest == d.digest)
        && app.store.manifest(&digest).ok().flatten().is_some()
        && all_blobs
            .iter()
            .all(|b| app.store.has_blob(b).ok().flatten().is_some());

    // Blobs first: each verified as it is written, invisible until committed.
    for b in &all_blobs {
        if app.store.has_blob(b).map_err(|e| e.to_string())?.is_some() {
            continue;
        }
        write_blob(app, b, |w| {
            layout
                .stream(b, |chunk| {
                    progress.bytes(chunk.len() as u64);
                    w.write(chunk).map_err(|e| e.to_string())
                })
                .map(|_| ())
        })?;
    }
    for (pd, bytes) in &payloads {
        if app.store.has_blob(pd).map_err(|e| e.to_string())?.is_none() {
            write_blob(app, pd, |w| {
                w.write(bytes.clone()).map_err(|e| e.to_string())
            })?;
        }
    }

    // Then manifests, children before parents, then the verdict and the gate, then the tags.
    let err = |e: crate::error::ProxyError| e.to_string();
    for n in nodes
        .iter()
        .chain(sig_nodes.iter().map(|(_, n, _)| n))
        .chain(std::iter::once(&top))
    {
        let mut refs = n.blobs.clone();
        refs.extend(n.children.iter().cloned());
        app.store
            .put_manifest(&n.digest, &n.doc.media_type, &n.bytes, &refs)
            .map_err(|e| e.to_string())?;
        app.store
            .link(&target.name, &n.digest)
            .map_err(|e| e.to_string())?;
    }
    gate::store_verdict(app, &target.name, &digest, verdict.clone()).map_err(err)?;
    gate::enforce(app, target, &digest, &top.doc, &verdict).map_err(err)?;
    let record = |d: &Digest, mt: &str| TagRecord {
        digest: d.to_string(),
        media_type: mt.to_owned(),
        fetched_at_ms: now_ms(),
    };
    // The image passed: its verification material may be served beside it.
    for (sig_tag, sn, artifact) in &sig_nodes {
        let refs: Vec<Reference> = artifact.blobs.iter().map(|(r, _)| r.clone()).collect();
        gate::open_gate(app, target, &refs).map_err(err)?;
        app.store
            .put_tag(
                &target.name,
                sig_tag,
                &record(&sn.digest, &sn.doc.media_type),
            )
            .map_err(|e| e.to_string())?;
    }
    app.store
        .put_tag(&target.name, tag, &record(&digest, &top.doc.media_type))
        .map_err(|e| e.to_string())?;
    Ok(if unchanged { "unchanged" } else { "imported" })
}

fn node(
    layout: &Layout,
    digest: &Digest,
    media_type: Option<&str>,
    max: u64,
) -> Result<Node, String> {
    let bytes = layout.read_verified(digest, max)?;
    let doc = Document::parse(&bytes, media_type).map_err(|e| format!("manifest {digest}: {e}"))?;
    let refs = |rs: Vec<Reference>| rs.into_iter().map(|r| r.digest).collect();
    Ok(Node {
        digest: digest.clone(),
        blobs: refs(doc.blobs().map_err(|e| e.to_string())?),
        children: refs(doc.children().map_err(|e| e.to_string())?),
        doc,
        bytes,
    })
}

fn write_blob(
    app: &App,
    digest: &Digest,
    fill: impl FnOnce(&mut portcullis_cache::BlobWriter) -> Result<(), String>,
) -> Result<(), String> {
    let mut w = app
        .store
        .blob_writer(digest, None)
        .map_err(|e| e.to_string())?;
    fill(&mut w)?;
    w.commit()
        .map(|_| ())
        .map_err(|e| format!("blob {digest}: {e}"))
}

/// Bytes and images, on a terminal only; quiet in logs.
struct Progress {
    tty: bool,
    images: usize,
    done: usize,
    bytes: u64,
    last: u64,
}

impl Progress {
    fn new(images: usize) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            images,
            done: 0,
            bytes: 0,
            last: 0,
        }
    }

    fn bytes(&mut self, n: u64) {
        self.bytes += n;
        if self.tty && self.bytes - self.last >= 8 << 20 {
            self.last = self.bytes;
            self.show();
        }
    }

    fn image_done(&mut self) {
        self.done += 1;
        if self.tty {
            self.show();
        }
    }

    fn show(&self) {
        eprint!(
            "\rimporting: {}/{} images, {:.1} MiB",
            self.done,
            self.images,
            self.bytes as f64 / (1 << 20) as f64
        );
    }

    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
