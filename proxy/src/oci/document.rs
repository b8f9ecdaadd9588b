//! Manifests and indexes, read strictly into `oci-spec`'s types.
//!
//! Before the typed parse, [`strict`] refuses duplicate and case-folded keys;
//! after it, the shape must agree with every media type that names it (the document's own
//! `mediaType` and the `Content-Type` it came with): a document that is both an index and a
//! manifest, or that one client would read as an index and another as a manifest, is refused
//! (the CVE-2021-41190 class).

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use portcullis_cache::Digest;

use super::strict::{self, Fields};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every field a Go client decodes from a manifest, an index, a descriptor or a platform, and
/// the ones containerd reads to tell them apart (`fsLayers`).
const FIELDS: Fields = Fields {
    names: &[
        "schemaVersion",
        "mediaType",
        "artifactType",
        "config",
        "layers",
        "manifests",
        "subject",
        "annotations",
        "digest",
        "size",
        "urls",
        "data",
        "platform",
        "architecture",
        "os",
        "os.version",
        "os.features",
        "variant",
        "features",
        "fsLayers",
    ],
    maps: &["annotations"],
};

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error(transparent)]
    Ambiguous(#[from] strict::Ambiguity),
    #[error("it is both an index (manifests) and an image manifest (config, layers)")]
    IndexAndManifest,
    #[error("it has neither manifests nor a config")]
    Shapeless,
    #[error("its mediaType {declared:?} does not match its shape ({shape})")]
    MediaTypeMismatch {
        declared: String,
        shape: &'static str,
    },
    #[error("it was served as {served:?} but says it is {declared:?}")]
    ContentTypeMismatch { served: String, declared: String },
    #[error("media type {0:?} is not a manifest type portcullis serves")]
    Unsupported(String),
    #[error("schemaVersion {0} is not 2")]
    SchemaVersion(u32),
    /// A field of the wrong shape: serde's message (kept as text: these errors are compared and
    /// cloned, which serde's error is not), or our own.
    #[error("{0}")]
    Shape(String),
    #[error("it names a digest portcullis cannot check: {0}")]
    Digest(#[source] portcullis_cache::DigestError),
}

/// A manifest or an index, checked.
#[derive(Debug, Clone)]
pub struct Document {
    /// The media type to serve it with: the document's own, else the one it came with, else
    /// the OCI type of its shape.
    pub media_type: String,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub enum Body {
    Manifest(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

/// A content reference with the size its descriptor promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
}

impl Document {
    /// Reads `bytes`, which came labelled `served` (a `Content-Type`, or a layout
    /// descriptor's media type; generic JSON types and none mean "unlabelled").
    pub fn parse(bytes: &[u8], served: Option<&str>) -> Result<Document, Invalid> {
        let raw = strict::check(bytes, FIELDS)?;
        if !raw.is_object() {
            return Err(Invalid::Shape("not a JSON object".into()));
        }
        let is_index = raw.get("manifests").is_some();
        let is_manifest = ["config", "layers", "fsLayers"]
            .iter()
            .any(|k| raw.get(k).is_some());
        let shape = match (is_index, is_manifest) {
            (true, true) => return Err(Invalid::IndexAndManifest),
            (false, false) => return Err(Invalid::Shapeless),
            (true, false) => "index",
            (false, true) => "manifest",
        };
        let declared = raw.get("mediaType").map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| Invalid::Shape("mediaType is not a string".into()))
        });
        let declared = declared.transpose()?;
        let served = served.filter(|s| is_manifest_type(s));
        if let (Some(served), Some(declared)) = (served, &declared) {
            if served != declared {
                return Err(Invalid::ContentTypeMismatch {
                    served: served.to_owned(),
                    declared: declared.clone(),
                });
            }
        }
        let media_type = match declared.as_deref().or(served) {
            Some(mt) => mt.to_owned(),
            None if shape == "index" => OCI_INDEX.to_owned(),
            None => OCI_MANIFEST.to_owned(),
        };
        let type_shape = match media_type.as_str() {
            OCI_INDEX | DOCKER_LIST => "index",
            OCI_MANIFEST | DOCKER_MANIFEST => "manifest",
            other => return Err(Invalid::Unsupported(other.to_owned())),
        };
        if type_shape != shape {
            return Err(Invalid::MediaTypeMismatch {
                declared: media_type,
                shape,
            });
        }
        let shape_err = |e: serde_json::Error| Invalid::Shape(e.to_string());
        let body = if shape == "index" {
            let index: ImageIndex = serde_json::from_slice(bytes).map_err(shape_err)?;
            version(index.schema_version())?;
            Body::Index(Box::new(index))
        } else {
            let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(shape_err)?;
            version(manifest.schema_version())?;
            Body::Manifest(Box::new(manifest))
        };
        let doc = Document { media_type, body };
        // Every digest must be one the store can check.
        doc.blobs()?;
        doc.children()?;
        doc.subject()?;
        Ok(doc)
    }

    /// The blobs a manifest references: its config, then its layers.
    pub fn blobs(&self) -> Result<Vec<Reference>, Invalid> {
        match &self.body {
            Body::Manifest(m) => std::iter::once(m.config())
                .chain(m.layers())
                .map(reference)
                .collect(),
            Body::Index(_) => Ok(Vec::new()),
        }
    }

    /// The manifests an index lists.
    pub fn children(&self) -> Result<Vec<Reference>, Invalid> {
        match &self.body {
            Body::Index(i) => i.manifests().iter().map(reference).collect(),
            Body::Manifest(_) => Ok(Vec::new()),
        }
    }

    /// The manifest this one refers to (OCI 1.1 referrers).
    pub fn subject(&self) -> Result<Option<Reference>, Invalid> {
        let subject = match &self.body {
            Body::Manifest(m) => m.subject(),
            Body::Index(i) => i.subject(),
        };
        subject.as_ref().map(reference).transpose()
    }

    /// The layers' descriptors, for a manifest.
    pub fn layers(&self) -> &[Descriptor] {
        match &self.body {
            Body::Manifest(m) => m.layers(),
            Body::Index(_) => &[],
        }
    }

    /// The config's descriptor, for a manifest.
    pub fn config(&self) -> Option<&Descriptor> {
        match &self.body {
            Body::Manifest(m) => Some(m.config()),
            Body::Index(_) => None,
        }
    }

    /// Every digest it names (blobs and child manifests), for the store's records.
    pub fn all_refs(&self) -> Vec<Digest> {
        let blobs = self.blobs().unwrap_or_default();
        let children = self.children().unwrap_or_default();
        blobs
            .into_iter()
            .chain(children)
            .map(|r| r.digest)
            .collect()
    }
}

/// Whether `media_type` is one of the manifest types portcullis serves.
pub fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST
    )
}

fn version(v: u32) -> Result<(), Invalid> {
    if v == 2 {
        Ok(())
    } else {
        Err(Invalid::SchemaVersion(v))
    }
}

/// The checked form of a descriptor.
pub fn reference(d: &Descriptor) -> Result<Reference, Invalid> {
    let digest = d.digest().to_string().parse().map_err(Invalid::Digest)?;
    Ok(Reference {
        digest,
        size: d.size(),
        media_type: d.media_type().to_string(),
    })
}

#[cfg(test)]
mod tests;
