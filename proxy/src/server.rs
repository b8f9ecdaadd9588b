//! The listeners: the registry API (HTTP/1.1 and HTTP/2, plain or TLS), the metrics listener,
//! the request stack, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::app::App;
use crate::body::{full, ResponseBody};
use crate::conns::{Admitted, Connections, Refused};
use crate::linger::Lingerers;
use crate::tls::Tls;

/// The configuration in force, swapped whole on reload.
pub type State = Arc<ArcSwap<App>>;

/// Serves until `shutdown` resolves, then lets requests in flight finish for up to `grace`.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    serve_state(Arc::new(ArcSwap::new(app)), None, listener, shutdown, grace).await
}

/// [`serve`] with a swappable configuration and optional TLS.
pub async fn serve_state(
    state: State,
    tls: Option<Arc<Tls>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let limits = state.load().config.server.clone();
    let service = crate::stack::service(state);
    let graceful = GracefulShutdown::new();
    let lingerers = Lingerers::new();
    let builder = builder(&limits);
    let connections = Connections::new(limits.max_connections, limits.max_connections_per_peer);
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => {
                        backoff.reset();
                        conn
                    }
                    Err(e) => {
                        // Out of descriptors (or a transient error): wait longer each time,
                        // and say so once a second, not once per attempt.
                        backoff.wait(&e).await;
                        continue;
                    }
                };
                let admitted = match connections.admit(peer.ip()) {
                    Ok(a) => a,
                    Err(why) => {
                        backoff.refused(peer, why);
                        continue; // dropping the stream closes it
                    }
                };
                let _ = stream.set_nodelay(true);
                let stream = lingerers.wrap(stream);
                // The client's address, for the layers that count by it; and a mark once its
                // first request arrived (until then, the connection is on a deadline).
                let first = FirstRequest::new(limits.header_read_timeout);
                let seen = first.clone();
                let svc = TowerToHyperService::new(service.clone().map_request(move |mut req: Request<Incoming>| {
                    seen.arrived();
                    req.extensions_mut().insert(crate::stack::Peer(peer));
                    req
                }));
                // A watcher per connection: shutdown waits for every one, handshakes included.
                let watcher = graceful.watcher();
                match &tls {
                    None => spawn_conn(&builder, watcher, stream, svc, peer, (admitted, first)),
                    Some(tls) => {
                        let acceptor = tls.acceptor();
                        let builder = builder.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => spawn_conn(&builder, watcher, tls_stream, svc, peer, (admitted, first)),
                                Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for requests in flight");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "requests still in flight after the grace period; closing"
        );
    }
    Ok(())
}

fn spawn_conn<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    svc: S,
    peer: SocketAddr,
    (admitted, first): (Admitted, FirstRequest),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
    let conn = watcher.watch(conn);
    tokio::spawn(async move {
        // hyper's header deadline starts only once it has told HTTP/1 from HTTP/2 by the first
        // bytes; a client that sends nothing (or half a preface) would hold the connection.
        let deadline = tokio::time::sleep(first.within);
        tokio::pin!(conn, deadline);
        loop {
            tokio::select! {
                ended = &mut conn => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = &mut deadline, if !first.has_arrived() => {
                    if !first.has_arrived() {
                        tracing::debug!(%peer, "no request in time: connection closed");
                        break;
                    }
                }
            }
        }
        drop(admitted);
    });
}

/// Whether a connection's first request has arrived, and how long it may take.
#[derive(Clone)]
struct FirstRequest {
    arrived: Arc<std::sync::atomic::AtomicBool>,
    within: Duration,
}

impl FirstRequest {
    fn new(within: Duration) -> FirstRequest {
        FirstRequest {
            arrived: Arc::default(),
            within,
        }
    }

    fn arrived(&self) {
        self.arrived
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn has_arrived(&self) -> bool {
        self.arrived.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The connection builder, with the limits a hostile client meets: a deadline for request
/// headers (and for an idle keep-alive connection's next request), header sizes, HTTP/2 streams.
fn builder(limits: &crate::config::ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let header_bytes = usize::try_from(limits.max_header_size.as_u64()).unwrap_or(usize::MAX);
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(header_bytes);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    b
}

/// Accept errors and refusals, rate-limited in the log; a growing pause after accept errors.
#[derive(Default)]
struct AcceptBackoff {
    pause: Duration,
    last_log: Option<std::time::Instant>,
    quiet: u64,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.pause = Duration::ZERO;
    }

    async fn wait(&mut self, e: &std::io::Error) {
        self.pause = (self.pause * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        if self.may_log() {
            let (pause, suppressed) = (self.pause, self.take_quiet());
            tracing::warn!(error = %e, ?pause, suppressed, "accept failed");
        }
        tokio::time::sleep(self.pause).await;
    }

    fn refused(&mut self, peer: SocketAddr, why: Refused) {
        if self.may_log() {
            tracing::warn!(%peer, ?why, suppressed = self.take_quiet(), "connection refused: at the connection limit");
        }
    }

    fn may_log(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.quiet += 1;
            return false;
        }
        self.last_log = Some(now);
        true
    }

    fn take_quiet(&mut self) -> u64 {
        std::mem::take(&mut self.quiet)
    }
}

/// The metrics listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`.
pub async fn serve_metrics(state: State, listener: TcpListener) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = state.load_full();
            async move { Ok::<_, Infallible>(metrics_response(&app, req.uri().path())) }
        });
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn metrics_response(app: &App, path: &str) -> Response<ResponseBody> {
    let (status, body, content_type) = match path {
        "/metrics" => (
            StatusCode::OK,
            app.metrics.render(app.store.size()),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        "/healthz" => (StatusCode::OK, "ok".into(), "text/plain"),
        "/readyz" => {
            let r = crate::handlers::readiness(app);
            (StatusCode::OK, r, "application/json")
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    };
    let body = Bytes::from(body);
    let len = body.len();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
