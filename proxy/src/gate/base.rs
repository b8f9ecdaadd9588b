//! `verify_base`: an image built on another (`org.opencontainers.image.base.name` and
//! `org.opencontainers.image.base.digest` annotations) passes only if its base passes its own
//! rules too, recursively. A chain longer than [`MAX_DEPTH`] or one that comes back on itself is
//! denied; a base that cannot be found is denied; an upstream that is down is an error (no
//! verdict is cached).

use std::collections::HashMap;

use portcullis_cache::Digest;
use portcullis_policy::{Mode, NameDecision, Verdict};
use serde::Deserialize;

use crate::app::App;
use crate::content::{self, Accept};
use crate::error::ProxyError;
use crate::route::{parse_digest, Target};

/// Base images followed at most this deep.
pub const MAX_DEPTH: usize = 4;
const ANN_BASE_NAME: &str = "org.opencontainers.image.base.name";
const ANN_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

#[derive(Deserialize)]
struct Annotated {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The base image a manifest names, if it names one.
fn base_of(manifest: &[u8]) -> Option<(String, String)> {
    let mut a = serde_json::from_slice::<Annotated>(manifest)
        .ok()?
        .annotations;
    Some((a.remove(ANN_BASE_NAME)?, a.remove(ANN_BASE_DIGEST)?))
}

/// Checks the base image of `target@digest` (if it names one) and folds its verdict into `v`.
pub async fn check(
    app: &App,
    target: &Target,
    digest: &Digest,
    bytes: Option<&[u8]>,
    v: &mut Verdict,
    mode: Mode,
    chain: &[String],
) -> Result<(), ProxyError> {
    // The manifest itself, never "none held, so no base": a base must not be skipped.
    let held;
    let bytes = match bytes {
        Some(b) => b,
        None => {
            held = content::by_digest(app, target, digest, &Accept::default())
                .await?
                .0;
            &held.bytes[..]
        }
    };
    let Some((name, base_digest)) = base_of(bytes) else {
        return Ok(());
    };
    let mut chain = chain.to_vec();
    chain.push(format!("{}@{digest}", target.name));
    let base = match base_verdict(app, &name, &base_digest, &chain).await {
        Ok(b) => b,
        Err(ProxyError::Unavailable(e)) => return Err(ProxyError::Unavailable(e)),
        Err(e) => Verdict::denied(
            &name,
            &base_digest,
            format!("base image {name}@{base_digest}: {e}"),
        ),
    };
    v.with_base(base, mode);
    Ok(())
}

async fn base_verdict(
    app: &App,
    name: &str,
    digest: &str,
    chain: &[String],
) -> Result<Verdict, ProxyError> {
    let (name, _) = crate::route::parse_image_ref(name)
        .map_err(|e| ProxyError::NameInvalid(name.to_owned(), e.to_string()))?;
    let digest = parse_digest(digest)?;
    let target = app.router.route(&name, None)?;
    let here = format!("{}@{digest}", target.name);
    let deny = |why: String| Ok(Verdict::denied(&target.name, &digest.to_string(), why));
    if chain.contains(&here) {
        return deny(format!(
            "base image cycle: {} -> {here}",
            chain.join(" -> ")
        ));
    }
    if chain.len() > MAX_DEPTH {
        return deny(format!(
            "base image chain deeper than {MAX_DEPTH}: {} -> {here}",
            chain.join(" -> ")
        ));
    }
    if let NameDecision::Refused(why) = app.policy.names.check(&target.name) {
        return deny(why);
    }
    content::by_digest(app, &target, &digest, &Accept::default()).await?;
    Ok((*super::verdict_in(app, &target, &digest, chain).await?).clone())
}
