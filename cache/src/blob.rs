//! Blob bodies: written through a hashing writer into `tmp/`, renamed into place once verified.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::store::io_err;
use crate::{Digest, Error, Hasher, Store};

/// A held blob.
#[derive(Debug)]
pub enum Blob {
    /// Small and hot: served from memory.
    Memory(Bytes),
    /// An open file of `size` bytes, read from by position.
    File { file: File, size: u64 },
}

impl Blob {
    pub fn size(&self) -> u64 {
        match self {
            Blob::Memory(b) => b.len() as u64,
            Blob::File { size, .. } => *size,
        }
    }
}

/// Writes one blob. Hashes every byte as it is written; [`commit`](Self::commit) refuses to make
/// the blob visible unless the digest (and the expected size, when known) match. Dropping the
/// writer uncommitted deletes its temporary file.
pub struct BlobWriter {
    store: Arc<Store>,
    digest: Digest,
    expected_size: Option<u64>,
    path: PathBuf,
    file: Option<File>,
    hasher: Hasher,
}

impl BlobWriter {
    pub(crate) fn create(
        store: Arc<Store>,
        digest: Digest,
        expected_size: Option<u64>,
    ) -> Result<BlobWriter, Error> {
        let path = store.tmp_path(&digest);
        let file = File::create(&path).map_err(io_err(&path))?;
        Ok(BlobWriter {
            store,
            digest,
            expected_size,
            path,
            file: Some(file),
            hasher: Hasher::new(),
        })
    }

    /// The temporary file being written: readers that follow the write open it by this path
    /// (and, once committed, by [`Store::blob_path`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the size the blob must have, once the upstream has said it.
    pub fn expect_size(&mut self, size: Option<u64>) {
        self.expected_size = size;
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    /// Appends bytes. Fails early if more bytes arrive than the expected size.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if let Some(expected) = self.expected_size {
            let actual = self.hasher.len() + bytes.len() as u64;
            if actual > expected {
                return Err(Error::SizeMismatch { expected, actual });
            }
        }
        self.hasher.update(bytes);
        let file = self.file.as_mut().expect("file open until commit");
        file.write_all(bytes).map_err(io_err(&self.path))
    }

    /// Checks the digest, then flushes and renames into place. On any mismatch nothing becomes
    /// visible and the temporary file is removed.
    pub fn verify(&self) -> Result<u64, Error> {
        let size = self.hasher.len();
        if let Some(expected) = self.expected_size {
            if size != expected {
                return Err(Error::SizeMismatch {
                    expected,
                    actual: size,
                });
            }
        }
        let actual = self.hasher.clone().finish();
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(size)
    }

    /// [`verify`](Self::verify), then make durable and visible.
    pub fn commit(mut self) -> Result<u64, Error> {
        let size = self.verify()?;
        let file = self.file.take().expect("file open until commit");
        file.sync_data().map_err(io_err(&self.path))?;
        drop(file);
        self.store.commit_blob(&self.digest, &self.path, size)?;
        Ok(size)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}
