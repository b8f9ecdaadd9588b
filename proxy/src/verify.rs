//! `portcullis verify <image-ref>`: resolve, fetch the signatures, evaluate the policy, and say
//! why. The same code path as a pull. Connected, it uses a throw-away cache so that it can run
//! beside a serving instance; offline, there is nothing to fetch, so it answers from the
//! configured cache (what was imported; stop the server first, the cache is single-process).

use portcullis_cache::DigestError;
use portcullis_policy::{Decision, NameDecision, Verdict};

use crate::app::{App, AppError};
use crate::config::Config;
use crate::content::{self, Accept};
use crate::error::ProxyError;
use crate::gate;
use crate::route::{parse_image_ref, Reference};

/// A failure that is no verdict.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("image reference {image:?}: {source}")]
    Reference {
        image: String,
        #[source]
        source: DigestError,
    },
    /// The name cannot be routed, the upstream is down, the image is unknown.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// Evaluates the policy for `image`. `Err` for a failure that is no verdict (bad reference,
/// upstream down, unknown image).
pub async fn verify(mut config: Config, image: &str) -> Result<Verdict, VerifyError> {
    if config.server.offline {
        return run(config, image).await;
    }
    let _scratch = crate::app::ScratchCache::new(&mut config, "verify");
    run(config, image).await
}

async fn run(config: Config, image: &str) -> Result<Verdict, VerifyError> {
    let app = App::new(config)?;
    let (name, reference) = parse_image_ref(image).map_err(|source| VerifyError::Reference {
        image: image.to_owned(),
        source,
    })?;
    let target = app.router.route(&name, None)?;
    if let NameDecision::Refused(why) = app.policy.names.check(&target.name) {
        return Ok(Verdict {
            name: target.name,
            digest: reference.to_string(),
            decision: Decision::Deny,
            rules: Vec::new(),
            message: why,
            attestations: Vec::new(),
            base: None,
        });
    }
    let accept = Accept::default();
    let resolved = match &reference {
        Reference::Tag(tag) => content::resolve_tag(&app, &target, tag, &accept)
            .await
            .map(|(d, _, _)| d),
        Reference::Digest(d) => content::by_digest(&app, &target, d, &accept)
            .await
            .map(|_| d.clone()),
    };
    let digest = match resolved {
        Ok(d) => d,
        // Offline, what is not held would not be served: that is a verdict.
        Err(ProxyError::ManifestUnknown(why)) if app.offline() => {
            return Ok(Verdict {
                name: target.name,
                digest: reference.to_string(),
                decision: Decision::Deny,
                rules: Vec::new(),
                message: why,
                attestations: Vec::new(),
                base: None,
            })
        }
        Err(e) => return Err(e.into()),
    };
    // Decided afresh from the evidence (held, or fetched), so that every reason is there.
    let verdict = gate::redecide(&app, &target, &digest, None).await?;
    Ok((*verdict).clone())
}
