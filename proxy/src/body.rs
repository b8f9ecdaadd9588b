//! Response bodies, and the verify-while-streaming body.
//!
//! A blob body follows a file that is being written by a fetch (or is already complete). By
//! default (`verify-first`) it releases nothing until the whole blob has matched its digest. In
//! `stream` mode, while the fetch is still hashing, it releases bytes only up to the written
//! length minus a held back tail of the size the verified manifest promised, so no client can
//! finish a blob before its digest has matched (but an unverified prefix can reach it). If the fetch fails,
//! the body ends with an error, which makes hyper abort the response: a client sees a truncated
//! transfer, never a complete unverified one. Reads happen on a blocking thread, by position, in
//! bounded chunks: memory per client stays at a few chunks whatever the blob size.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use tokio::sync::{mpsc, watch};

use crate::fetch::Progress;

/// Every response body.
pub type ResponseBody = BoxBody<Bytes, io::Error>;

/// Bytes read from disk per chunk.
const CHUNK: u64 = 512 * 1024;
/// Chunks queued per client.
const QUEUE: usize = 4;
/// Bytes withheld from the end of a blob until its digest has matched.
pub const HOLD_BACK: u64 = 64 * 1024;

pub fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub fn empty() -> ResponseBody {
    full(Bytes::new())
}

/// Where a body reads from.
pub enum Source {
    /// A committed blob.
    Done(File),
    /// A blob being fetched: the temporary path, then the committed path once renamed.
    Following {
        paths: [PathBuf; 2],
        progress: watch::Receiver<Progress>,
        /// `stream` mode: release all but the tail before the digest matched.
        early: bool,
    },
}

/// Streams `[start, end)` of `source`.
pub fn stream(source: Source, start: u64, end: u64) -> ResponseBody {
    let (tx, rx) = mpsc::channel(QUEUE);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = pump(source, start, end, &tx, &handle) {
            tracing::warn!(error = %e, "blob stream aborted");
            let _ = tx.blocking_send(Err(e));
        }
    });
    ChannelBody {
        rx,
        remaining: end - start,
    }
    .boxed()
}

fn pump(
    source: Source,
    mut pos: u64,
    end: u64,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    handle: &tokio::runtime::Handle,
) -> io::Result<()> {
    match source {
        Source::Done(mut file) => {
            file.seek(SeekFrom::Start(pos))?;
            while pos < end {
                if !send_chunk(&mut file, &mut pos, end, tx)? {
                    return Ok(());
                }
            }
            Ok(())
        }
        Source::Following {
            paths,
            mut progress,
            early,
        } => {
            let mut file: Option<File> = None;
            loop {
                let (releasable, done) = match &*progress.borrow_and_update() {
                    Progress::Streaming { size, written } if early => {
                        (releasable(*size, *written), false)
                    }
                    Progress::Streaming { .. } => (0, false),
                    Progress::Verified { size, .. } => (*size, true),
                    Progress::Failed(e) => return Err(io::Error::other(e.to_string())),
                    Progress::Starting => (0, false),
                };
                let limit = releasable.min(end);
                // Send full chunks while the fetch runs: fewer, larger writes to the client.
                if pos < limit && (done || limit - pos >= CHUNK) {
                    let f = match &mut file {
                        Some(f) => f,
                        None => {
                            let mut f = open_either(&paths)?;
                            f.seek(SeekFrom::Start(pos))?;
                            file.insert(f)
                        }
                    };
                    if !send_chunk(f, &mut pos, limit, tx)? {
                        return Ok(());
                    }
                    continue;
                }
                if pos >= end {
                    return Ok(());
                }
                if handle.block_on(progress.changed()).is_err() {
                    return Err(io::Error::other("blob fetch ended without a verdict"));
                }
            }
        }
    }
}

/// How much of a blob being written may be released before its digest is known.
fn releasable(size: Option<u64>, written: u64) -> u64 {
    match size {
        Some(size) => written.min(size.saturating_sub(HOLD_BACK)),
        None => 0,
    }
}

fn open_either(paths: &[PathBuf; 2]) -> io::Result<File> {
    File::open(&paths[0]).or_else(|_| File::open(&paths[1]))
}

/// Reads the next chunk (the file is positioned at `pos`) and queues it. `Ok(false)` when the
/// client has gone.
fn send_chunk(
    file: &mut File,
    pos: &mut u64,
    end: u64,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<bool> {
    let want = (end - *pos).min(CHUNK);
    let mut buf = Vec::with_capacity(want as usize);
    file.take(want).read_to_end(&mut buf)?;
    if buf.len() as u64 != want {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob file shorter than recorded",
        ));
    }
    *pos += want;
    Ok(tx.blocking_send(Ok(Bytes::from(buf))).is_ok())
}

/// A body fed by a channel, with an exact size hint so hyper sends `Content-Length`.
struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob stream ended early",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_the_tail_until_verified() {
        assert_eq!(releasable(None, 10), 0);
        assert_eq!(releasable(Some(1000), 1000), 0);
        let size = 10 * HOLD_BACK;
        assert_eq!(releasable(Some(size), HOLD_BACK), HOLD_BACK);
        assert_eq!(releasable(Some(size), size), size - HOLD_BACK);
    }
}
