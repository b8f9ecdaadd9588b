//! The verification gate: nothing is served unless the policy proves it.
//!
//! For a manifest digest, find its cosign signature manifest (`sha256-<hex>.sig`) through the same
//! upstream client (so the artifacts are cached like any content), fetch each signature payload
//! by digest, and let the policy decide. Verdicts are cached under the policy's fingerprint; a
//! transient upstream failure is never cached. A verified index vouches for the manifests it
//! lists, and a served manifest opens the gate for the blobs it references, in that repository
//! only.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use portcullis_cache::{Digest, Manifest};
use portcullis_policy::{Decision, SignatureLayer, Verdict};
use serde::Deserialize;

use super::{manifests, Accept, Outcome};
use crate::app::App;
use crate::error::ProxyError;
use crate::route::Target;
use crate::upstream::{read_limited, status_error};

/// Signature manifests list at most this many layers we will look at.
const MAX_SIGNATURES: usize = 32;
/// A simple-signing payload is a few hundred bytes.
const MAX_PAYLOAD: usize = 256 * 1024;

pub(crate) const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
pub(crate) const ANN_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
pub(crate) const ANN_CERTIFICATE: &str = "dev.sigstore.cosign/certificate";
pub(crate) const ANN_CHAIN: &str = "dev.sigstore.cosign/chain";
pub(crate) const ANN_BUNDLE: &str = "dev.sigstore.cosign/bundle";

#[derive(Deserialize)]
pub(crate) struct SigManifest {
    #[serde(default)]
    pub(crate) layers: Vec<SigDescriptor>,
}

#[derive(Deserialize)]
pub(crate) struct SigDescriptor {
    #[serde(rename = "mediaType")]
    pub(crate) media_type: String,
    pub(crate) digest: String,
    pub(crate) size: u64,
    #[serde(default)]
    pub(crate) annotations: std::collections::HashMap<String, String>,
}

impl SigDescriptor {
    /// The signature layer this descriptor describes, given its payload.
    pub(crate) fn layer(&self, payload: Vec<u8>) -> Option<SignatureLayer> {
        if self.media_type != SIMPLE_SIGNING {
            return None;
        }
        Some(SignatureLayer {
            payload,
            signature: self.annotations.get(ANN_SIGNATURE)?.clone(),
            certificate: self.annotations.get(ANN_CERTIFICATE).cloned(),
            chain: self.annotations.get(ANN_CHAIN).cloned(),
            bundle: self.annotations.get(ANN_BUNDLE).cloned(),
        })
    }
}

/// Whether `tag` names a cosign artifact (`sha256-<hex>.sig` or `.att`): verification material,
/// served so that clients such as cosign can check signatures themselves.
pub fn is_signature_tag(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix("sha256-") else {
        return false;
    };
    let hex = rest
        .strip_suffix(".sig")
        .or_else(|| rest.strip_suffix(".att"));
    hex.is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether a manifest fetched by `tag` is a cosign signature or attestation artifact, served as
/// verification material without a signature of its own: the tag has the cosign form and every
/// layer is a simple-signing payload or a DSSE envelope, which no runtime would unpack. Anything
/// else under such a tag is an image like any other and goes through the gate.
pub fn is_signature_artifact(tag: &str, manifest: &[u8]) -> bool {
    if !is_signature_tag(tag) {
        return false;
    }
    let Ok(parsed) = serde_json::from_slice::<SigManifest>(manifest) else {
        return false;
    };
    !parsed.layers.is_empty()
        && parsed
            .layers
            .iter()
            .all(|l| l.media_type == SIMPLE_SIGNING || l.media_type == DSSE_ENVELOPE)
}

/// Decides on a manifest, from the verdict cache or by fetching its signatures.
pub async fn verdict(
    app: &App,
    target: &Target,
    digest: &Digest,
) -> Result<Arc<Verdict>, ProxyError> {
    let key = verdict_key(app, &target.name, digest);
    if let Some(v) = app.verdicts.get(&key) {
        return Ok(v);
    }
    if let Some(raw) = app.store.meta("verdict", &key)? {
        if let Ok(v) = serde_json::from_slice::<Verdict>(&raw) {
            let v = Arc::new(v);
            app.verdicts.insert(key, Arc::clone(&v));
            return Ok(v);
        }
    }
    let layers = if app.policy.rules_for(&target.name).is_empty() {
        Vec::new() // [policy] default decides; nothing to fetch
    } else {
        signatures(app, target, digest).await?
    };
    let v = Arc::new(
        app.policy
            .evaluate(&target.name, &digest.to_string(), &layers),
    );
    remember(app, key, &v)?;
    Ok(v)
}

/// Records a verdict made elsewhere (an import) as if this instance had made it.
pub fn store_verdict(
    app: &App,
    name: &str,
    digest: &Digest,
    verdict: Verdict,
) -> Result<(), ProxyError> {
    remember(app, verdict_key(app, name, digest), &Arc::new(verdict))
}

/// The verdict held for `name@digest` under the current policy, if any.
pub fn held_verdict(app: &App, name: &str, digest: &Digest) -> Option<Verdict> {
    let raw = app
        .store
        .meta("verdict", &verdict_key(app, name, digest))
        .ok()??;
    serde_json::from_slice(&raw).ok()
}

fn verdict_key(app: &App, name: &str, digest: &Digest) -> String {
    format!("{}\0{name}\0{digest}", app.policy.fingerprint())
}

fn remember(app: &App, key: String, v: &Arc<Verdict>) -> Result<(), ProxyError> {
    let raw = serde_json::to_vec(&**v).map_err(|e| ProxyError::Internal(e.to_string()))?;
    app.store.put_meta("verdict", &key, &raw)?;
    app.verdicts.insert(key, Arc::clone(v));
    Ok(())
}

/// Applies a verdict: denies, warns, or records; then opens the gate for what the manifest
/// references, and lets a verified index vouch for its children.
pub fn enforce(
    app: &App,
    target: &Target,
    digest: &Digest,
    manifest: &Manifest,
    verdict: &Verdict,
) -> Result<(), ProxyError> {
    let audited = verdict
        .rules
        .iter()
        .any(|r| !r.passed && r.mode == portcullis_policy::Mode::Audit);
    count(app, verdict);
    match verdict.decision {
        Decision::Deny => {
            tracing::warn!(name = %target.name, %digest, verdict = %verdict.message, "denied");
            return Err(ProxyError::Denied(verdict.message.clone()));
        }
        Decision::Warn => {
            tracing::warn!(name = %target.name, %digest, verdict = %verdict.message, "served unverified")
        }
        Decision::Allow if audited => {
            tracing::info!(name = %target.name, %digest, verdict = %verdict.message, "audit")
        }
        Decision::Allow => {
            tracing::debug!(name = %target.name, %digest, verdict = %verdict.message, "verified")
        }
    }
    // Gates and vouchers are written once per manifest and policy, not on every request.
    let key = verdict_key(app, &target.name, digest);
    if app.gated.contains_key(&key) {
        return Ok(());
    }
    open_gate(app, target, &manifest.refs)?;
    let verified = verdict.decision == Decision::Allow && !verdict.rules.is_empty() && !audited;
    if verified {
        for child in &manifest.refs {
            let vouched = Verdict {
                digest: child.to_string(),
                message: format!(
                    "{}@{child} vouched for by the verified index {digest}",
                    target.name
                ),
                ..verdict.clone()
            };
            remember(
                app,
                verdict_key(app, &target.name, child),
                &Arc::new(vouched),
            )?;
        }
    }
    app.gated.insert(key, ());
    Ok(())
}

fn count(app: &App, verdict: &Verdict) {
    use crate::metrics::VerdictLabels;
    use portcullis_policy::Mode;
    if verdict.rules.is_empty() {
        let outcome = match verdict.decision {
            Decision::Allow => "allow",
            Decision::Warn => "warn",
            Decision::Deny => "deny",
        };
        let labels = VerdictLabels {
            rule: "default".into(),
            outcome,
        };
        app.metrics.verdicts.get_or_create(&labels).inc();
    }
    for r in &verdict.rules {
        let outcome = match (r.passed, r.mode) {
            (true, _) | (false, Mode::Audit) => "allow",
            (false, Mode::Warn) => "warn",
            (false, Mode::Enforce) => "deny",
        };
        let labels = VerdictLabels {
            rule: r.rule.clone(),
            outcome,
        };
        app.metrics.verdicts.get_or_create(&labels).inc();
    }
}

/// Lets the blobs `refs` be served for this repository under this policy.
pub fn open_gate(app: &App, target: &Target, refs: &[Digest]) -> Result<(), ProxyError> {
    for r in refs {
        app.store.put_meta("gate", &gate_key(app, target, r), b"")?;
    }
    Ok(())
}

fn gate_key(app: &App, target: &Target, digest: &Digest) -> String {
    format!("{}\0{}\0{digest}", app.policy.fingerprint(), target.name)
}

/// Blob gating: a blob is served only if a manifest that passed the gate in this repository
/// references it.
pub fn check_blob(app: &App, target: &Target, digest: &Digest) -> Result<(), ProxyError> {
    if app
        .store
        .meta("gate", &gate_key(app, target, digest))?
        .is_some()
    {
        return Ok(());
    }
    Err(ProxyError::Denied(format!(
        "blob {digest} is not referenced by any manifest of {} that passed verification; pull the image by tag or digest through portcullis first",
        target.name
    )))
}

/// The cosign signature layers for `digest`: the `.sig` manifest (cached like any manifest)
/// and each payload, checked against its digest.
async fn signatures(
    app: &App,
    target: &Target,
    digest: &Digest,
) -> Result<Vec<SignatureLayer>, ProxyError> {
    let tag = format!("{}.sig", digest.tag_form());
    let mut outcome = Outcome::default();
    let sig =
        match manifests::resolve_tag(app, target, &tag, &Accept::default(), &mut outcome).await {
            Ok((_, m)) => m,
            Err(ProxyError::ManifestUnknown(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
    let parsed: SigManifest = serde_json::from_slice(&sig.bytes).map_err(|e| {
        ProxyError::BadUpstream(format!("{}:{tag} is not a manifest: {e}", target.name))
    })?;
    // Every blob of the signature manifest, fetched at once: the payloads to verify, and the
    // config too, so that the whole artifact is cached for export across an air gap. One round
    // trip after the manifest's, however many signatures.
    let wanted: Vec<&SigDescriptor> = parsed
        .layers
        .iter()
        .filter(|d| d.media_type == SIMPLE_SIGNING && d.size <= MAX_PAYLOAD as u64)
        .take(MAX_SIGNATURES)
        .collect();
    let fetched = futures_util::future::join_all(
        sig.refs
            .iter()
            .take(MAX_SIGNATURES + 1)
            .map(|r| async move { (r.clone(), payload(app, target, r).await) }),
    )
    .await;
    let mut blobs = std::collections::HashMap::new();
    for (d, result) in fetched {
        blobs.insert(d, result?);
    }
    let layers = wanted
        .iter()
        .filter_map(|d| {
            let bytes = blobs.get(&d.digest.parse::<Digest>().ok()?)?;
            d.layer(bytes.to_vec())
        })
        .collect();
    open_gate(app, target, &sig.refs)?;
    Ok(layers)
}

/// A small blob, from the cache or the upstream, checked against its digest and cached.
async fn payload(app: &App, target: &Target, digest: &Digest) -> Result<Bytes, ProxyError> {
    if let Some(portcullis_cache::Blob::Memory(bytes)) = app.store.blob(digest)? {
        return Ok(bytes);
    }
    let up = &target.upstream;
    let what = format!("signature payload {}@{digest}", target.name);
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

#[cfg(test)]
mod tests {
    use super::is_signature_tag;

    #[test]
    fn recognises_cosign_tags() {
        let hex = "a".repeat(64);
        assert!(is_signature_tag(&format!("sha256-{hex}.sig")));
        assert!(is_signature_tag(&format!("sha256-{hex}.att")));
        assert!(!is_signature_tag(&format!("sha256-{hex}")));
        assert!(!is_signature_tag("sha256-abc.sig"));
        assert!(!is_signature_tag("latest"));
    }
}
