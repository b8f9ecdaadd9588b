//! Blob bodies: written through a hashing writer into `tmp/`, renamed into place once verified.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread;

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

/// Blobs at most this large are hashed on the writing thread; larger ones on a thread of their
/// own, so that hashing and writing run on two cores.
const INLINE_HASH_MAX: u64 = 1 << 20;

/// Writes one blob. Hashes every byte as it is written; [`commit`](Self::commit) refuses to make
/// the blob visible unless the digest (and the expected size, when known) match. Dropping the
/// writer uncommitted deletes its temporary file.
pub struct BlobWriter {
    store: Arc<Store>,
    digest: Digest,
    expected_size: Option<u64>,
    path: PathBuf,
    file: Option<File>,
    written: u64,
    hashing: Hashing,
}

enum Hashing {
    NotStarted,
    Inline(Hasher),
    Thread(mpsc::SyncSender<Bytes>, thread::JoinHandle<Digest>),
    Done(Digest),
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
            written: 0,
            hashing: Hashing::NotStarted,
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
        self.written
    }

    /// Appends bytes. Fails early if more bytes arrive than the expected size.
    pub fn write(&mut self, bytes: Bytes) -> Result<(), Error> {
        let actual = self.written + bytes.len() as u64;
        if let Some(expected) = self.expected_size {
            if actual > expected {
                return Err(Error::SizeMismatch { expected, actual });
            }
        }
        if matches!(self.hashing, Hashing::NotStarted) {
            self.hashing = match self.expected_size {
                Some(n) if n <= INLINE_HASH_MAX => Hashing::Inline(Hasher::new()),
                _ => {
                    let (tx, rx) = mpsc::sync_channel::<Bytes>(64);
                    let handle = thread::Builder::new()
                        .name("blob-hash".into())
                        .spawn(move || {
                            let mut h = Hasher::new();
                            for chunk in rx {
                                h.update(&chunk);
                            }
                            h.finish()
                        })
                        .map_err(io_err(&self.path))?;
                    Hashing::Thread(tx, handle)
                }
            };
        }
        match &mut self.hashing {
            Hashing::Inline(h) => h.update(&bytes),
            Hashing::Thread(tx, _) => {
                if tx.send(bytes.clone()).is_err() {
                    return Err(Error::Corrupt("the hashing thread died".into()));
                }
            }
            Hashing::NotStarted | Hashing::Done(_) => {
                return Err(Error::Corrupt("write after verify".into()))
            }
        }
        let file = self.file.as_mut().expect("file open until commit");
        file.write_all(&bytes).map_err(io_err(&self.path))?;
        self.written = actual;
        Ok(())
    }

    /// Appends a copy of `bytes`.
    pub fn write_slice(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.write(Bytes::copy_from_slice(bytes))
    }

    /// Checks the size and the digest of everything written. No more writes after this.
    pub fn verify(&mut self) -> Result<u64, Error> {
        let size = self.written;
        if let Some(expected) = self.expected_size {
            if size != expected {
                return Err(Error::SizeMismatch {
                    expected,
                    actual: size,
                });
            }
        }
        let actual = match std::mem::replace(&mut self.hashing, Hashing::NotStarted) {
            Hashing::NotStarted => Digest::of(b""),
            Hashing::Inline(h) => h.finish(),
            Hashing::Thread(tx, handle) => {
                drop(tx);
                handle
                    .join()
                    .map_err(|_| Error::Corrupt("the hashing thread panicked".into()))?
            }
            Hashing::Done(d) => d,
        };
        self.hashing = Hashing::Done(actual.clone());
        if actual != self.digest {
            return Err(Error::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(size)
    }

    /// [`verify`](Self::verify), then make durable and visible. On any mismatch nothing becomes
    /// visible and the temporary file is removed.
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
