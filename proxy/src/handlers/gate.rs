//! The verification gate: nothing is served unless the policy proves it.
//!
//! For a manifest digest, gather its evidence (`evidence.rs`: cosign `.sig`/`.att` tags and
//! Sigstore bundles among its referrers, fetched through the same upstream client and cached like
//! any content), and let the policy decide; under `verify_base`, the base image too. Verdicts are cached under the policy's fingerprint; a
//! transient upstream failure is never cached. A verified index vouches for the manifests it
//! lists, and a served manifest opens the gate for the blobs it references, in that repository
//! only.

use std::sync::Arc;

use portcullis_cache::{Digest, Manifest};
use portcullis_policy::{AttestationLayer, Decision, Evidence, SignatureLayer, Verdict};
use serde::Deserialize;

use super::{base, evidence};
use crate::app::App;
use crate::error::ProxyError;
use crate::route::Target;

pub(crate) const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub(crate) const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
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

impl SigDescriptor {
    /// The attestation layer this descriptor describes, given its DSSE envelope.
    pub(crate) fn attestation(&self, envelope: Vec<u8>) -> Option<AttestationLayer> {
        (self.media_type == DSSE_ENVELOPE).then(|| AttestationLayer {
            envelope,
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

/// Whether a manifest fetched by digest is a referrer artifact that carries only verification
/// material, served without a signature of its own as `.sig` artifacts are: it has a `subject`,
/// no child manifests, and one or more layers that are all Sigstore bundles, DSSE envelopes or
/// simple-signing payloads, which no runtime would unpack. Anything with another layer type is
/// an image like any other and goes through the gate.
pub fn is_referrer_artifact(manifest: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Subject {
        #[serde(rename = "digest")]
        _digest: Digest,
    }
    #[derive(Deserialize)]
    struct Artifact {
        subject: Option<Subject>,
        #[serde(default)]
        layers: Vec<SigDescriptor>,
        #[serde(default)]
        manifests: Vec<serde::de::IgnoredAny>,
    }
    let Ok(a) = serde_json::from_slice::<Artifact>(manifest) else {
        return false;
    };
    a.subject.is_some()
        && a.manifests.is_empty()
        && !a.layers.is_empty()
        && a.layers.iter().all(|l| {
            let mt = l.media_type.as_str();
            mt == SIMPLE_SIGNING
                || mt == DSSE_ENVELOPE
                || mt.starts_with(portcullis_policy::BUNDLE_MEDIA_TYPE_PREFIX)
        })
}

/// Decides on a manifest, from the verdict cache or by fetching its evidence.
pub async fn verdict(
    app: &App,
    target: &Target,
    digest: &Digest,
) -> Result<Arc<Verdict>, ProxyError> {
    verdict_in(app, target, digest, &[]).await
}

/// [`verdict`], for a manifest reached through the base-image `chain` (`name@digest`s).
pub(crate) fn verdict_in<'a>(
    app: &'a App,
    target: &'a Target,
    digest: &'a Digest,
    chain: &'a [String],
) -> futures_util::future::BoxFuture<'a, Result<Arc<Verdict>, ProxyError>> {
    Box::pin(decide(app, target, digest, chain))
}

async fn decide(
    app: &App,
    target: &Target,
    digest: &Digest,
    chain: &[String],
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
    let evidence = if app.policy.rules_for(&target.name).is_empty() {
        Evidence::default() // [policy] default decides; nothing to fetch
    } else {
        evidence::gather(app, target, digest).await?
    };
    let mut v = app
        .policy
        .evaluate(&target.name, &digest.to_string(), &evidence);
    if let Some(mode) = app.policy.verify_base(&target.name) {
        base::check(app, target, digest, &mut v, mode, chain).await?;
    }
    let v = Arc::new(v);
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

#[cfg(test)]
mod tests {
    use super::{is_referrer_artifact, is_signature_tag};

    #[test]
    fn recognises_cosign_tags() {
        let hex = "a".repeat(64);
        assert!(is_signature_tag(&format!("sha256-{hex}.sig")));
        assert!(is_signature_tag(&format!("sha256-{hex}.att")));
        assert!(!is_signature_tag(&format!("sha256-{hex}")));
        assert!(!is_signature_tag("sha256-abc.sig"));
        assert!(!is_signature_tag("latest"));
    }

    #[test]
    fn referrer_artifacts_are_only_verification_layers_with_a_subject() {
        let d = portcullis_cache::Digest::of(b"");
        let artifact = |layer: &str, subject: bool| {
            let mut m = serde_json::json!({
                "schemaVersion": 2,
                "layers": [{ "mediaType": layer, "digest": d, "size": 0 }],
            });
            if subject {
                m["subject"] = serde_json::json!({ "mediaType": "m", "digest": d, "size": 0 });
            }
            serde_json::to_vec(&m).unwrap()
        };
        let bundle = "application/vnd.dev.sigstore.bundle.v0.3+json";
        assert!(is_referrer_artifact(&artifact(bundle, true)));
        assert!(!is_referrer_artifact(&artifact(bundle, false)));
        let runnable = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert!(!is_referrer_artifact(&artifact(runnable, true)));
    }
}
