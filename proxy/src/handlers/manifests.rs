//! `GET`/`HEAD /v2/<name>/manifests/<reference>`: the manifest from [`content`](crate::content),
//! the gate's decision (a verdict, or verification material admitted for its subject), then the
//! original bytes.

use http::{header, HeaderValue, Response};

use super::Outcome;
use crate::app::App;
use crate::body::{empty, full, ResponseBody};
use crate::content::{self, Accept};
use crate::error::ProxyError;
use crate::gate;
use crate::oci::{cosign, Document};
use crate::route::{Reference, Target};

pub async fn serve(
    app: &App,
    target: &Target,
    reference: &Reference,
    accept: &Accept,
    head: bool,
    outcome: &mut Outcome,
) -> Result<Response<ResponseBody>, ProxyError> {
    // portcullis' own verification summaries (`[attest]`): the `.att` tag, their documents.
    if let Some(ours) =
        crate::attest::manifest(app, target, reference, accept, head, outcome).await?
    {
        return Ok(ours);
    }
    let (digest, manifest, obtained) = match reference {
        Reference::Digest(d) => {
            let (m, obtained) = content::by_digest(app, target, d, accept).await?;
            (d.clone(), m, obtained)
        }
        Reference::Tag(tag) => content::resolve_tag(app, target, tag, accept).await?,
    };
    outcome.cache = obtained.as_str();
    // Read again, strictly, whatever the cache held: it is what clients will read.
    let doc = Document::parse(&manifest.bytes, Some(&manifest.media_type))
        .map_err(content::manifests::invalid(target, &digest))?;
    let tag = match reference {
        Reference::Tag(tag) => Some(tag.as_str()),
        Reference::Digest(_) => None,
    };
    match cosign::evidence_artifact(&doc, tag) {
        Some(artifact) => {
            outcome.verdict = Some("evidence");
            gate::admit_evidence(app, target, &digest, &artifact).await?;
        }
        None => {
            let verdict = gate::verdict(app, target, &digest).await?;
            outcome.verdict = Some(match verdict.decision {
                portcullis_policy::Decision::Allow => "allow",
                portcullis_policy::Decision::Warn => "warn",
                portcullis_policy::Decision::Deny => "deny",
            });
            // Before enforcing: a moved immutable tag opens no gate for what it now names.
            if let Some(tag) = tag {
                gate::tags::hold(app, target, tag, accept, &digest, &verdict).await?;
            }
            gate::enforce(app, target, &digest, &doc, &verdict)?;
        }
    }
    let mut resp = Response::new(if head {
        empty()
    } else {
        full(manifest.bytes.clone())
    });
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&manifest.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(manifest.bytes.len()),
    );
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        h.insert("Docker-Content-Digest", v.clone());
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}
