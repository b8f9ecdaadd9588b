//! Where summaries reach clients: the referrers list of an image that passed names its bundle
//! artifact; its `sha256-<hex>.att` tag is the upstream's attestation manifest (if it has one
//! and it was admitted as evidence) with the summary's layer added; and both documents, and
//! the blobs portcullis made for them, are served by digest.
//!
//! Nothing here opens a door for upstream content: the upstream's `.att` goes through
//! [`gate::admit_evidence`] exactly as it would be served alone (refused, it is left out), and
//! the gate opens here only for blobs portcullis wrote itself, under their own digests.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use portcullis_cache::Digest;
use portcullis_policy::Verdict;

use super::forms::{self, Doc, OCI_MANIFEST};
use super::held::{self, Summary};
use super::Attester;
use crate::app::App;
use crate::body::{empty, full, ResponseBody};
use crate::content::referrers::{Referrer, ReferrersIndex};
use crate::content::{self, Accept};
use crate::error::ProxyError;
use crate::gate;
use crate::handlers::Outcome;
use crate::oci::cosign::{self, signature_tag_subject};
use crate::oci::Document;
use crate::route::{Reference, Target};

/// The referrers of `subject` with its summary's bundle artifact first (when it passed and a
/// verdict is held: listing referrers decides nothing).
pub fn referrers(
    app: &App,
    target: &Target,
    subject: &Digest,
    listed: Arc<ReferrersIndex>,
) -> Result<Arc<ReferrersIndex>, ProxyError> {
    let Some(attester) = app.attest.as_deref() else {
        return Ok(listed);
    };
    let Some(verdict) = gate::held_verdict(app, &target.name, subject) else {
        return Ok(listed);
    };
    if !gate::verified(&verdict) {
        return Ok(listed);
    }
    let Some(image) = app.store.manifest(subject)? else {
        return Ok(listed);
    };
    let summary = held::ensure(app, attester, target, subject, &verdict)?;
    let doc = bundle_doc(attester, subject, &image.media_type, &image.bytes, &summary)?;
    let digest = held::hold(app, attester, target, &doc)?;
    let ours = Referrer {
        media_type: OCI_MANIFEST.to_owned(),
        digest,
        size: doc.manifest.len() as u64,
        artifact_type: Some(forms::BUNDLE_V03.to_owned()),
        annotations: forms::bundle_annotations(&summary.time_verified)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    };
    app.metrics
        .summaries_served
        .get_or_create(&crate::metrics::FormLabel { form: "bundle" })
        .inc();
    let all = std::iter::once(ours)
        .chain(listed.manifests.iter().cloned())
        .collect();
    Ok(Arc::new(ReferrersIndex::new(all)))
}

/// The bundle artifact of `summary` for the image `subject`.
fn bundle_doc(
    attester: &Attester,
    subject: &Digest,
    media_type: &str,
    bytes: &Bytes,
    summary: &Summary,
) -> Result<Doc, ProxyError> {
    let envelope: serde_json::Value = serde_json::from_str(&summary.envelope)
        .map_err(|e| ProxyError::Internal(format!("a held summary: {e}")))?;
    let bundle = forms::bundle(&attester.key.hint, &envelope);
    Ok(forms::bundle_artifact(
        (subject, media_type, bytes.len() as u64),
        bundle,
        &summary.time_verified,
        summary.id(),
    ))
}

/// Serves `reference` if it is portcullis' own: the `.att` tag of an image that passed, or a
/// document made here, by digest. `None`: not ours, the handler goes on as without `[attest]`.
pub async fn manifest(
    app: &App,
    target: &Target,
    reference: &Reference,
    accept: &Accept,
    head: bool,
    outcome: &mut Outcome,
) -> Result<Option<Response<ResponseBody>>, ProxyError> {
    let Some(attester) = app.attest.as_deref() else {
        return Ok(None);
    };
    let doc = match reference {
        Reference::Tag(tag) => match attestation(app, attester, target, tag, accept).await? {
            Some(doc) => doc,
            None => return Ok(None),
        },
        Reference::Digest(d) => match held::doc(app, target, d)? {
            Some(doc) => {
                // Still the summary of a verdict that passed under this policy and key?
                let current = gate::held_verdict(app, &target.name, &doc.subject)
                    .filter(gate::verified)
                    .map(|v| held::ensure(app, attester, target, &doc.subject, &v))
                    .transpose()?;
                if current.is_none_or(|s| s.id() != doc.summary) {
                    return Err(ProxyError::ManifestUnknown(format!(
                        "{}@{d} is a verification summary that no longer holds",
                        target.name
                    )));
                }
                doc
            }
            None => return Ok(None),
        },
    };
    let digest = held::hold(app, attester, target, &doc)?;
    if matches!(reference, Reference::Tag(_)) {
        app.metrics
            .summaries_served
            .get_or_create(&crate::metrics::FormLabel { form: "att" })
            .inc();
    }
    outcome.verdict = Some("evidence");
    outcome.cache = "hit";
    let bytes = Bytes::from(doc.manifest);
    let len = bytes.len();
    let mut resp = Response::new(if head { empty() } else { full(bytes) });
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_MANIFEST));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("Docker-Content-Digest", v.clone());
        h.insert(header::ETAG, v);
    }
    Ok(Some(resp))
}

/// The `.att` manifest of the image `tag` names, with its summary, if the image passed.
async fn attestation(
    app: &App,
    attester: &Attester,
    target: &Target,
    tag: &str,
    accept: &Accept,
) -> Result<Option<Doc>, ProxyError> {
    let Some(subject) = signature_tag_subject(tag).filter(|_| tag.ends_with(".att")) else {
        return Ok(None);
    };
    if !accept.accepts(OCI_MANIFEST) {
        return Ok(None);
    }
    let Some(verdict) = decided(app, target, &subject).await? else {
        return Ok(None);
    };
    let summary = held::ensure(app, attester, target, &subject, &verdict)?;
    let theirs = upstream_layers(app, target, tag, accept).await?;
    forms::attestation(&subject, &theirs, summary.envelope.clone(), summary.id())
        .map(Some)
        .map_err(|e| ProxyError::Internal(format!("building {}:{tag}: {e}", target.name)))
}

/// The verdict on `subject` if it passed, decided now if need be (as a cosign tag requested
/// before its image costs the image's verdict): `None` for anything else, which the normal
/// path then serves or refuses as it would without `[attest]`.
async fn decided(
    app: &App,
    target: &Target,
    subject: &Digest,
) -> Result<Option<Verdict>, ProxyError> {
    match content::by_digest(app, target, subject, &Accept::default()).await {
        Ok(_) => {}
        Err(ProxyError::ManifestUnknown(_)) => return Ok(None),
        Err(e) => return Err(e),
    }
    let v = gate::verdict(app, target, subject).await?;
    Ok(gate::verified(&v).then(|| (*v).clone()))
}

/// The layers of the upstream's own `.att` for this tag, when it has one and it is admitted as
/// evidence (the checks it would pass to be served alone); none otherwise.
async fn upstream_layers(
    app: &App,
    target: &Target,
    tag: &str,
    accept: &Accept,
) -> Result<Vec<oci_spec::image::Descriptor>, ProxyError> {
    let (digest, m) = match content::resolve_tag(app, target, tag, accept).await {
        Ok((d, m, _)) => (d, m),
        Err(ProxyError::ManifestUnknown(_) | ProxyError::ManifestInvalid(_)) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let left_out = |why: &str| {
        tracing::warn!(name = %target.name, tag, %digest, why,
            "the upstream's attestations are left out of the .att served with the summary");
    };
    let doc = match Document::parse(&m.bytes, Some(&m.media_type)) {
        Ok(doc) => doc,
        Err(e) => {
            left_out(&e.to_string());
            return Ok(Vec::new());
        }
    };
    let Some(artifact) = cosign::evidence_artifact(&doc, Some(tag)) else {
        left_out("not verification material");
        return Ok(Vec::new());
    };
    match gate::admit_evidence(app, target, &digest, &artifact).await {
        Ok(()) => Ok(doc.layers().to_vec()),
        Err(ProxyError::Denied(why)) => {
            left_out(&why);
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}
