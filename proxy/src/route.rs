//! From a request path to what is asked and where it goes.
//!
//! Routing order (see `../shared/docs/design.md`): `?ns=<registry>`, then a path prefix naming a
//! configured upstream (`/v2/<registry-host>/<repo>/…`), then the default upstream. docker.io
//! names with one segment become `library/<name>`.

use std::sync::{Arc, OnceLock};

use portcullis_cache::{Digest, DigestError};
use regex::Regex;

use crate::config::UpstreamConfig;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// Longest repository name accepted (distribution's limit).
const MAX_NAME: usize = 255;

/// What a `/v2/…` path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Manifest(Reference),
    Blob(Digest),
    Tags,
    /// `referrers/<digest>`: the OCI 1.1 referrers of a manifest.
    Referrers(Digest),
}

/// A manifest reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

/// A routed repository.
#[derive(Clone)]
pub struct Target {
    pub upstream: Arc<Upstream>,
    /// The repository as the upstream knows it, e.g. `library/alpine`.
    pub repo: String,
    /// `registry/repository`: what policy globs and the cache key on.
    pub name: String,
    /// The name as the client sent it (for `Link` headers).
    pub client_name: String,
    /// The `?ns=` the client sent, echoed as `OCI-Namespace`.
    pub ns: Option<String>,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// Splits `/v2/<name>/<endpoint>` into the client's name and the endpoint.
pub fn parse_path(path: &str) -> Result<(String, Endpoint), ProxyError> {
    let rest = path
        .strip_prefix("/v2")
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .ok_or_else(|| ProxyError::NameUnknown(format!("no such route: {path}")))?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok((String::new(), Endpoint::Base));
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let unknown = || ProxyError::NameUnknown(format!("no such route: {path}"));
    if n < 3 {
        return Err(unknown());
    }
    let name = segs[..n - 2].join("/");
    let (kind, last) = (segs[n - 2], segs[n - 1]);
    let endpoint = match (kind, last) {
        ("tags", "list") => Endpoint::Tags,
        ("manifests", r) => Endpoint::Manifest(parse_reference(r)?),
        ("blobs", d) => Endpoint::Blob(parse_digest(d)?),
        ("referrers", d) => Endpoint::Referrers(parse_digest(d)?),
        _ => return Err(unknown()),
    };
    Ok((name, endpoint))
}

pub fn parse_digest(s: &str) -> Result<Digest, ProxyError> {
    s.parse().map_err(|e: DigestError| match e {
        DigestError::Invalid(_) => ProxyError::DigestInvalid(e.to_string()),
        DigestError::Unsupported(_) => ProxyError::Unsupported(e.to_string()),
    })
}

fn parse_reference(r: &str) -> Result<Reference, ProxyError> {
    if r.contains(':') {
        return parse_digest(r).map(Reference::Digest);
    }
    static TAG: OnceLock<Regex> = OnceLock::new();
    let tag = TAG.get_or_init(|| Regex::new(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$").unwrap());
    if tag.is_match(r) {
        Ok(Reference::Tag(r.to_owned()))
    } else {
        Err(ProxyError::TagInvalid(r.to_owned()))
    }
}

/// Checks a repository path against the distribution spec grammar.
pub fn validate_repo(name: &str) -> Result<(), ProxyError> {
    static COMPONENT: OnceLock<Regex> = OnceLock::new();
    let component =
        COMPONENT.get_or_init(|| Regex::new(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$").unwrap());
    let invalid = |why: &str| ProxyError::NameInvalid(name.to_owned(), why.to_owned());
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.len() > MAX_NAME {
        return Err(invalid("longer than 255 characters"));
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return Err(invalid("empty path segment"));
        }
        if !component.is_match(seg) {
            return Err(invalid(&format!(
                "segment {seg:?} must be lower-case letters and digits, separated by '.', '_', '__' or '-'"
            )));
        }
    }
    Ok(())
}

/// The configured upstreams, in routing order.
/// Offline stand-ins for registries with no `[[upstream]]`, kept at most.
const MAX_PLACEHOLDERS: u64 = 64;

pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
    default: Option<Arc<Upstream>>,
    /// Offline: registries with no `[[upstream]]` still name cache namespaces.
    offline: bool,
    /// Their stand-ins, bounded: a client picks the names (`?ns=`), so they must not pile up.
    placeholders: moka::sync::Cache<String, Arc<Upstream>>,
    /// Offline: whether the cache holds anything of a registry. A client's request names a
    /// registry with no `[[upstream]]` only if it does; `import` may name new ones.
    held: Option<HeldRegistries>,
    metrics: Metrics,
}

/// A test for registries the cache holds content of.
pub type HeldRegistries = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl Router {
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        default: Option<usize>,
        offline: bool,
        held: Option<HeldRegistries>,
        metrics: Metrics,
    ) -> Router {
        let default = default.map(|i| Arc::clone(&upstreams[i]));
        Router {
            upstreams,
            default,
            offline,
            placeholders: moka::sync::Cache::new(MAX_PLACEHOLDERS),
            held,
            metrics,
        }
    }

    /// The configured upstreams.
    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    fn by_name(&self, name: &str, client: bool) -> Option<Arc<Upstream>> {
        if let Some(up) = self.upstreams.iter().find(|u| u.name == name) {
            return Some(Arc::clone(up));
        }
        if !self.offline {
            return None;
        }
        if client && !self.held.as_ref().is_some_and(|held| held(name)) {
            return None;
        }
        if let Some(up) = self.placeholders.get(name) {
            return Some(up);
        }
        let cfg = UpstreamConfig::offline_placeholder(name).ok()?;
        let up = Arc::new(Upstream::new(&cfg, true, self.metrics.clone()).ok()?);
        self.placeholders.insert(name.to_owned(), Arc::clone(&up));
        Some(up)
    }

    /// Offline and with no default upstream: split a name as a docker reference would.
    fn docker_split(&self, name: &str, client: bool) -> Option<(Arc<Upstream>, String)> {
        let (first, rest) = name.split_once('/').unwrap_or(("", name));
        let is_host = first.contains('.') || first.contains(':') || first == "localhost";
        if is_host {
            Some((self.by_name(first, client)?, rest.to_owned()))
        } else {
            Some((self.by_name("docker.io", client)?, name.to_owned()))
        }
    }

    /// Picks the upstream and normalises the name, for a command (`import` may bring a
    /// registry the cache does not hold yet).
    pub fn route(&self, client_name: &str, ns: Option<&str>) -> Result<Target, ProxyError> {
        self.route_for(client_name, ns, false)
    }

    /// [`route`](Self::route) for a client's request: offline, a registry with no
    /// `[[upstream]]` is a namespace only if the cache holds something of it, so that names a
    /// client makes up (`?ns=`, host prefixes) are refused rather than given stand-ins.
    pub fn route_request(&self, client_name: &str, ns: Option<&str>) -> Result<Target, ProxyError> {
        self.route_for(client_name, ns, true)
    }

    fn route_for(
        &self,
        client_name: &str,
        ns: Option<&str>,
        client: bool,
    ) -> Result<Target, ProxyError> {
        let (upstream, repo) = if let Some(ns) = ns {
            let up = self.by_name(ns, client).ok_or_else(|| {
                ProxyError::NameUnknown(format!(
                    "no [[upstream]] named {ns:?} is configured{} (from ?ns={ns})",
                    if self.offline {
                        ", and the cache holds nothing of it"
                    } else {
                        ""
                    }
                ))
            })?;
            (up, client_name.to_owned())
        } else if let Some((first, rest)) = client_name
            .split_once('/')
            .and_then(|(f, r)| self.upstreams.iter().any(|u| u.name == f).then_some((f, r)))
            .and_then(|(f, r)| self.by_name(f, client).map(|u| (u, r.to_owned())))
        {
            (first, rest)
        } else if let Some(up) = &self.default {
            (Arc::clone(up), client_name.to_owned())
        } else if let Some(split) = self
            .offline
            .then(|| self.docker_split(client_name, client))
            .flatten()
        {
            split
        } else {
            return Err(ProxyError::NameUnknown(format!(
                "{client_name}: no registry prefix or ?ns= names a configured [[upstream]], and none is the default"
            )));
        };
        let repo = repo.as_str();
        validate_repo(repo)?;
        let repo = if upstream.name == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_owned()
        };
        Ok(Target {
            upstream: Arc::clone(&upstream),
            name: format!("{}/{repo}", upstream.name),
            repo,
            client_name: client_name.to_owned(),
            ns: ns.map(str::to_owned),
        })
    }
}

/// Splits `registry/repo[:tag][@digest]` (the tag defaults to `latest`); only a digest can be
/// wrong here.
pub fn parse_image_ref(image: &str) -> Result<(String, Reference), DigestError> {
    if let Some((name, digest)) = image.split_once('@') {
        let d: Digest = digest.parse()?;
        let name = name
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or(name, |(n, _)| n);
        return Ok((name.to_owned(), Reference::Digest(d)));
    }
    match split_tag(image) {
        Some((name, tag)) => Ok((name.to_owned(), Reference::Tag(tag.to_owned()))),
        None => Ok((image.to_owned(), Reference::Tag("latest".to_owned()))),
    }
}

/// Splits `registry/repo:tag` at the tag's colon (one after the last `/`): `None` when there is
/// no tag (a registry's port is no tag).
pub fn split_tag(reference: &str) -> Option<(&str, &str)> {
    let (name, tag) = reference.rsplit_once(':')?;
    (!tag.contains('/') && !name.is_empty()).then_some((name, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_image_references() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_image_ref("127.0.0.1:5001/test/app:v1").unwrap(),
            (
                "127.0.0.1:5001/test/app".into(),
                Reference::Tag("v1".into())
            )
        );
        assert_eq!(
            parse_image_ref("127.0.0.1:5001/test/app").unwrap(),
            (
                "127.0.0.1:5001/test/app".into(),
                Reference::Tag("latest".into())
            )
        );
        assert_eq!(
            parse_image_ref(&format!("alpine:3@{d}")).unwrap(),
            ("alpine".into(), Reference::Digest(d.parse().unwrap()))
        );
        assert!(parse_image_ref("x@sha256:nope").is_err());
        assert_eq!(split_tag("host:5000/repo"), None);
        assert_eq!(
            split_tag("host:5000/repo:v1"),
            Some(("host:5000/repo", "v1"))
        );
    }

    #[test]
    fn parses_paths() {
        assert_eq!(parse_path("/v2/").unwrap().1, Endpoint::Base);
        assert_eq!(parse_path("/v2").unwrap().1, Endpoint::Base);
        let (name, ep) = parse_path("/v2/a/blobs/b/manifests/latest").unwrap();
        assert_eq!(name, "a/blobs/b");
        assert_eq!(ep, Endpoint::Manifest(Reference::Tag("latest".into())));
        assert_eq!(parse_path("/v2/x/tags/list").unwrap().1, Endpoint::Tags);
        assert!(matches!(
            parse_path("/v2/x/blobs/sha256:zz"),
            Err(ProxyError::DigestInvalid(_))
        ));
        let d = Digest::of(b"");
        assert_eq!(
            parse_path(&format!("/v2/a/b/referrers/{d}")).unwrap(),
            ("a/b".to_owned(), Endpoint::Referrers(d))
        );
        assert!(matches!(
            parse_path("/v2/x/referrers/latest"),
            Err(ProxyError::DigestInvalid(_))
        ));
        assert!(matches!(
            parse_path("/v2/x/manifests/-bad"),
            Err(ProxyError::TagInvalid(_))
        ));
        assert!(matches!(
            parse_path("/v3/x"),
            Err(ProxyError::NameUnknown(_))
        ));
    }

    #[test]
    fn validates_names() {
        for ok in ["alpine", "library/alpine", "a.b/c_d/e__f/g--h", "x0"] {
            validate_repo(ok).unwrap();
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "Alpine",
            "a//b",
            "a/../b",
            "..",
            "a/",
            "-a",
            "a_",
            long.as_str(),
        ] {
            assert!(
                matches!(validate_repo(bad), Err(ProxyError::NameInvalid(..))),
                "{bad}"
            );
        }
    }
}
