//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), as skopeo, oras and
//! `portcullis export` write them, from a directory or a tar.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use portcullis_cache::{Digest, Hasher};
use serde::{Deserialize, Serialize};

/// The annotation naming an index entry.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A layout that cannot be read or written as one.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{}: cannot read the tar: {source}", path.display())]
    Tar {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not an OCI image layout (no oci-layout file)", path.display())]
    NotALayout { path: PathBuf },
    #[error("{}: index.json: {source}", path.display())]
    IndexRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: index.json: {source}", path.display())]
    IndexJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("blob {digest} is missing from the layout: {source}")]
    Missing {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest}: {source}")]
    Read {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("blob {digest} is {len} bytes, over the {max}-byte limit")]
    TooLarge { digest: Digest, len: u64, max: u64 },
    #[error("blob {digest} does not match its digest (its bytes hash to {actual})")]
    DigestMismatch { digest: Digest, actual: Digest },
    /// Writing a layout (or the scratch directory a tar is unpacked into).
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A descriptor as index.json holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An opened layout. A tar is unpacked into a scratch directory first, removed on drop.
pub struct Layout {
    root: PathBuf,
    scratch: Option<PathBuf>,
    pub index: Index,
}

impl Layout {
    pub fn open(path: &Path) -> Result<Layout, LayoutError> {
        let (root, scratch) = if path.is_file() {
            let scratch = std::env::temp_dir().join(format!(
                "portcullis-import-{}-{}",
                std::process::id(),
                portcullis_cache::now_ms()
            ));
            fs::create_dir_all(&scratch).map_err(write(&scratch))?;
            let unpacked = File::open(path)
                .and_then(|f| tar::Archive::new(f).unpack(&scratch))
                .map_err(|source| LayoutError::Tar {
                    path: path.to_owned(),
                    source,
                });
            if let Err(e) = unpacked {
                let _ = fs::remove_dir_all(&scratch);
                return Err(e);
            }
            (scratch.clone(), Some(scratch))
        } else {
            (path.to_owned(), None)
        };
        let mut layout = Layout {
            root,
            scratch,
            index: Index {
                schema_version: 2,
                media_type: None,
                manifests: Vec::new(),
            },
        };
        if !layout.root.join("oci-layout").is_file() {
            return Err(LayoutError::NotALayout {
                path: path.to_owned(),
            });
        }
        let raw =
            fs::read(layout.root.join("index.json")).map_err(|source| LayoutError::IndexRead {
                path: path.to_owned(),
                source,
            })?;
        layout.index = serde_json::from_slice(&raw).map_err(|source| LayoutError::IndexJson {
            path: path.to_owned(),
            source,
        })?;
        Ok(layout)
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// A small blob (a manifest, a signature payload), read whole and checked against its
    /// digest.
    pub fn read_verified(&self, digest: &Digest, max: u64) -> Result<Bytes, LayoutError> {
        let path = self.blob_path(digest);
        let len = fs::metadata(&path).map_err(missing(digest))?.len();
        if len > max {
            return Err(LayoutError::TooLarge {
                digest: digest.clone(),
                len,
                max,
            });
        }
        let bytes = Bytes::from(fs::read(&path).map_err(read(digest))?);
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(LayoutError::DigestMismatch {
                digest: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Streams a blob's file through `sink` in chunks, returning its digest. The sink's error
    /// type is the caller's, so that its cause (a full disk under the cache) is kept.
    pub fn stream<E: From<LayoutError>>(
        &self,
        digest: &Digest,
        mut sink: impl FnMut(Bytes) -> Result<(), E>,
    ) -> Result<Digest, E> {
        let mut f = File::open(self.blob_path(digest)).map_err(missing(digest))?;
        let mut h = Hasher::new();
        loop {
            let mut buf = Vec::with_capacity(1 << 20);
            let n = (&mut f)
                .take(1 << 20)
                .read_to_end(&mut buf)
                .map_err(read(digest))?;
            if n == 0 {
                return Ok(h.finish());
            }
            h.update(&buf);
            sink(Bytes::from(buf))?;
        }
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        if let Some(dir) = &self.scratch {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Writes a layout: `blobs` are `(digest, source)` pairs, `entries` the index.
pub struct Writer {
    root: PathBuf,
    entries: Vec<Descriptor>,
}

impl Writer {
    pub fn create(root: &Path) -> Result<Writer, LayoutError> {
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(write(&blobs))?;
        let marker = root.join("oci-layout");
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(write(&marker))?;
        Ok(Writer {
            root: root.to_owned(),
            entries: Vec::new(),
        })
    }

    pub fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<(), LayoutError> {
        let path = self.path(digest);
        fs::write(&path, bytes).map_err(write(&path))
    }

    pub fn put_file(&self, digest: &Digest, mut from: File) -> Result<(), LayoutError> {
        let path = self.path(digest);
        File::create(&path)
            .and_then(|mut to| io::copy(&mut from, &mut to))
            .map(|_| ())
            .map_err(write(&path))
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    pub fn entry(&mut self, descriptor: Descriptor) {
        self.entries.push(descriptor);
    }

    pub fn finish(self) -> Result<(), LayoutError> {
        let index = Index {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.index.v1+json".into()),
            manifests: self.entries,
        };
        let path = self.root.join("index.json");
        fs::write(
            &path,
            serde_json::to_vec_pretty(&index).expect("index serialises"),
        )
        .map_err(write(&path))
    }
}

/// Packs a layout directory into a tar at `out`.
pub fn tar_dir(dir: &Path, out: &Path) -> Result<(), LayoutError> {
    let tmp = out.with_extension("tar.partial");
    let pack = || -> io::Result<()> {
        let mut builder = tar::Builder::new(File::create(&tmp)?);
        builder.append_dir_all(".", dir)?;
        builder.into_inner()?.sync_all()?;
        fs::rename(&tmp, out)
    };
    pack().map_err(write(out))
}

fn write(path: &Path) -> impl FnOnce(io::Error) -> LayoutError {
    let path = path.to_owned();
    move |source| LayoutError::Write { path, source }
}

fn missing(digest: &Digest) -> impl FnOnce(io::Error) -> LayoutError {
    let digest = digest.clone();
    move |source| LayoutError::Missing { digest, source }
}

fn read(digest: &Digest) -> impl FnOnce(io::Error) -> LayoutError {
    let digest = digest.clone();
    move |source| LayoutError::Read { digest, source }
}
