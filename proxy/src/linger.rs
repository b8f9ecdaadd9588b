//! Lingering close. When a connection ends, its last bytes may still sit in the kernel's send
//! buffer, waiting for a slow reader. If the process exits then, the kernel resets the orphaned
//! socket and the client loses the tail of its download. So a finished connection half-closes
//! and waits (bounded) for the peer to close, and shutdown waits for those waits.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How long a finished connection waits for its peer to read the rest and close.
const LINGER: Duration = Duration::from_secs(10);

/// Counts connections from accept until their lingering close has finished, so that shutdown
/// can wait for the last byte of the last download.
#[derive(Clone)]
pub struct Lingerers {
    count: Arc<watch::Sender<usize>>,
}

/// A TCP stream that lingers when dropped.
pub struct Lingering {
    stream: Option<TcpStream>,
    lingerers: Lingerers,
}

impl Lingerers {
    pub fn new() -> Lingerers {
        Lingerers {
            count: Arc::new(watch::channel(0).0),
        }
    }

    pub fn wrap(&self, stream: TcpStream) -> Lingering {
        self.count.send_modify(|n| *n += 1);
        Lingering {
            stream: Some(stream),
            lingerers: self.clone(),
        }
    }

    /// Resolves when every connection has closed and drained.
    pub async fn drained(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Default for Lingerers {
    fn default() -> Self {
        Lingerers::new()
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let count = Arc::clone(&self.lingerers.count);
        let (Some(mut stream), Ok(handle)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            count.send_modify(|n| *n -= 1);
            return;
        };
        handle.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                let _ = stream.shutdown().await;
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            count.send_modify(|n| *n -= 1);
        });
    }
}

impl Lingering {
    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("stream present until drop"))
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}
