//! The S3 API the shared cache tier talks to: moto (`moto_server`, PyPI `moto[server]`) on a
//! free loopback port, in memory, with one bucket; and blocking helpers that look at, tamper
//! with and count what the proxy stored there.
//!
//! `scripts/setup --test` installs moto into a venv of its own; `PORTCULLIS_MOTO_SERVER`
//! names another `moto_server`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::process::Daemon;
use crate::registry::access_line;
use crate::tools::{blocking_http, free_port, RawResponse};

/// The one bucket every server is started with.
const BUCKET: &str = "portcullis-test";

/// Added to the query of every request this helper makes, so that
/// [`S3Server::count_requests`] counts the proxy's requests only. S3 ignores unknown
/// parameters, and so does moto.
const MARKER: &str = "portcullis-testkit=1";

/// moto answers a request without `Authorization` as an anonymous one (403 on an existing
/// private object), but checks no signature: any SigV4-shaped header passes.
const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
                             SignedHeaders=host, Signature=0";

/// A running `moto_server` with the bucket [`S3Server::bucket`]. Killed on drop, and
/// everything it stored goes with it.
pub struct S3Server {
    pub addr: SocketAddr,
    /// `workdir/s3-<port>/moto.log`: stdout and stderr, with werkzeug's access log that
    /// [`S3Server::count_requests`] reads, appended across restarts.
    pub log: PathBuf,
    daemon: Daemon,
}

impl S3Server {
    /// Starts `moto_server` on `127.0.0.1:<free port>`, logging under `workdir/s3-<port>/`,
    /// waits until it answers (20 s; panics with the log tail) and creates the bucket.
    /// Panics, saying how to install it, if there is no `moto_server`.
    pub fn start(workdir: &Path) -> S3Server {
        let program = moto_server();
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = workdir.join(format!("s3-{port}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let log = dir.join("moto.log");
        let args = ["-H", "127.0.0.1", "-p", &port.to_string()].map(str::to_owned);
        let name = format!("moto_server on {addr}");
        let mut daemon = Daemon::new(&name, &program, args.to_vec(), log.clone());
        // Each access-log line is in the file by the time its response is read.
        daemon.envs(&[("PYTHONUNBUFFERED".to_string(), "1".to_string())]);
        let mut s3 = S3Server { addr, log, daemon };
        s3.run();
        s3
    }

    fn run(&mut self) {
        self.daemon.spawn();
        // ListBuckets: 200 once it serves.
        let probe = format!("/?{MARKER}");
        self.daemon.wait_ready_at(self.addr, &probe, |s| s == 200);
        let path = format!("/{BUCKET}");
        self.exchange("PUT", &path, &[], b"")
            .expect_2xx("PUT", &path);
    }

    /// Kills the server (SIGKILL) and waits for it: the bucket is gone, connections are
    /// refused. The log is kept.
    pub fn stop(&mut self) {
        self.daemon.kill();
    }

    /// Starts it again on the same port (stopping it first if running), with the bucket made
    /// again, empty: moto keeps nothing across runs.
    pub fn start_again(&mut self) {
        self.stop();
        self.run();
    }

    /// `"http://127.0.0.1:PORT"`, the endpoint for path-style requests.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// What the proxy needs in its environment to sign requests that moto accepts (any
    /// credentials will do).
    pub fn proxy_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    }

    /// Every key in the bucket that starts with `prefix`, in S3's (lexicographic) order
    /// (ListObjectsV2, all pages).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{BUCKET}?list-type=2&prefix={}", encode(prefix, false));
            if let Some(t) = &token {
                path.push_str(&format!("&continuation-token={}", encode(t, false)));
            }
            let resp = self.exchange("GET", &path, &[], &[]);
            resp.expect_2xx("GET", &path);
            let xml = String::from_utf8_lossy(&resp.body);
            keys.extend(tag_texts(&xml, "Key"));
            token = tag_texts(&xml, "NextContinuationToken").into_iter().next();
            if !is_truncated(&xml) || token.is_none() {
                return keys;
            }
        }
    }

    /// The object's bytes, `None` if there is no such key.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let path = object_path(key);
        let resp = self.exchange("GET", &path, &[], &[]);
        if resp.status == 404 {
            return None;
        }
        resp.expect_2xx("GET", &path);
        Some(resp.body)
    }

    /// Writes `bytes` as `key`, replacing any object there (unconditionally: to tamper with
    /// what the proxy stored).
    pub fn put(&self, key: &str, bytes: &[u8]) {
        let path = object_path(key);
        let content_type = [("Content-Type", "application/octet-stream")];
        self.exchange("PUT", &path, &content_type, bytes)
            .expect_2xx("PUT", &path);
    }

    /// Deletes `key` (no error if it is not there, as in S3).
    pub fn delete(&self, key: &str) {
        let path = object_path(key);
        self.exchange("DELETE", &path, &[], &[])
            .expect_2xx("DELETE", &path);
    }

    /// How many multipart uploads were started and neither completed nor aborted
    /// (ListMultipartUploads; moto lists them all on one page).
    pub fn uploads_in_progress(&self) -> usize {
        let path = format!("/{BUCKET}?uploads");
        let resp = self.exchange("GET", &path, &[], &[]);
        resp.expect_2xx("GET", &path);
        let xml = String::from_utf8_lossy(&resp.body);
        assert!(
            !is_truncated(&xml),
            "GET {path}: more than one page of uploads:\n{xml}"
        );
        xml.matches("<Upload>").count()
    }

    /// Counts the requests moto logged whose method equals `method` and whose URI (path and
    /// query, percent-encoded as sent: `/portcullis-test/some/key?uploadId=…`) contains
    /// `path_contains`. The requests of this helper's own methods are left out. The count
    /// covers the whole log, across restarts.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(strip_ansi)
            .filter(|line| {
                access_line(line).is_some_and(|(m, p)| {
                    m == method && p.contains(path_contains) && !p.contains(MARKER)
                })
            })
            .count()
    }

    /// One blocking exchange, marked as this helper's and signed the way moto wants; panics
    /// on a transport error only.
    fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        let sep = if path.contains('?') { '&' } else { '?' };
        let path = format!("{path}{sep}{MARKER}");
        let mut all = vec![("Authorization", AUTHORIZATION)];
        all.extend_from_slice(headers);
        blocking_http(self.addr, method, &path, &all, body)
            .unwrap_or_else(|e| panic!("{method} {}{path}: {e}", self.endpoint()))
    }
}

/// `PORTCULLIS_MOTO_SERVER`, else the venv that `scripts/setup --test` makes.
fn moto_server() -> PathBuf {
    let path = match std::env::var_os("PORTCULLIS_MOTO_SERVER") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .expect("neither XDG_CACHE_HOME nor HOME is set");
            cache.join("portcullis/moto-venv/bin/moto_server")
        }
    };
    assert!(
        path.is_file(),
        "portcullis-testkit: no moto_server at {}. Install it with: scripts/setup --test \
         (or point PORTCULLIS_MOTO_SERVER at one)",
        path.display()
    );
    path
}

/// `/<bucket>/<key>`, the key percent-encoded but for its slashes.
fn object_path(key: &str) -> String {
    format!("/{BUCKET}/{}", encode(key, true))
}

/// Percent-encodes all but RFC 3986's unreserved characters (and `/` if `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b'/' if keep_slash => "/".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The unescaped text of every `<tag>…</tag>` in `xml`, in order. S3's listings nest no
/// element inside one with the same name, so a text search is enough.
fn tag_texts(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(unescape(&after[..end]));
        rest = &after[end + close.len()..];
    }
    out
}

/// Whether a listing says there is another page.
fn is_truncated(xml: &str) -> bool {
    tag_texts(xml, "IsTruncated").first().map(String::as_str) == Some("true")
}

/// XML's five predefined entities (`&amp;` last, so that `&amp;lt;` stays `&lt;`).
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The line without ANSI colour sequences: werkzeug colours the request of every non-2xx
/// line (`"\x1b[33mGET /b/k HTTP/1.1\x1b[0m" 404 -`) even when it logs to a file.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: `ESC [`, parameter bytes, then one final byte in `@`..=`~`.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_coloured_access_lines() {
        let l = "127.0.0.1 - - [30/Nov/2026 16:38:51] \"\x1b[31m\x1b[1mPUT /b/k HTTP/1.1\x1b[0m\" 412 -";
        assert_eq!(access_line(&strip_ansi(l)), Some(("PUT", "/b/k")));
        let plain = "127.0.0.1 - - [30/Nov/2026 16:38:40] \"GET / HTTP/1.1\" 200 -";
        assert_eq!(strip_ansi(plain), plain);
    }

    #[test]
    fn lists_unescaped_keys() {
        let xml = "<R><IsTruncated>false</IsTruncated><Contents><Key>x/c&amp;d</Key></Contents>\
                   <Contents><Key>y</Key></Contents></R>";
        assert_eq!(tag_texts(xml, "Key"), ["x/c&d", "y"]);
        assert!(!is_truncated(xml));
        assert!(tag_texts(xml, "NextContinuationToken").is_empty());
    }

    #[test]
    fn encodes_keys() {
        assert_eq!(encode("a b/c&d~", true), "a%20b/c%26d~");
        assert_eq!(encode("x/", false), "x%2F");
    }
}
