//! `portcullis import`: an OCI image layout that crossed the gap on a disk is verified against
//! the policy exactly as a pull would be, and only what passes is imported. The evidence that
//! travelled with an image (`.sig`/`.att` artifacts, its referrers under the `sha256-<hex>` tag,
//! their blobs) is checked as verification material and stored first, where it serves nothing
//! until its subject passes; then the same `gate` decision as a pull reads it from the cache
//! (bundles, attestations, `verify_base`). Blobs are streamed through the cache's hashing
//! writer; an image becomes visible only at the end, when its tag mapping is written, so an
//! interrupted or rejected import leaves nothing servable that was not verified.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::Path;

use portcullis_cache::{now_ms, Digest, TagRecord};
use portcullis_policy::{Decision, NameDecision};

use super::layout::{Descriptor, Layout, REF_NAME};
use super::AirgapError;
use crate::app::App;
use crate::error::Report;
use crate::gate;
use crate::oci::cosign::{self, is_signature_tag, EvidenceArtifact, MAX_EVIDENCE_BLOB};
use crate::oci::{Document, Reference};
use crate::route::split_tag;
use crate::route::Target;

/// At most this many referrers of one image are read from a layout.
const MAX_REFERRERS: usize = 32;

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

/// One evidence artifact from the layout, every blob checked, and the tag it travelled under
/// (none for a referrer, which is reached through the referrers tag).
struct Carried {
    tag: Option<String>,
    node: Node,
    artifact: EvidenceArtifact,
    blobs: Vec<(Digest, bytes::Bytes)>,
}

/// The layout's entries that are evidence (cosign tags, referrers tags), by repository and tag.
type EvidenceEntries = HashMap<(String, String), Descriptor>;

/// Imports every image of the layout at `path`. `name` names the repository of entries whose
/// ref name is a bare tag (as `skopeo copy … oci:DIR:TAG` writes). An image whose base (under
/// `verify_base`) comes later in the same layout is decided again once the others are in.
pub async fn import(app: &App, path: &Path, name: Option<&str>) -> Result<Vec<Line>, AirgapError> {
    let layout = Layout::open(path)?;
    let mut evidence: EvidenceEntries = HashMap::new();
    let mut images = Vec::new();
    let mut lines = Vec::new();
    for d in &layout.index.manifests {
        let Some(reference) = d.annotations.get(REF_NAME) else {
            continue; // unnamed entries are reachable only through a named one
        };
        let (repo, tag) = match (split_tag(reference), name) {
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
        if is_signature_tag(&tag) || is_referrers_tag(&tag) {
            evidence.insert((target.name.clone(), tag), d.clone());
        } else {
            images.push((target, tag, d.clone()));
        }
    }
    let mut progress = Progress::new(images.len());
    let mut results: Vec<Option<Line>> = vec![None; images.len()];
    loop {
        let mut imported_any = false;
        for (i, (target, tag, d)) in images.iter().enumerate() {
            if results[i].as_ref().is_some_and(|l| l.outcome != "rejected") {
                continue;
            }
            let reference = format!("{}:{tag}", target.name);
            let line = match one(app, &layout, target, tag, d, &evidence, &mut progress).await {
                Ok(outcome) => {
                    imported_any = true;
                    progress.image_done();
                    Line {
                        outcome,
                        reference,
                        digest: d.digest.clone(),
                        reason: None,
                    }
                }
                Err(why) => rejected(&reference, &d.digest, Report(&why).to_string()),
            };
            results[i] = Some(line);
        }
        let retry = results
            .iter()
            .any(|l| l.as_ref().is_some_and(|l| l.outcome == "rejected"));
        if !(imported_any && retry) {
            break;
        }
    }
    lines.extend(results.into_iter().flatten());
    progress.finish();
    Ok(lines)
}

/// The referrers tag schema: `sha256-<hex>`, an index of the subject's referrers.
fn is_referrers_tag(tag: &str) -> bool {
    tag.strip_prefix("sha256-")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn rejected(reference: &str, digest: &str, why: String) -> Line {
    Line {
        outcome: "rejected",
        reference: reference.to_owned(),
        digest: digest.to_owned(),
        reason: Some(why),
    }
}

async fn one(
    app: &App,
    layout: &Layout,
    target: &Target,
    tag: &str,
    d: &Descriptor,
    evidence: &EvidenceEntries,
    progress: &mut Progress,
) -> Result<&'static str, AirgapError> {
    let digest: Digest = d.digest.parse()?;
    if let NameDecision::Refused(why) = app.policy.names.check(&target.name) {
        return Err(AirgapError::Denied(why));
    }
    let max = app.config.server.max_manifest_size.as_u64();
    let top = node(layout, &digest, Some(&d.media_type), max)?;
    let mut nodes = Vec::new();
    for child in &top.children {
        nodes.push(node(layout, child, None, max)?);
    }

    // The evidence that travelled with it, checked like any content, stored where it serves
    // nothing until the image passes; then the same decision as a pull reads it.
    let carried = carried(layout, target, &digest, evidence, max)?;
    let before = store_evidence(app, target, &carried)?;
    let decided = gate::redecide(app, target, &digest, Some(&top.bytes)).await;
    let verdict = match decided {
        Ok(v) if v.decision != Decision::Deny => v,
        // Rejected: the carried evidence's tags are taken back, so that nothing of the image,
        // its referrers list included, is reachable.
        rejected => {
            restore_tags(app, target, before)?;
            return Err(match rejected {
                Ok(v) => AirgapError::Denied(v.message.clone()),
                Err(e) => e.into(),
            });
        }
    };

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
        if app.store.has_blob(b)?.is_some() {
            continue;
        }
        write_blob(app, b, |w| {
            layout
                .stream(b, |chunk| {
                    progress.bytes(chunk.len() as u64);
                    w.write(chunk).map_err(AirgapError::from)
                })
                .map(|_| ())
        })?;
    }

    // Then manifests, children before parents, then the gate, then the tag.
    for n in nodes.iter().chain(std::iter::once(&top)) {
        put_node(app, target, n)?;
    }
    gate::enforce(app, target, &digest, &top.doc, &verdict)?;
    // The image passed: its verification material may be served beside it.
    for c in &carried {
        let refs: Vec<Reference> = c.artifact.blobs.iter().map(|(r, _)| r.clone()).collect();
        gate::open_gate(app, target, &refs)?;
    }
    put_tag(app, target, tag, &digest, &top.doc.media_type)?;
    Ok(if unchanged { "unchanged" } else { "imported" })
}

/// The `.sig`/`.att` artifacts and the referrers of `digest` that the layout carries, each an
/// evidence artifact for `digest` whose every blob is small and what it claims. Anything else
/// is left behind with a log line; a blob that fails its check rejects the image.
fn carried(
    layout: &Layout,
    target: &Target,
    digest: &Digest,
    evidence: &EvidenceEntries,
    max: u64,
) -> Result<Vec<Carried>, AirgapError> {
    let mut out = Vec::new();
    let entry = |tag: &str| evidence.get(&(target.name.clone(), tag.to_owned()));
    for suffix in ["sig", "att"] {
        let tag = format!("{}.{suffix}", digest.tag_form());
        let Some(sd) = entry(&tag) else { continue };
        let sd_digest: Digest = sd.digest.parse()?;
        let sn = node(layout, &sd_digest, Some(&sd.media_type), max)?;
        out.extend(check(layout, target, sn, Some(tag), digest)?);
    }
    let referrers_tag = digest.tag_form();
    if let Some(rd) = entry(&referrers_tag) {
        let rd_digest: Digest = rd.digest.parse()?;
        let index = node(layout, &rd_digest, Some(&rd.media_type), max)?;
        for child in index.children.iter().take(MAX_REFERRERS) {
            let Ok(n) = node(layout, child, None, max) else {
                tracing::warn!(name = %target.name, referrer = %child, "a listed referrer is not in the layout");
                continue;
            };
            out.extend(check(layout, target, n, None, digest)?);
        }
        // The index itself, so that the offline referrers endpoint lists what was imported.
        out.push(Carried {
            tag: Some(referrers_tag),
            artifact: EvidenceArtifact {
                subject: digest.clone(),
                blobs: Vec::new(),
            },
            node: index,
            blobs: Vec::new(),
        });
    }
    Ok(out)
}

fn check(
    layout: &Layout,
    target: &Target,
    node: Node,
    tag: Option<String>,
    subject: &Digest,
) -> Result<Option<Carried>, AirgapError> {
    let artifact = match cosign::evidence_artifact(&node.doc, tag.as_deref()) {
        Some(a) if &a.subject == subject => a,
        _ => {
            tracing::warn!(name = %target.name, ?tag, digest = %node.digest, "ignoring what is not verification material for this image");
            return Ok(None);
        }
    };
    let what = tag.clone().unwrap_or_else(|| node.digest.to_string());
    let blobs = artifact
        .blobs
        .iter()
        .map(|(r, material)| {
            let bytes = layout.read_verified(&r.digest, MAX_EVIDENCE_BLOB)?;
            if bytes.len() as u64 != r.size {
                return Err(AirgapError::EvidenceSize {
                    what: what.clone(),
                    digest: r.digest.clone(),
                    size: r.size,
                });
            }
            artifact
                .check(*material, &bytes)
                .map_err(|source| AirgapError::EvidenceMaterial {
                    what: what.clone(),
                    digest: r.digest.clone(),
                    material: *material,
                    source,
                })?;
            Ok((r.digest.clone(), bytes))
        })
        .collect::<Result<_, AirgapError>>()?;
    Ok(Some(Carried {
        tag,
        node,
        artifact,
        blobs,
    }))
}

/// Stores carried evidence as content (blobs, manifests, their tags): none of it is served
/// until its subject passes, and the decision reads it from here. Returns the tag mappings it
/// replaced, for [`restore_tags`].
fn store_evidence(
    app: &App,
    target: &Target,
    carried: &[Carried],
) -> Result<Vec<(String, Option<TagRecord>)>, AirgapError> {
    for c in carried {
        for (d, bytes) in &c.blobs {
            if app.store.has_blob(d)?.is_none() {
                write_blob(app, d, |w| Ok(w.write(bytes.clone())?))?;
            }
            app.store.link(&target.name, d)?;
        }
        put_node(app, target, &c.node)?;
    }
    // Tags last: an artifact is reachable only once everything it names is held.
    let mut before = Vec::new();
    for c in carried {
        if let Some(tag) = &c.tag {
            let held = app.store.tag(&target.name, tag)?;
            before.push((tag.clone(), held));
            put_tag(app, target, tag, &c.node.digest, &c.node.doc.media_type)?;
        }
    }
    Ok(before)
}

/// Puts back the tag mappings [`store_evidence`] replaced.
fn restore_tags(
    app: &App,
    target: &Target,
    before: Vec<(String, Option<TagRecord>)>,
) -> Result<(), AirgapError> {
    for (tag, held) in before {
        match held {
            Some(record) => app.store.put_tag(&target.name, &tag, &record),
            None => app.store.delete_tag(&target.name, &tag),
        }?;
    }
    Ok(())
}

fn put_node(app: &App, target: &Target, n: &Node) -> Result<(), AirgapError> {
    let mut refs = n.blobs.clone();
    refs.extend(n.children.iter().cloned());
    app.store
        .put_manifest(&n.digest, &n.doc.media_type, &n.bytes, &refs)?;
    Ok(app.store.link(&target.name, &n.digest)?)
}

fn put_tag(
    app: &App,
    target: &Target,
    tag: &str,
    digest: &Digest,
    media_type: &str,
) -> Result<(), AirgapError> {
    let record = TagRecord {
        digest: digest.to_string(),
        media_type: media_type.to_owned(),
        fetched_at_ms: now_ms(),
    };
    Ok(app.store.put_tag(&target.name, tag, &record)?)
}

fn node(
    layout: &Layout,
    digest: &Digest,
    media_type: Option<&str>,
    max: u64,
) -> Result<Node, AirgapError> {
    let bytes = layout.read_verified(digest, max)?;
    let invalid = |source| AirgapError::Manifest {
        digest: digest.clone(),
        source,
    };
    let doc = Document::parse(&bytes, media_type).map_err(invalid)?;
    let refs = |rs: Vec<Reference>| rs.into_iter().map(|r| r.digest).collect();
    Ok(Node {
        digest: digest.clone(),
        blobs: refs(doc.blobs().map_err(invalid)?),
        children: refs(doc.children().map_err(invalid)?),
        doc,
        bytes,
    })
}

fn write_blob(
    app: &App,
    digest: &Digest,
    fill: impl FnOnce(&mut portcullis_cache::BlobWriter) -> Result<(), AirgapError>,
) -> Result<(), AirgapError> {
    let mut w = app.store.blob_writer(digest, None)?;
    fill(&mut w)?;
    w.commit()
        .map(|_| ())
        .map_err(|source| AirgapError::Commit {
            digest: digest.clone(),
            source,
        })
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
