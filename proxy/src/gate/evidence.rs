//! The evidence for one manifest, fetched once and handed to the policy whole: the legacy cosign
//! tags (`sha256-<hex>.sig`, `.att`) and the Sigstore bundles among its referrers (the referrers
//! API, or the `sha256-<hex>` tag where there is none), all at once. Everything goes through the
//! upstream client and is cached like any content, so an air-gapped copy can re-verify; every
//! blob is checked against its digest before the policy sees it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::join_all;

use portcullis_cache::Digest;
use portcullis_policy::{AttestationLayer, Evidence, SignatureLayer, BUNDLE_MEDIA_TYPE_PREFIX};

use crate::app::App;
use crate::content::{self, referrers, Accept};
use crate::error::ProxyError;
use crate::oci::cosign::{self, EvidenceArtifact, Material, MAX_EVIDENCE_BLOB};
use crate::oci::{Document, Reference};
use crate::route::Target;

/// At most this many layers of one artifact, and this many bundles of one subject, are looked at.
const MAX_ITEMS: usize = 32;
/// At most this many bytes of evidence blobs (by their declared sizes) are read for one verdict,
/// and for one artifact served: what an upstream can make portcullis hold in memory with one
/// request.
pub const MAX_EVIDENCE_BYTES: u64 = 16 * 1024 * 1024;

/// What is left of one verdict's evidence bytes: fetched (each distinct digest once), and handed
/// to the policy (a blob named by many layers is handed once per layer, so that counts too).
struct Budget {
    fetched: AtomicU64,
    handed: AtomicU64,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            fetched: AtomicU64::new(MAX_EVIDENCE_BYTES),
            handed: AtomicU64::new(MAX_EVIDENCE_BYTES),
        }
    }

    /// Takes `n` bytes to fetch, if they are left.
    fn take(&self, n: u64) -> bool {
        Self::draw(&self.fetched, n)
    }

    /// Takes `n` bytes to hand to the policy, if they are left.
    fn hand(&self, n: usize) -> bool {
        Self::draw(&self.handed, n as u64)
    }

    fn draw(left: &AtomicU64, n: u64) -> bool {
        left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(n))
            .is_ok()
    }
}

/// Everything found for `digest`, fetched concurrently. Gathering opens no gate: evidence is
/// served only once its subject has passed (see `gate::admit_evidence`).
pub async fn gather(app: &App, target: &Target, digest: &Digest) -> Result<Evidence, ProxyError> {
    let budget = Budget::new();
    let (sig, att, bundles) = tokio::join!(
        legacy(app, target, digest, "sig", &budget),
        legacy(app, target, digest, "att", &budget),
        bundles(app, target, digest, &budget),
    );
    let (signatures, _) = sig?;
    let (_, attestations) = att?;
    Ok(Evidence {
        signatures,
        attestations,
        bundles: bundles?,
    })
}

/// The layers of the cosign artifact tagged `sha256-<hex>.<suffix>`, if there is one and it is
/// verification material; anything else under that tag is no evidence.
async fn legacy(
    app: &App,
    target: &Target,
    digest: &Digest,
    suffix: &str,
    budget: &Budget,
) -> Result<(Vec<SignatureLayer>, Vec<AttestationLayer>), ProxyError> {
    let tag = format!("{}.{suffix}", digest.tag_form());
    let m = match content::resolve_tag(app, target, &tag, &Accept::default()).await {
        Ok((_, m, _)) => m,
        Err(ProxyError::ManifestUnknown(_)) => return Ok(Default::default()),
        Err(ProxyError::ManifestInvalid(why)) => {
            tracing::warn!(name = %target.name, tag, why, "ignoring an unreadable signature artifact");
            return Ok(Default::default());
        }
        Err(e) => return Err(e),
    };
    let Some((doc, artifact)) = artifact_of(&m, Some(&tag), target) else {
        return Ok(Default::default());
    };
    // Every blob, the config too, so that the whole artifact is cached for export.
    let blobs = fetch_all(
        app,
        target,
        &artifact,
        artifact.blobs.iter().take(MAX_ITEMS + 1),
        budget,
    )
    .await?;
    let mut sigs = Vec::new();
    let mut atts = Vec::new();
    for (d, (r, material)) in doc.layers().iter().zip(artifact.blobs.iter().skip(1)) {
        let Some(bytes) = blobs.get(&r.digest) else {
            continue;
        };
        if !handed(budget, bytes, target, r) {
            break;
        }
        match material {
            Material::SimpleSigning => sigs.extend(cosign::signature_layer(d, bytes.to_vec())),
            Material::Dsse => atts.extend(cosign::attestation_layer(d, bytes.to_vec())),
            Material::Bundle | Material::Config => {}
        }
    }
    Ok((sigs, atts))
}

/// Whether `bytes` fit what is left to hand to the policy (each copy counts), with a log line if not.
fn handed(budget: &Budget, bytes: &Bytes, target: &Target, r: &Reference) -> bool {
    let fits = budget.hand(bytes.len());
    if !fits {
        tracing::warn!(name = %target.name, digest = %r.digest,
            "evidence left out: over the evidence byte budget");
    }
    fits
}

/// The evidence artifact a manifest is, or a log line saying why it is none.
fn artifact_of(
    m: &portcullis_cache::Manifest,
    tag: Option<&str>,
    target: &Target,
) -> Option<(Document, EvidenceArtifact)> {
    let doc = match Document::parse(&m.bytes, Some(&m.media_type)) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::warn!(name = %target.name, ?tag, error = %e, "ignoring an unreadable signature artifact");
            return None;
        }
    };
    let Some(artifact) = cosign::evidence_artifact(&doc, tag) else {
        tracing::warn!(name = %target.name, ?tag, "ignoring a signature artifact with layers that are not verification material");
        return None;
    };
    Some((doc, artifact))
}

/// The Sigstore bundles among `digest`'s referrers: each artifact manifest fetched by digest,
/// and its bundle layers.
async fn bundles(
    app: &App,
    target: &Target,
    digest: &Digest,
    budget: &Budget,
) -> Result<Vec<Vec<u8>>, ProxyError> {
    let (index, _) = referrers::referrers(app, target, digest).await?;
    let wanted = index
        .manifests
        .iter()
        .filter(|r| {
            r.artifact_type
                .as_deref()
                .is_some_and(|t| t.starts_with(BUNDLE_MEDIA_TYPE_PREFIX))
        })
        .take(MAX_ITEMS);
    let found = join_all(wanted.map(|r| one_bundle(app, target, digest, &r.digest, budget))).await;
    let mut out = Vec::new();
    for f in found {
        out.extend(f?);
    }
    Ok(out)
}

async fn one_bundle(
    app: &App,
    target: &Target,
    subject: &Digest,
    artifact: &Digest,
    budget: &Budget,
) -> Result<Vec<Vec<u8>>, ProxyError> {
    let m = match content::by_digest(app, target, artifact, &Accept::default()).await {
        Ok((m, _)) => m,
        Err(ProxyError::ManifestInvalid(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let Some((_, found)) = artifact_of(&m, None, target) else {
        return Ok(Vec::new());
    };
    if &found.subject != subject {
        tracing::warn!(name = %target.name, %artifact, %subject, "ignoring a referrer whose subject is another manifest");
        return Ok(Vec::new());
    }
    // Every blob, the config too, so that the whole artifact is cached for export.
    let blobs = fetch_all(
        app,
        target,
        &found,
        found.blobs.iter().take(MAX_ITEMS + 1),
        budget,
    )
    .await?;
    Ok(found
        .blobs
        .iter()
        .filter(|(_, m)| *m == Material::Bundle)
        .filter_map(|(r, _)| blobs.get(&r.digest).map(|b| (r, b)))
        .take_while(|(r, b)| handed(budget, b, target, r))
        .map(|(_, b)| b.to_vec())
        .collect())
}

/// Fetches each distinct blob of an evidence artifact that is small enough to be evidence and
/// fits what is left of the verdict's budget (by its declared size, before any fetch), and keeps
/// those that are what their descriptors say. Anything else is logged and left out.
async fn fetch_all<'a>(
    app: &App,
    target: &Target,
    artifact: &EvidenceArtifact,
    blobs: impl Iterator<Item = &'a (Reference, Material)>,
    budget: &Budget,
) -> Result<HashMap<Digest, Bytes>, ProxyError> {
    let mut seen = HashSet::new();
    let wanted: Vec<&(Reference, Material)> = blobs
        .filter(|(r, _)| seen.insert(r.digest.clone()))
        .filter(|(r, _)| {
            let fits = r.size <= MAX_EVIDENCE_BLOB && budget.take(r.size);
            if !fits {
                tracing::warn!(name = %target.name, digest = %r.digest, size = r.size,
                    "evidence blob left out: over the evidence byte budget");
            }
            fits
        })
        .collect();
    let fetched = join_all(
        wanted
            .into_iter()
            .map(|(r, m)| async move { (r, payload(app, target, artifact, r, *m).await) }),
    )
    .await;
    let mut out = HashMap::new();
    for (r, result) in fetched {
        match result {
            Ok(bytes) => {
                out.insert(r.digest.clone(), bytes);
            }
            Err(e @ (ProxyError::Denied(_) | ProxyError::TooLarge(_))) => {
                tracing::warn!(name = %target.name, digest = %r.digest, error = %e, "evidence blob ignored")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Every blob of an evidence artifact, fetched and checked: the references the gate may open.
/// Any blob that is too large or not what it claims refuses the whole artifact.
pub async fn material(
    app: &App,
    target: &Target,
    artifact: &EvidenceArtifact,
) -> Result<Vec<Reference>, ProxyError> {
    let blobs = &artifact.blobs;
    if blobs.len() > MAX_ITEMS + 1 {
        return Err(ProxyError::Denied(format!(
            "{}: a signature artifact with {} blobs; verification material has at most {}",
            target.name,
            blobs.len(),
            MAX_ITEMS + 1
        )));
    }
    // Saturating: declared sizes are the upstream's, and could be made to wrap.
    let declared = blobs
        .iter()
        .fold(0u64, |sum, (r, _)| sum.saturating_add(r.size));
    if declared > MAX_EVIDENCE_BYTES {
        return Err(ProxyError::Denied(format!(
            "{}: a signature artifact of {declared} bytes; verification material has at most {MAX_EVIDENCE_BYTES}",
            target.name
        )));
    }
    let fetched = join_all(
        blobs
            .iter()
            .map(|(r, m)| payload(app, target, artifact, r, *m)),
    )
    .await;
    for result in fetched {
        result?;
    }
    Ok(blobs.iter().map(|(r, _)| r.clone()).collect())
}

/// A blob of an evidence artifact: at most [`MAX_EVIDENCE_BLOB`] bytes, of its declared size,
/// hash-checked, and parsed as `material` before it is cached.
async fn payload(
    app: &App,
    target: &Target,
    artifact: &EvidenceArtifact,
    r: &Reference,
    material: Material,
) -> Result<Bytes, ProxyError> {
    let check = |bytes: &[u8]| {
        artifact.check(material, bytes).map_err(|why| {
            ProxyError::Denied(format!(
                "signature artifact blob {}@{} is listed as {material:?} but is not: {why}",
                target.name, r.digest
            ))
        })
    };
    let (bytes, _) =
        content::blobs::small(app, target, &r.digest, r.size, MAX_EVIDENCE_BLOB, check).await?;
    Ok(bytes)
}
