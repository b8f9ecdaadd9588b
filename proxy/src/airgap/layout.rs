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
    pub fn open(path: &Path) -> Result<Layout, String> {
        let (root, scratch) = if path.is_file() {
            let scratch = std::env::temp_dir().join(format!(
                "portcullis-import-{}-{}",
                std::process::id(),
                portcullis_cache::now_ms()
            ));
            fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
            let unpacked = File::open(path)
                .and_then(|f| tar::Archive::new(f).unpack(&scratch))
                .map_err(|e| format!("{}: cannot read the tar: {e}", path.display()));
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
            return Err(format!(
                "{}: not an OCI image layout (no oci-layout file)",
                path.display()
            ));
        }
        let raw = fs::read(layout.root.join("index.json"))
            .map_err(|e| format!("{}: index.json: {e}", path.display()))?;
        layout.index = serde_json::from_slice(&raw)
            .map_err(|e| format!("{}: index.json: {e}", path.display()))?;
        Ok(layout)
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// A small blob (a manifest, a signature payload), read whole and checked against its
    /// digest.
    pub fn read_verified(&self, digest: &Digest, max: u64) -> Result<Bytes, String> {
        let path = self.blob_path(digest);
        let len = fs::metadata(&path)
            .map_err(|e| format!("blob {digest} is missing from the layout: {e}"))?
            .len();
        if len > max {
            return Err(format!(
                "blob {digest} is {len} bytes, over the {max}-byte limit"
            ));
        }
        let bytes = Bytes::from(fs::read(&path).map_err(|e| format!("blob {digest}: {e}"))?);
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(format!(
                "blob {digest} does not match its digest (its bytes hash to {actual})"
            ));
        }
        Ok(bytes)
    }

    /// Streams a blob's file through `sink` in chunks, returning its digest.
    pub fn stream(
        &self,
        digest: &Digest,
        mut sink: impl FnMut(Bytes) -> Result<(), String>,
    ) -> Result<Digest, String> {
        let mut f = File::open(self.blob_path(digest))
            .map_err(|e| format!("blob {digest} is missing from the layout: {e}"))?;
        let mut h = Hasher::new();
        loop {
            let mut buf = Vec::with_capacity(1 << 20);
            let n = (&mut f)
                .take(1 << 20)
                .read_to_end(&mut buf)
                .map_err(|e| format!("blob {digest}: {e}"))?;
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
    pub fn create(root: &Path) -> io::Result<Writer> {
        fs::create_dir_all(root.join("blobs").join("sha256"))?;
        fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(Writer {
            root: root.to_owned(),
            entries: Vec::new(),
        })
    }

    pub fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        fs::write(self.path(digest), bytes)
    }

    pub fn put_file(&self, digest: &Digest, mut from: File) -> io::Result<()> {
        let mut to = File::create(self.path(digest))?;
        io::copy(&mut from, &mut to)?;
        Ok(())
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    pub fn entry(&mut self, descriptor: Descriptor) {
        self.entries.push(descriptor);
    }

    pub fn finish(self) -> io::Result<()> {
        let index = Index {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.index.v1+json".into()),
            manifests: self.entries,
        };
        fs::write(
            self.root.join("index.json"),
            serde_json::to_vec_pretty(&index).expect("index serialises"),
        )
    }
}

/// Packs a layout directory into a tar at `out`.
pub fn tar_dir(dir: &Path, out: &Path) -> io::Result<()> {
    let tmp = out.with_extension("tar.partial");
    let mut builder = tar::Builder::new(File::create(&tmp)?);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()?.sync_all()?;
    fs::rename(tmp, out)
}
