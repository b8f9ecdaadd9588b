//! Shared helpers: running commands and curl, and portcullis with TLS on its listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_testkit::http::Response;
use portcullis_testkit::{
    free_port, push, reload_by_sighup, require_tools, tempdir, ConfigBuilder, Image, ProxyConfig,
    Registry,
};

use super::pki::{Pki, Use};
pub(crate) use portcullis_testkit::dir_files as files;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

// ---------------------------------------------------------------------------------------------
// Running commands

/// What a finished command said.
pub(crate) struct Out {
    pub(crate) ok: bool,
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

pub(crate) fn exec(cmd: &mut Command) -> Out {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    Out {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `cmd`, panicking with its stderr unless it succeeds; its stdout.
pub(crate) fn run(cmd: &mut Command) -> String {
    let out = exec(cmd);
    assert!(
        out.ok,
        "{cmd:?} ({:?}):\n{}{}",
        out.code, out.stderr, out.stdout
    );
    out.stdout
}

/// `curl -sS --max-time 60 ARGS`.
pub(crate) fn curl(args: &[&str]) -> Out {
    exec(
        Command::new("curl")
            .args(["-sS", "--max-time", "60"])
            .args(args),
    )
}

/// The HTTP status curl got for `url` (`-o /dev/null -w %{http_code}`), `None` if the exchange
/// failed (handshake refused, connection reset).
pub(crate) fn curl_status(url: &str, extra: &[&str]) -> Option<u16> {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = curl(&args);
    if !out.ok {
        return None;
    }
    out.stdout.trim().parse().ok().filter(|s| *s != 0)
}

pub(crate) fn kill_signal(pid: u32, signal: &str) {
    run(Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string()));
}

/// Polls `f` every 100 ms until it holds or `timeout` passes; whether it held.
pub(crate) fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub(crate) fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

pub(crate) fn code(resp: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}

/// `skopeo --insecure-policy copy FLAGS docker://SRC dir:DEST`.
pub(crate) fn skopeo(flags: &[&str], src: &str, dest: &Path) -> Out {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    exec(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy"])
            .args(flags)
            .arg(format!("docker://{src}"))
            .arg(format!("dir:{}", dest.display())),
    )
}

// ---------------------------------------------------------------------------------------------
// portcullis with TLS on its listener

/// A portcullis whose listener speaks TLS: [`Proxy::start`] probes over plain HTTP, so this
/// starts the binary itself and probes with curl. Killed on drop.
pub(crate) struct TlsProxy {
    pub(crate) addr: SocketAddr,
    /// `workdir/portcullis.toml`.
    config: PathBuf,
    /// `workdir/data`, the cache.
    data: PathBuf,
    log: PathBuf,
    pub(crate) child: Child,
}

impl TlsProxy {
    /// Writes `config` to `workdir/portcullis.toml` as [`Proxy::start`] does (its address, a
    /// cache in `workdir/data`), runs `portcullis serve`, and waits (20 s) until
    /// `curl PROBE https://ADDR/v2/` answers 200.
    ///
    /// [`Proxy::start`]: portcullis_testkit::Proxy::start
    pub(crate) fn start(
        workdir: &Path,
        config: &(impl ProxyConfig + ?Sized),
        probe: &[&str],
    ) -> TlsProxy {
        std::fs::create_dir_all(workdir).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let data = workdir.join("data");
        let text = config.render(addr, &data);
        let config = workdir.join("portcullis.toml");
        std::fs::write(&config, text).unwrap();
        let log = workdir.join("proxy.log");
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn portcullis");
        let mut proxy = TlsProxy {
            addr,
            config: config.clone(),
            data,
            log,
            child,
        };
        let url = format!("{}/v2/", proxy.url());
        let start = Instant::now();
        while curl_status(&url, probe) != Some(200) {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("portcullis exited at start ({status}):\n{}", proxy.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "portcullis not ready on {url} (curl {probe:?}):\n{}",
                proxy.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        proxy
    }

    pub(crate) fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub(crate) fn host(&self) -> String {
        self.addr.to_string()
    }

    /// SIGHUP, and the outcome of the reload it starts (see [`Proxy::reload`]).
    ///
    /// [`Proxy::reload`]: portcullis_testkit::Proxy::reload
    pub(crate) fn reload(&self) -> Result<(), String> {
        reload_by_sighup(self.child.id(), &self.log)
    }

    /// Rewrites the config file (this proxy's address and cache), then [`reload`](Self::reload).
    pub(crate) fn reconfigure(&self, config: &(impl ProxyConfig + ?Sized)) -> Result<(), String> {
        std::fs::write(&self.config, config.render(self.addr, &self.data)).unwrap();
        self.reload()
    }

    pub(crate) fn log(&self) -> String {
        read_log(&self.log)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream holding `test/small:v1`, and a PKI with a root CA `root`, an intermediate `int`
/// and a server certificate `srv` (serial 0x1001) for 127.0.0.1 signed by the intermediate.
/// The chain file `srv-chain.pem` is the server certificate followed by the intermediate.
pub(crate) struct TlsWorld {
    _dir: tempfile::TempDir,
    pub(crate) work: PathBuf,
    pub(crate) upstream: Registry,
    pub(crate) pki: Pki,
}

impl TlsWorld {
    pub(crate) fn new() -> TlsWorld {
        require_tools();
        let dir = tempdir();
        let work = dir.path().to_owned();
        let upstream = Registry::start(&work);
        push(Image::Small, &upstream, "test/small:v1");
        let pki = Pki::new(&work.join("pki"));
        pki.root("root");
        pki.issue("root", "int", Use::Intermediate, 0x10, false);
        pki.issue("int", "srv", Use::Server, 0x1001, false);
        pki.chain("srv", &["int"]);
        TlsWorld {
            _dir: dir,
            work,
            upstream,
            pki,
        }
    }

    /// TLS with the chain and key, default upstream `name` = the registry.
    pub(crate) fn config(&self, name: &str) -> ConfigBuilder {
        ConfigBuilder::pull_through(name, &self.upstream.url())
            .tls(&self.pki.dir.join("srv-chain.pem"), &self.pki.key("srv"))
    }

    /// A dir holding the root CA as `ca.crt`: what `--cert-dir` of skopeo and podman reads.
    pub(crate) fn cert_dir(&self) -> PathBuf {
        let d = self.work.join("cert-dir");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(self.pki.pem("root"), d.join("ca.crt")).unwrap();
        d
    }
}
