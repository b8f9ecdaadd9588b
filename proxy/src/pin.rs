//! `portcullis pin`: record a reviewed digest in a `[[trust.pins]]` file, and `pin --check`:
//! list pins whose tag now points elsewhere.
//!
//! The tag is resolved the way a pull resolves it (through [`content`], on a throw-away cache
//! like `verify`), so what is pinned is what a pull would be served. A tag is pinned under
//! `"registry/repo:tag"` (its last digest is what the tag should point at, which `--check` and
//! `immutable_tags` follow), a digest under `"registry/repo"`. The file is edited in place with
//! its comments kept; each new digest gets a comment saying who pinned it, when, and from what.

use std::path::{Path, PathBuf};

use portcullis_cache::DigestError;
use portcullis_policy::PinsError;
use toml_edit::{Array, DocumentMut, Item, Value};

use crate::app::{App, AppError};
use crate::config::Config;
use crate::content::{self, Accept};
use crate::error::ProxyError;
use crate::oci::document::Body;
use crate::oci::{Document, Invalid};
use crate::route::{parse_image_ref, Reference};

/// Why `pin` or `pin --check` could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
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
    #[error("{image}: {source}")]
    Manifest {
        image: String,
        #[source]
        source: Invalid,
    },
    #[error("no [[trust.pins]] named {name:?} in the configuration (it has: {})", has.join(", "))]
    NoSuchSet { name: String, has: Vec<String> },
    #[error("the configuration has no [[trust.pins]] set")]
    NoSets,
    #[error("choose a set with --pins: {}", .0.join(", "))]
    ChooseSet(Vec<String>),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Pins {
        path: PathBuf,
        #[source]
        source: PinsError,
    },
    #[error("{}: not TOML: {source}", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml_edit::TomlError,
    },
    #[error("{}: {name:?} is not an array", path.display())]
    NotArray { path: PathBuf, name: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What an image reference resolved to.
struct Resolved {
    name: String,
    digest: String,
    /// The index's platforms (`os/arch[/variant]`), or empty for a single manifest.
    platforms: Vec<String>,
}

/// Resolves `image`, appends its digest to the pins set, and says what it did.
pub async fn pin(config: Config, image: &str, set: Option<&str>) -> Result<Vec<String>, PinError> {
    let path = pins_path(&config, set)?;
    let (_, reference) = image_ref(image)?;
    let r = with_scratch(config, |app| async move { resolve(&app, image).await }).await?;
    let tag = match &reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    let mut out = vec![format!(
        "{image} is {}{}",
        r.digest,
        if r.platforms.is_empty() {
            String::new()
        } else {
            format!(" (an index: {})", r.platforms.join(", "))
        }
    )];
    let key = match tag {
        Some(t) => format!("{}:{t}", r.name),
        None => r.name.clone(),
    };
    let mut doc = read(&path)?;
    let entry = doc
        .entry(&key)
        .or_insert_with(|| Item::Value(Value::Array(Array::new())));
    let array = entry.as_array_mut().ok_or_else(|| PinError::NotArray {
        path: path.clone(),
        name: key.clone(),
    })?;
    let last = array.iter().last().and_then(|v| v.as_str());
    if last == Some(r.digest.as_str()) {
        out.push(format!("already pinned as {key} in {}", path.display()));
        return Ok(out);
    }
    // Pinned before, and since moved on: the tag goes back to it only because a person said so
    // again, so it becomes the last (the tag's) pin once more.
    let earlier = array
        .iter()
        .position(|v| v.as_str() == Some(r.digest.as_str()));
    if let Some(i) = earlier {
        array.remove(i);
    }
    let mut value = Value::from(r.digest.as_str());
    value
        .decor_mut()
        .set_prefix(format!("\n  # {}\n  ", comment(tag, &r.platforms)));
    array.push_formatted(value);
    array.set_trailing("\n");
    array.set_trailing_comma(true);
    write(&path, &doc.to_string())?;
    out.push(format!(
        "pinned {key} at {} in {}",
        r.digest,
        path.display()
    ));
    Ok(out)
}

/// Every tag pin whose tag now resolves to another digest than its last pin: the lines to
/// print, and whether all are still where they were pinned.
pub async fn check(config: Config, set: Option<&str>) -> Result<(Vec<String>, bool), PinError> {
    let path = pins_path(&config, set)?;
    let doc = read(&path)?;
    let mut wanted = Vec::new();
    for (key, item) in doc.iter() {
        let (Ok((_, Some(_))), Some(array)) =
            (portcullis_policy::split_pins_key(key), item.as_array())
        else {
            continue;
        };
        if let Some(last) = array.iter().last().and_then(|v| v.as_str()) {
            wanted.push((key.to_owned(), last.to_owned()));
        }
    }
    with_scratch(config, |app| async move {
        let mut lines = Vec::new();
        let mut all_current = true;
        for (image, digest) in wanted {
            match resolve(&app, &image).await {
                Ok(r) if r.digest == digest => lines.push(format!("{image}: {digest} (current)")),
                Ok(r) => {
                    all_current = false;
                    lines.push(format!(
                        "{image}: MOVED: pinned {digest}, now points at {}",
                        r.digest
                    ));
                }
                Err(e) => {
                    all_current = false;
                    lines.push(format!("{image}: cannot resolve: {e}"));
                }
            }
        }
        Ok((lines, all_current))
    })
    .await
}

/// The pins comment: where the digest came from, who, when, platforms.
fn comment(tag: Option<&str>, platforms: &[String]) -> String {
    let who = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let day = when.get(..10).unwrap_or(&when);
    let mut c = match tag {
        Some(t) => format!("tag {t}, pinned by {who} on {day}"),
        None => format!("pinned by digest by {who} on {day}"),
    };
    if !platforms.is_empty() {
        c.push_str(&format!(" ({})", platforms.join(", ")));
    }
    c
}

fn pins_path(config: &Config, set: Option<&str>) -> Result<PathBuf, PinError> {
    let sets = &config.trust.pins;
    let names = || sets.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    match set {
        Some(n) => sets
            .iter()
            .find(|p| p.name == n)
            .map(|p| p.path.clone())
            .ok_or_else(|| PinError::NoSuchSet {
                name: n.to_owned(),
                has: names(),
            }),
        None if sets.len() == 1 => Ok(sets[0].path.clone()),
        None if sets.is_empty() => Err(PinError::NoSets),
        None => Err(PinError::ChooseSet(names())),
    }
}

fn image_ref(image: &str) -> Result<(String, Reference), PinError> {
    parse_image_ref(image).map_err(|source| PinError::Reference {
        image: image.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<DocumentMut, PinError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::from(
            "# Reviewed digests, by image name: an authority for rules with `pinned = \"<set>\"`.\n# Written by `portcullis pin`; checked by `portcullis pin --check`.\n",
        ),
        Err(source) => {
            return Err(PinError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    // The same reading the policy does, so that what is edited here is what will load.
    portcullis_policy::PinSet::parse(&text).map_err(|source| PinError::Pins {
        path: path.to_owned(),
        source,
    })?;
    text.parse().map_err(|source| PinError::Toml {
        path: path.to_owned(),
        source,
    })
}

/// Replaces the file whole (a new file, then a rename), so a server watching it never reads half.
fn write(path: &Path, text: &str) -> Result<(), PinError> {
    let fail = |source| PinError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Runs `f` on an [`App`] over a throw-away cache (so that a serving instance keeps its own).
async fn with_scratch<T, F, Fut>(mut config: Config, f: F) -> Result<T, PinError>
where
    F: FnOnce(App) -> Fut,
    Fut: std::future::Future<Output = Result<T, PinError>>,
{
    let _scratch = crate::app::ScratchCache::new(&mut config, "pin");
    f(App::new(config)?).await
}

async fn resolve(app: &App, image: &str) -> Result<Resolved, PinError> {
    let (name, reference) = image_ref(image)?;
    let target = app.router.route(&name, None)?;
    let accept = Accept::default();
    let (digest, manifest) = match &reference {
        Reference::Tag(tag) => content::resolve_tag(app, &target, tag, &accept)
            .await
            .map(|(d, m, _)| (d, m)),
        Reference::Digest(d) => content::by_digest(app, &target, d, &accept)
            .await
            .map(|(m, _)| (d.clone(), m)),
    }?;
    let doc = Document::parse(&manifest.bytes, Some(&manifest.media_type)).map_err(|source| {
        PinError::Manifest {
            image: image.to_owned(),
            source,
        }
    })?;
    let platforms = match &doc.body {
        Body::Index(i) => i
            .manifests()
            .iter()
            .filter_map(|m| m.platform().as_ref())
            .map(|p| {
                let mut s = format!("{}/{}", p.os(), p.architecture());
                if let Some(v) = p.variant() {
                    s.push('/');
                    s.push_str(v);
                }
                s
            })
            .collect(),
        Body::Manifest(_) => Vec::new(),
    };
    Ok(Resolved {
        name: target.name,
        digest: digest.to_string(),
        platforms,
    })
}
