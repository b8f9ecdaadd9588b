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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::app::App;
use crate::body::{full, ResponseBody};
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
    let service = crate::stack::service(state);
    let graceful = GracefulShutdown::new();
    let lingerers = Lingerers::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let stream = lingerers.wrap(stream);
                // The client's address, for the layers that count by it.
                let svc = TowerToHyperService::new(service.clone().map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(crate::stack::Peer(peer));
                    req
                }));
                // A watcher per connection: shutdown waits for every one, handshakes included.
                let watcher = graceful.watcher();
                match &tls {
                    None => spawn_conn(&builder, watcher, stream, svc, peer),
                    Some(tls) => {
                        let acceptor = tls.acceptor();
                        let builder = builder.clone();
                        tokio::spawn(async move {
                            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                Ok(Ok(tls_stream)) => spawn_conn(&builder, watcher, tls_stream, svc, peer),
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
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
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
