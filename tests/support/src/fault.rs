//! An in-process fault-injecting upstream, in addition to (never instead of) the real registry:
//! canned statuses, a server that never answers, relays to a real registry that throttle, cut,
//! authenticate or redirect, and a referrers API in front of one.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// What the fault server does with each connection.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer every request with this status and an OCI error body.
    Status(u16),
    /// Accept, read the request, never answer.
    Stall,
    /// Relay to a real server, sending its answers back at this many bytes per second.
    Throttle {
        to: SocketAddr,
        bytes_per_sec: usize,
    },
    /// Relay to a real server, cutting each connection after `after` bytes of answers.
    Cut { to: SocketAddr, after: usize },
    /// A registry behind the token flow: requests without `Authorization: Bearer <token>` get a
    /// 401 challenge whose realm is this server's `/token`, which hands out `token` for basic
    /// credentials `user:pass`. Authorised connections are relayed to `to`.
    TokenGate {
        to: SocketAddr,
        user: String,
        pass: String,
        token: String,
    },
    /// A registry behind basic auth whose blobs live elsewhere: requests without credentials
    /// get a Basic challenge; blob GETs get `307` to `cdn` + the same path; the rest is relayed
    /// to `to`.
    BasicRedirect { to: SocketAddr, cdn: String },
    /// Relays to `to`, counting requests that carry an `Authorization` header (see
    /// [`FaultServer::authorized_requests`]).
    Record { to: SocketAddr },
    /// A registry with the OCI 1.1 referrers API in front of `to` (which has none): every
    /// `GET …/referrers/<digest>` is answered `200` with `index` as an OCI image index; every
    /// other request is relayed to `to`.
    Referrers { to: SocketAddr, index: Vec<u8> },
}

/// A running fault server. Stops accepting on drop.
pub struct FaultServer {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    tokens: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultServer {
    pub fn start(fault: Fault) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault server");
        let addr = listener.local_addr().expect("fault server addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tokens = Arc::new(AtomicUsize::new(0));
        let (conns, stopped, issued) = (
            Arc::clone(&connections),
            Arc::clone(&stop),
            Arc::clone(&tokens),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                conns.fetch_add(1, Ordering::Relaxed);
                let fault = fault.clone();
                let ctx = Ctx {
                    addr,
                    stop: Arc::clone(&stopped),
                    tokens: Arc::clone(&issued),
                };
                thread::spawn(move || serve(stream, fault, ctx));
            }
        });
        FaultServer {
            addr,
            connections,
            tokens,
            stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that carried an `Authorization` header, seen by a [`Fault::Record`].
    pub fn authorized_requests(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Tokens handed out so far by a [`Fault::TokenGate`].
    pub fn tokens_issued(&self) -> usize {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

struct Ctx {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tokens: Arc<AtomicUsize>,
}

fn serve(mut stream: TcpStream, fault: Fault, ctx: Ctx) {
    let stop = ctx.stop;
    match fault {
        Fault::Status(code) => {
            while read_head(&mut stream).is_some() {
                let body =
                    format!(r#"{{"errors":[{{"code":"UNKNOWN","message":"injected {code}"}}]}}"#);
                let resp = format!(
                    "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        }
        Fault::Stall => {
            let _ = read_head(&mut stream);
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
            }
        }
        Fault::Throttle { to, bytes_per_sec } => {
            relay(stream, to, Vec::new(), usize::MAX, Some(bytes_per_sec))
        }
        Fault::Cut { to, after } => relay(stream, to, Vec::new(), after, None),
        Fault::Record { to } => {
            if let Some(head) = read_head(&mut stream) {
                if has_authorization(&head) {
                    ctx.tokens.fetch_add(1, Ordering::Relaxed);
                }
                relay(stream, to, head, usize::MAX, None);
            }
        }
        Fault::BasicRedirect { to, cdn } => {
            while let Some(head) = read_head(&mut stream) {
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let resp = if !has_authorization(&head) {
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n".to_owned()
                } else if text.starts_with("GET ") && path.contains("/blobs/") {
                    format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {cdn}{path}\r\nContent-Length: 0\r\n\r\n")
                } else if forward_once(&mut stream, to, &text) {
                    continue;
                } else {
                    return;
                };
                if stream.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        }
        Fault::Referrers { to, index } => {
            while let Some(head) = read_head(&mut stream) {
                let text = String::from_utf8_lossy(&head).into_owned();
                let asks_referrers = text.starts_with("GET ")
                    && text
                        .split_whitespace()
                        .nth(1)
                        .is_some_and(|p| p.contains("/referrers/"));
                if !asks_referrers {
                    if forward_once(&mut stream, to, &text) {
                        continue;
                    }
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.index.v1+json\r\nContent-Length: {}\r\n\r\n",
                    index.len()
                );
                if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&index).is_err() {
                    return;
                }
            }
        }
        Fault::TokenGate {
            to,
            user,
            pass,
            token,
        } => {
            use base64::Engine as _;
            let basic = format!(
                "basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )
            .to_ascii_lowercase();
            let bearer = format!("bearer {token}").to_ascii_lowercase();
            while let Some(head) = read_head(&mut stream) {
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let authorization = text
                    .lines()
                    .find_map(|l| l.strip_prefix("authorization: "))
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                let resp = if text.starts_with("get /token") {
                    if authorization == basic {
                        ctx.tokens.fetch_add(1, Ordering::Relaxed);
                        let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
                        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                    } else {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n".to_owned()
                    }
                } else if authorization == bearer {
                    return relay(stream, to, head, usize::MAX, None);
                } else {
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{}/token\",service=\"test\"\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
                        ctx.addr
                    )
                };
                if stream.write_all(resp.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Relays `client` to `to` (after sending `first` upstream), passing at most `limit` bytes of
/// answers back, optionally at `rate` bytes per second.
fn relay(client: TcpStream, to: SocketAddr, first: Vec<u8>, limit: usize, rate: Option<usize>) {
    let Ok(mut upstream) = TcpStream::connect(to) else {
        return;
    };
    if upstream.write_all(&first).is_err() {
        return;
    }
    let (mut up_read, mut client_write) = (
        upstream.try_clone().expect("clone"),
        client.try_clone().expect("clone"),
    );
    let mut client_read = client;
    thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let chunk = rate.map_or(64 * 1024, |r| (r / 20).max(1));
    let mut buf = vec![0u8; chunk];
    let mut sent = 0;
    while sent < limit {
        match up_read.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let n = n.min(limit - sent);
                if client_write.write_all(&buf[..n]).is_err() {
                    break;
                }
                sent += n;
                if rate.is_some() {
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    let _ = client_write.shutdown(Shutdown::Both);
    let _ = up_read.shutdown(Shutdown::Both);
}

/// Sends one request head to `to` with `Connection: close` and copies the whole answer back, so
/// that the next request on the client's connection is looked at again. `false` on any failure.
fn forward_once(client: &mut TcpStream, to: SocketAddr, head: &str) -> bool {
    let Ok(mut up) = TcpStream::connect(to) else {
        return false;
    };
    let (first, rest) = head.split_once("\r\n").unwrap_or((head, ""));
    let head = format!("{first}\r\nConnection: close\r\n{rest}");
    up.write_all(head.as_bytes()).is_ok() && std::io::copy(&mut up, client).is_ok()
}

fn has_authorization(head: &[u8]) -> bool {
    String::from_utf8_lossy(head)
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("authorization:"))
}

/// Reads one request head (requests from the proxy have no body). `None` at EOF.
fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}
