//! The upstream registry: distribution 2.8 (`docker-registry serve`) on a free loopback port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::process::Daemon;
use crate::tools::{blocking_http, free_port, sha256_hex};

/// A running distribution registry. Killed on drop; its files stay in the work dir.
pub struct Registry {
    pub addr: SocketAddr,
    /// Storage `rootdirectory` (blobs live under `docker/registry/v2/blobs`).
    pub root: PathBuf,
    /// Combined stdout + stderr, including the access log that [`Registry::count_requests`] reads.
    pub log: PathBuf,
    config: PathBuf,
    upstream: Option<String>,
    htpasswd: Option<PathBuf>,
    tls: Option<(PathBuf, PathBuf)>,
    daemon: Daemon,
}

impl Registry {
    /// Starts a plain registry under `workdir/registry-<port>/` and waits until it answers.
    pub fn start(workdir: &Path) -> Registry {
        Registry::start_with(workdir, None)
    }

    /// Starts distribution in pull-through proxy mode (`proxy.remoteurl = upstream_url`): the
    /// peer that benchmarks compare against. Distribution panics at start if the upstream is down.
    pub fn start_proxy_of(workdir: &Path, upstream_url: &str) -> Registry {
        Registry::start_with(workdir, Some(upstream_url))
    }

    fn start_with(workdir: &Path, upstream: Option<&str>) -> Registry {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = workdir.join(format!("registry-{port}"));
        let root = dir.join("storage");
        std::fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        let log = dir.join("registry.log");
        let args = vec![
            "serve".to_string(),
            dir.join("config.yml").display().to_string(),
        ];
        let name = match upstream {
            Some(_) => format!("docker-registry (proxy mode) on {addr}"),
            None => format!("docker-registry on {addr}"),
        };
        let daemon = Daemon::new(&name, Path::new("docker-registry"), args, log.clone());
        let mut reg = Registry {
            addr,
            root,
            log,
            config: dir.join("config.yml"),
            upstream: upstream.map(str::to_owned),
            htpasswd: None,
            tls: None,
            daemon,
        };
        reg.run();
        reg
    }

    /// Restarts on the same port and storage behind basic auth (a bcrypt `htpasswd` file) and/or
    /// TLS (PEM certificate and key). Push fixtures before: [`crate::push`] sends no credentials.
    pub fn secure(&mut self, htpasswd: Option<&Path>, tls: Option<(&Path, &Path)>) {
        self.htpasswd = htpasswd.map(Path::to_owned);
        self.tls = tls.map(|(c, k)| (c.to_owned(), k.to_owned()));
        self.restart();
    }

    fn write_config(&self) {
        let mut config = format!(
            "version: 0.1\n\
             log: {{level: info, accesslog: {{disabled: false}}}}\n\
             storage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n",
            self.root.display()
        );
        match &self.tls {
            Some((cert, key)) => config.push_str(&format!(
                "http: {{addr: {}, tls: {{certificate: {}, key: {}}}}}\n",
                self.addr,
                cert.display(),
                key.display()
            )),
            None => config.push_str(&format!("http: {{addr: {}}}\n", self.addr)),
        }
        if let Some(url) = &self.upstream {
            config.push_str(&format!("proxy: {{remoteurl: {url}}}\n"));
        }
        if let Some(file) = &self.htpasswd {
            config.push_str(&format!(
                "auth: {{htpasswd: {{realm: portcullis-test, path: {}}}}}\n",
                file.display()
            ));
        }
        std::fs::write(&self.config, config).expect("write registry config");
    }

    fn run(&mut self) {
        self.write_config();
        self.daemon.spawn();
        // Any HTTP answer means it is serving (401 would be an auth-enabled registry).
        self.daemon.wait_ready(self.addr, |_| true);
    }

    /// Kills the registry (SIGKILL) and waits for it. Storage and log are kept.
    pub fn stop(&mut self) {
        self.daemon.kill();
    }

    /// Starts it again on the same port and storage (stopping it first if running).
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// `"http://127.0.0.1:PORT"` (`https` once [`Registry::secure`] gave it TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `"127.0.0.1:PORT"`, as used in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// PID of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// Counts access-log lines (`... "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 ...`) whose method
    /// equals `method` and whose request URI contains `path_contains`. `HEAD` and `GET` are
    /// counted apart. The count covers the whole log, across restarts.
    pub fn count_requests(&self, method: &str, path_contains: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(access_line)
            .filter(|(m, p)| *m == method && p.contains(path_contains))
            .count()
    }

    /// Uploads `data` as a blob of `repo` (monolithic: POST, then PUT `?digest=`) and returns its
    /// digest. Blocking, plain HTTP only; panics with the registry's answer on any non-2xx.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256_hex(data);
        let start = format!("/v2/{repo}/blobs/uploads/");
        let resp = self.exchange("POST", &start, &[], &[]);
        let location = resp
            .header("location")
            .unwrap_or_else(|| panic!("POST {start}: no Location header"));
        // Distribution answers an absolute URL; keep only the path and query.
        let mut path = match location.find("://") {
            Some(i) => {
                let rest = &location[i + 3..];
                rest.find('/').map_or("/", |p| &rest[p..]).to_string()
            }
            None => location.to_string(),
        };
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str("digest=");
        path.push_str(&digest);
        let content_type = [("Content-Type", "application/octet-stream")];
        self.exchange("PUT", &path, &content_type, data);
        digest
    }

    /// PUTs `manifest` (of `media_type`) as `repo:reference`, a tag or a digest, and returns its
    /// digest (checked against the registry's). Blocking, plain HTTP only; panics on any non-2xx.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> String {
        let digest = sha256_hex(manifest);
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self.exchange("PUT", &path, &[("Content-Type", media_type)], manifest);
        if let Some(d) = resp.header("docker-content-digest") {
            assert_eq!(d, digest, "the registry's digest of {repo}:{reference}");
        }
        digest
    }

    /// One blocking exchange that must succeed (2xx).
    fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> crate::tools::RawResponse {
        assert!(
            self.tls.is_none(),
            "the blocking helpers speak plain HTTP only, the registry is at {}",
            self.url()
        );
        let resp = blocking_http(self.addr, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {}{path}: {e}", self.url()));
        resp.expect_2xx(method, path);
        resp
    }

    /// Where the registry stores the blob `digest` (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        assert!(hex.len() > 2, "not a sha256 digest: {digest}");
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// Method and URI of a combined-format access-log line, `None` for any other line.
pub(crate) fn access_line(line: &str) -> Option<(&str, &str)> {
    // `127.0.0.1 - - [22/Nov/2026:01:49:40 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "ua"`
    let (_, rest) = line.split_once("] \"")?;
    let (request, _) = rest.split_once('"')?;
    let mut parts = request.split(' ');
    let method = parts.next()?;
    let uri = parts.next()?;
    parts.next()?.starts_with("HTTP/").then_some((method, uri))
}

#[cfg(test)]
mod tests {
    use super::access_line;

    #[test]
    fn parses_access_lines_only() {
        let l = r#"127.0.0.1 - - [22/Nov/2026:01:49:40 +0000] "HEAD /v2/a/manifests/v1?ns=x HTTP/1.1" 200 0 "" "ctr""#;
        assert_eq!(access_line(l), Some(("HEAD", "/v2/a/manifests/v1?ns=x")));
        let other = r#"time="2026" level=info msg="response completed" http.request.method=GET"#;
        assert_eq!(access_line(other), None);
    }
}
