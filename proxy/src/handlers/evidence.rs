//! The evidence for one manifest, fetched once and handed to the policy whole: the legacy cosign
//! tags (`sha256-<hex>.sig`, `.att`) and the Sigstore bundles among its referrers (the referrers
//! API, or the `sha256-<hex>` tag where there is none), all at once. Everything goes through the
//! upstream client and is cached like any content, so an air-gapped copy can re-verify; every
//! blob is checked against its digest before the policy sees it.

use bytes::Bytes;
use futures_util::future::join_all;
use http::Method;
use std::io::Read as _;

use portcullis_cache::{Blob, Digest};
use portcullis_policy::{AttestationLayer, Evidence, SignatureLayer, BUNDLE_MEDIA_TYPE_PREFIX};

use super::gate::{open_gate, SigManifest, DSSE_ENVELOPE, SIMPLE_SIGNING};
use super::{manifests, referrers, Accept, Outcome};
use crate::app::App;
use crate::error::ProxyError;
use crate::route::Target;
use crate::upstream::{read_limited, status_error};

/// At most this many layers of one artifact, and this many bundles of one subject, are looked at.
const MAX_ITEMS: usize = 32;
/// A signature payload, envelope or bundle is a few kilobytes; an SBOM attestation can be more.
const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// Everything found for `digest`, fetched concurrently.
pub async fn gather(app: &App, target: &Target, digest: &Digest) -> Result<Evidence, ProxyError> {
    let (sig, att, bundles) = tokio::join!(
        legacy(app, target, digest, "sig"),
        legacy(app, target, digest, "att"),
        bundles(app, target, digest),
    );
    let (signatures, _) = sig?;
    let (_, attestations) = att?;
    Ok(Evidence {
        signatures,
        attestations,
        bundles: bundles?,
    })
}

/// The layers of the cosign artifact tagged `sha256-<hex>.<suffix>`, if there is one.
async fn legacy(
    app: &App,
    target: &Target,
    digest: &Digest,
    suffix: &str,
) -> Result<(Vec<SignatureLayer>, Vec<AttestationLayer>), ProxyError> {
    let tag = format!("{}.{suffix}", digest.tag_form());
    let mut outcome = Outcome::default();
    let m = match manifests::resolve_tag(app, target, &tag, &Accept::default(), &mut outcome).await
    {
        Ok((_, m)) => m,
        Err(ProxyError::ManifestUnknown(_)) => return Ok(Default::default()),
        Err(e) => return Err(e),
    };
    let parsed = parse(&m.bytes, &target.name, &tag)?;
    // Every blob, the config too, so that the whole artifact is cached for export.
    let blobs = fetch_all(app, target, m.refs.iter().take(MAX_ITEMS + 1)).await?;
    open_gate(app, target, &m.refs)?;
    let mut sigs = Vec::new();
    let mut atts = Vec::new();
    for d in parsed
        .layers
        .iter()
        .filter(|d| d.size <= MAX_PAYLOAD as u64)
        .take(MAX_ITEMS)
    {
        let Some(bytes) = d.digest.parse().ok().and_then(|k: Digest| blobs.get(&k)) else {
            continue;
        };
        match d.media_type.as_str() {
            SIMPLE_SIGNING => sigs.extend(d.layer(bytes.to_vec())),
            DSSE_ENVELOPE => atts.extend(d.attestation(bytes.to_vec())),
            _ => {}
        }
    }
    Ok((sigs, atts))
}

/// The Sigstore bundles among `digest`'s referrers: each artifact manifest fetched by digest,
/// and its bundle layers.
async fn bundles(app: &App, target: &Target, digest: &Digest) -> Result<Vec<Vec<u8>>, ProxyError> {
    let index = referrers::referrers(app, target, digest).await?;
    let wanted = index
        .manifests
        .iter()
        .filter(|r| {
            r.artifact_type
                .as_deref()
                .is_some_and(|t| t.starts_with(BUNDLE_MEDIA_TYPE_PREFIX))
        })
        .take(MAX_ITEMS);
    let found = join_all(wanted.map(|r| one_bundle(app, target, &r.digest))).await;
    let mut out = Vec::new();
    for f in found {
        out.extend(f?);
    }
    Ok(out)
}

async fn one_bundle(
    app: &App,
    target: &Target,
    artifact: &Digest,
) -> Result<Vec<Vec<u8>>, ProxyError> {
    let mut outcome = Outcome::default();
    let m = manifests::by_digest(app, target, artifact, &Accept::default(), &mut outcome).await?;
    let parsed = parse(&m.bytes, &target.name, &artifact.to_string())?;
    let layers: Vec<Digest> = parsed
        .layers
        .iter()
        .filter(|d| d.media_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX))
        .filter(|d| d.size <= MAX_PAYLOAD as u64)
        .filter_map(|d| d.digest.parse().ok())
        .take(MAX_ITEMS)
        .collect();
    let blobs = fetch_all(app, target, layers.iter()).await?;
    open_gate(app, target, &m.refs)?;
    Ok(layers
        .iter()
        .filter_map(|d| blobs.get(d).map(|b| b.to_vec()))
        .collect())
}

fn parse(bytes: &[u8], name: &str, what: &str) -> Result<SigManifest, ProxyError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ProxyError::BadUpstream(format!("{name}:{what} is not a manifest: {e}")))
}

async fn fetch_all<'a>(
    app: &App,
    target: &Target,
    digests: impl Iterator<Item = &'a Digest>,
) -> Result<std::collections::HashMap<Digest, Bytes>, ProxyError> {
    let fetched =
        join_all(digests.map(|d| async move { (d.clone(), payload(app, target, d).await) })).await;
    fetched.into_iter().map(|(d, r)| Ok((d, r?))).collect()
}

/// A small blob, from the cache or the upstream, checked against its digest and cached.
async fn payload(app: &App, target: &Target, digest: &Digest) -> Result<Bytes, ProxyError> {
    match app.store.blob(digest)? {
        Some(Blob::Memory(bytes)) => return Ok(bytes),
        Some(Blob::File { mut file, size }) if size <= MAX_PAYLOAD as u64 => {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf)
                .map_err(|e| ProxyError::Internal(format!("reading cached {digest}: {e}")))?;
            return Ok(buf.into());
        }
        _ => {}
    }
    let up = &target.upstream;
    let what = format!("signature artifact {}@{digest}", target.name);
    let resp = up
        .send(Method::GET, &target.repo, &format!("blobs/{digest}"), None)
        .await?;
    if !resp.status().is_success() {
        return Err(status_error(&up.name, resp.status(), &what, || {
            ProxyError::BadUpstream(format!("{what} is listed but missing upstream"))
        }));
    }
    let bytes = read_limited(resp.into_body(), MAX_PAYLOAD, up.read_timeout).await?;
    let actual = Digest::of(&bytes);
    if &actual != digest {
        return Err(ProxyError::BadUpstream(format!(
            "{what}: the bytes hash to {actual}; nothing was cached"
        )));
    }
    let mut w = app.store.blob_writer(digest, Some(bytes.len() as u64))?;
    w.write(bytes.clone())?;
    w.commit()?;
    app.store.link(&target.name, digest)?;
    Ok(bytes)
}
