//! The upstream client: hyper 1 over rustls, with the registry token flow, basic auth, redirects
//! that never carry credentials to another host, and connect, read and overall timeouts.

mod auth;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use url::Url;

pub use auth::{Challenge, Credentials, SecretError, TokenCache};
pub use tls::CaFileError;

use crate::config::UpstreamConfig;
use crate::error::{ProxyError, Report};
use crate::metrics::{Metrics, UpstreamLabel};

const MAX_REDIRECTS: usize = 5;
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// One configured upstream registry.
pub struct Upstream {
    pub name: String,
    base: Url,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    creds: Option<Credentials>,
    tokens: Mutex<TokenCache>,
    /// The upstream answered with a Basic challenge once: send credentials up front.
    basic: AtomicBool,
    /// An offline mirror never connects: every exchange fails before any DNS or TCP.
    offline: bool,
    metrics: Metrics,
    /// The outcome of the last exchange, for `/readyz`.
    last: Mutex<Option<(std::time::SystemTime, Result<u16, ProxyError>)>>,
    pub read_timeout: Duration,
    pub timeout: Duration,
}

/// An `[[upstream]]` a client cannot be built for.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("[[upstream]] {name:?}: {source}")]
    Tls {
        name: String,
        #[source]
        source: CaFileError,
    },
    #[error("[[upstream]] {name:?}: {source}")]
    Credentials {
        name: String,
        #[source]
        source: SecretError,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Upstream {
    pub fn new(
        cfg: &UpstreamConfig,
        offline: bool,
        metrics: Metrics,
    ) -> Result<Upstream, UpstreamSetupError> {
        let tls = tls::client_config(cfg.ca_file.as_deref()).map_err(|source| {
            UpstreamSetupError::Tls {
                name: cfg.name.clone(),
                source,
            }
        })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // The timer lets the pool close idle connections by itself; without one they stay
            // open until the pool is next used (the soak found them held for minutes).
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        let mut base = cfg.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Upstream {
            name: cfg.name.clone(),
            base,
            client,
            creds: Credentials::load(cfg).map_err(|source| UpstreamSetupError::Credentials {
                name: cfg.name.clone(),
                source,
            })?,
            tokens: Mutex::new(TokenCache::default()),
            basic: AtomicBool::new(false),
            offline,
            metrics,
            last: Mutex::new(None),
            read_timeout: cfg.read_timeout,
            timeout: cfg.timeout,
        })
    }

    /// Sends `method /v2/<repo>/<tail>`, answering one auth challenge. Any HTTP status is `Ok`;
    /// only transport failures are errors.
    pub async fn send(
        &self,
        method: Method,
        repo: &str,
        tail: &str,
        accept: Option<&str>,
    ) -> Result<Response<Incoming>, ProxyError> {
        if self.offline {
            return Err(ProxyError::Unavailable(format!(
                "{}: this mirror is offline; only cached content is served",
                self.name
            )));
        }
        let url = self
            .base
            .join(&format!("v2/{repo}/{tail}"))
            .map_err(|e| ProxyError::Internal(format!("upstream url: {e}")))?;
        let scope = format!("repository:{repo}:pull");
        let mut authorization = self.cached_authorization(&scope);
        let mut answered = false;
        loop {
            let resp = self
                .exchange(&method, url.clone(), accept, authorization.as_deref())
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            answered = true;
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse);
            authorization = match challenge {
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: asked,
                }) => {
                    let scope = asked.unwrap_or_else(|| scope.clone());
                    let token = self.fetch_token(&realm, service.as_deref(), &scope).await?;
                    Some(format!("Bearer {token}"))
                }
                Some(Challenge::Basic) if self.creds.is_some() => {
                    self.basic.store(true, Ordering::Relaxed);
                    self.creds.as_ref().map(Credentials::basic)
                }
                _ => return Ok(resp),
            };
        }
    }

    fn cached_authorization(&self, scope: &str) -> Option<String> {
        if self.basic.load(Ordering::Relaxed) {
            return self.creds.as_ref().map(Credentials::basic);
        }
        let token = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(scope)?;
        Some(format!("Bearer {token}"))
    }

    /// One request, following redirects. `Authorization` goes only to the upstream's own origin.
    async fn exchange(
        &self,
        method: &Method,
        mut url: Url,
        accept: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Response<Incoming>, ProxyError> {
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = url.origin() == self.base.origin();
            let mut req = Request::builder()
                .method(method.clone())
                .uri(url.as_str())
                .header(
                    header::USER_AGENT,
                    concat!("portcullis/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(accept) = accept {
                req = req.header(header::ACCEPT, accept);
            }
            if let (Some(auth), true) = (authorization, same_origin) {
                req = req.header(header::AUTHORIZATION, auth);
            }
            let req = req
                .body(Empty::new())
                .map_err(|e| ProxyError::Internal(format!("upstream request: {e}")))?;
            let resp = self.request(req).await?;
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok());
            match (resp.status().is_redirection(), location) {
                (true, Some(location)) => {
                    let next = url.join(location).map_err(|e| {
                        ProxyError::BadUpstream(format!("{}: bad redirect: {e}", self.name))
                    })?;
                    if url.scheme() == "https" && next.scheme() != "https" {
                        return Err(ProxyError::BadUpstream(format!(
                            "{}: refused a redirect from https to {}",
                            self.name,
                            next.scheme()
                        )));
                    }
                    url = next;
                }
                _ => return Ok(resp),
            }
        }
        Err(ProxyError::BadUpstream(format!(
            "{}: more than {MAX_REDIRECTS} redirects",
            self.name
        )))
    }

    async fn request(&self, req: Request<Empty<Bytes>>) -> Result<Response<Incoming>, ProxyError> {
        let started = std::time::Instant::now();
        let label = UpstreamLabel {
            upstream: self.name.clone(),
        };
        let result = self.exchange_once(req).await;
        let seen = match &result {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(e.clone()),
        };
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((std::time::SystemTime::now(), seen));
        match &result {
            Ok(_) => self
                .metrics
                .upstream_latency
                .get_or_create(&label)
                .observe(started.elapsed().as_secs_f64()),
            Err(_) => {
                self.metrics.upstream_errors.get_or_create(&label).inc();
            }
        }
        result
    }

    async fn exchange_once(
        &self,
        req: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.read_timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::Unavailable(format!(
                "{} sent no response within {:?}",
                self.name, self.read_timeout
            ))),
            // hyper says "client error (Connect)"; what failed is in its sources.
            Ok(Err(e)) => Err(ProxyError::Unavailable(format!(
                "{}: {}",
                self.name,
                Report(&e)
            ))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// The token endpoint named by a Bearer challenge.
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, ProxyError> {
        let refused = |why: String| ProxyError::Denied(format!("{}: token: {why}", self.name));
        let mut url =
            Url::parse(realm).map_err(|e| refused(format!("bad realm {realm:?}: {e}")))?;
        if self.base.scheme() == "https" && url.scheme() != "https" {
            return Err(refused(format!("realm {realm} is not https")));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = Request::builder().uri(url.as_str()).header(
            header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        );
        if let Some(creds) = &self.creds {
            req = req.header(header::AUTHORIZATION, creds.basic());
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| ProxyError::Internal(format!("token request: {e}")))?;
        let resp = self.request(req).await?;
        if !resp.status().is_success() {
            return Err(refused(format!(
                "the token endpoint answered {}",
                resp.status()
            )));
        }
        let body = read_limited(resp.into_body(), MAX_TOKEN_RESPONSE, self.read_timeout).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("unreadable token response: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .ok_or_else(|| refused("token response holds no token".into()))?;
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .put(scope, token.clone(), parsed.expires_in);
        Ok(token)
    }
}

impl Upstream {
    /// How the last exchange went, as `/readyz` reports it (nothing is probed).
    pub fn reachability(&self) -> serde_json::Value {
        match &*self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            None if self.offline => serde_json::json!({ "state": "offline" }),
            None => serde_json::json!({ "state": "no request yet" }),
            Some((at, outcome)) => {
                let at = humantime::format_rfc3339_seconds(*at).to_string();
                match outcome {
                    Ok(status) => {
                        serde_json::json!({ "state": "reachable", "status": status, "at": at })
                    }
                    Err(e) => serde_json::json!({
                        "state": "unreachable",
                        "error": e.to_string(),
                        "at": at,
                    }),
                }
            }
        }
    }
}

/// Reads a whole (small) body, refusing more than `limit` bytes and stalls over `read_timeout`.
pub async fn read_limited(
    mut body: Incoming,
    limit: usize,
    read_timeout: Duration,
) -> Result<Bytes, ProxyError> {
    let mut buf = BytesMut::new();
    loop {
        let frame = tokio::time::timeout(read_timeout, body.frame())
            .await
            .map_err(|_| {
                ProxyError::Unavailable(format!("upstream stalled for {read_timeout:?}"))
            })?;
        let Some(frame) = frame else {
            return Ok(buf.freeze());
        };
        let frame = frame.map_err(|e| ProxyError::Unavailable(format!("upstream body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ProxyError::TooLarge(format!("more than {limit} bytes")));
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// Maps a non-success upstream status to what the client should see. `not_found` is the error
/// for a 404 (manifest, blob or name unknown).
pub fn status_error(
    upstream: &str,
    status: StatusCode,
    what: &str,
    not_found: impl FnOnce() -> ProxyError,
) -> ProxyError {
    match status {
        StatusCode::NOT_FOUND => not_found(),
        StatusCode::TOO_MANY_REQUESTS => {
            ProxyError::TooManyRequests(format!("{upstream} rate-limited {what}"))
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ProxyError::Denied(format!(
            "{upstream} refused access to {what} ({status}); check the upstream's credentials"
        )),
        s if s.is_server_error() => {
            ProxyError::Unavailable(format!("{upstream} answered {status} for {what}"))
        }
        _ => ProxyError::BadUpstream(format!("{upstream} answered {status} for {what}")),
    }
}

/// The `Content-Length` of a response, if present and sane.
pub fn content_length(resp: &Response<Incoming>) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
