//! The portcullis binary under test, run as `portcullis serve --config FILE`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::config::ProxyConfig;
use crate::process::Daemon;
use crate::tools::{free_port, log_tail};

/// How long a SIGTERMed proxy gets to drain and exit.
const TERM_TIMEOUT: Duration = Duration::from_secs(30);

/// A running portcullis. Killed (SIGKILL) on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    /// `workdir/data`, the cache: the config's `[cache] dir` (`{DATA}` in TOML text).
    pub data_dir: PathBuf,
    /// `workdir/proxy.log`: stdout and stderr, appended across restarts.
    pub log: PathBuf,
    /// `workdir/portcullis.toml`, the config after substitution.
    pub config: PathBuf,
    daemon: Daemon,
}

impl Proxy {
    /// `bin` is the portcullis binary (tests pass `env!("CARGO_BIN_EXE_portcullis")`).
    ///
    /// Writes `config` to `workdir/portcullis.toml` for `127.0.0.1:<free port>` and a cache in
    /// `workdir/data`: a typed [`Config`](portcullis::Config) or
    /// [`ConfigBuilder`](crate::ConfigBuilder), or TOML text with `{LISTEN}` and `{DATA}` for
    /// those (see [`ProxyConfig`]). Then it runs `bin serve --config FILE` with its output
    /// appended to `workdir/proxy.log`, and waits until `GET /v2/` answers 200, or 401 with
    /// `[auth]` on (20 s; panics with the log tail).
    pub fn start(bin: &Path, workdir: &Path, config: &(impl ProxyConfig + ?Sized)) -> Proxy {
        Proxy::start_with_env(bin, workdir, config, &[])
    }

    /// As [`Proxy::start`], with `env` added to the inherited environment, for this run and
    /// every restart (e.g. [`S3Server::proxy_env`](crate::S3Server::proxy_env)).
    pub fn start_with_env(
        bin: &Path,
        workdir: &Path,
        config: &(impl ProxyConfig + ?Sized),
        env: &[(String, String)],
    ) -> Proxy {
        std::fs::create_dir_all(workdir).expect("create proxy workdir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let data_dir = workdir.join("data");
        let config_text = config.render(addr, &data_dir);
        let config = workdir.join("portcullis.toml");
        std::fs::write(&config, config_text).expect("write portcullis.toml");
        let log = workdir.join("proxy.log");
        let args = vec![
            "serve".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ];
        let name = format!("portcullis on {addr}");
        let mut daemon = Daemon::new(&name, bin, args, log.clone());
        daemon.envs(env);
        let mut proxy = Proxy {
            addr,
            data_dir,
            log,
            config,
            daemon,
        };
        proxy.run();
        proxy
    }

    fn run(&mut self) {
        self.daemon.spawn();
        self.daemon
            .wait_ready(self.addr, |status| status == 200 || status == 401);
    }

    /// Starts it again with the same config and port (SIGKILLing it first if it still runs).
    pub fn restart(&mut self) {
        self.daemon.kill();
        self.run();
    }

    /// SIGKILL and wait: a crash, with no chance to flush anything.
    pub fn kill9(&mut self) {
        self.daemon.kill();
    }

    /// SIGTERM and wait up to 30 s for a graceful exit; panics (after SIGKILL) on timeout.
    pub fn terminate(&mut self) -> ExitStatus {
        self.daemon.signal_and_wait("TERM", TERM_TIMEOUT)
    }

    /// Replaces the config file (for this proxy's address and cache, as [`Proxy::start`] writes
    /// it). Nothing else happens until a [`reload`](Self::reload) or the file poll picks it up.
    pub fn write_config(&self, config: &(impl ProxyConfig + ?Sized)) {
        std::fs::write(&self.config, config.render(self.addr, &self.data_dir))
            .expect("write portcullis.toml");
    }

    /// Sends SIGHUP and waits for the reload it starts to finish: `Ok` once the proxy logged
    /// `config reloaded` (the new configuration and certificates are in force), `Err` with the
    /// log from that line on if it logged `config reload rejected` (the previous one stays).
    /// See [`reload_by_sighup`].
    pub fn reload(&self) -> Result<(), String> {
        let pid = self.pid().expect("the proxy is not running");
        reload_by_sighup(pid, &self.log)
    }

    /// [`write_config`](Self::write_config), then [`reload`](Self::reload).
    pub fn reconfigure(&self, config: &(impl ProxyConfig + ?Sized)) -> Result<(), String> {
        self.write_config(config);
        self.reload()
    }

    /// The config file it was started with (`workdir/portcullis.toml`), for CLI commands that
    /// share it.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// PID of the running process, if any.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// `"http://127.0.0.1:PORT"`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `"127.0.0.1:PORT"`, as used in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Waits up to 5 s for `needle` to appear in the log (lines written after a response, such
    /// as a failed fetch's, may trail it); the log either way.
    pub fn wait_for_log(&self, needle: &str) -> String {
        for _ in 0..100 {
            let log = self.log_contents();
            if log.contains(needle) {
                return log;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.log_contents()
    }

    /// Everything the proxy has logged so far, across restarts.
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// What the proxy logs when SIGHUP starts a reload, and when that reload ends.
const HUP_RECEIVED: &str = "SIGHUP received";
const RELOADED: &str = "config reloaded";
const REJECTED: &str = "config reload rejected";

/// How long a reload may take, SIGHUP to its outcome in the log.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends SIGHUP to the portcullis `pid` that logs to `log`, and waits (15 s) for the outcome of
/// the reload that signal starts: `Ok` on `config reloaded`, `Err` on `config reload rejected`
/// (the log from that line on: the reason may span lines); panics with the log tail if neither
/// comes.
///
/// The proxy handles reloads one at a time and logs `SIGHUP received` before each SIGHUP's, so
/// the outcome that counts is the first after this signal's line, however many reloads (a file
/// change the poll saw, an earlier signal) are logged around it.
pub fn reload_by_sighup(pid: u32, log: &Path) -> Result<(), String> {
    let read = || {
        std::fs::read(log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let before = read().matches(HUP_RECEIVED).count();
    let sent = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    assert!(
        matches!(sent, Ok(s) if s.success()),
        "could not send SIGHUP to portcullis ({pid}): {sent:?}"
    );
    let start = Instant::now();
    while start.elapsed() < RELOAD_TIMEOUT {
        let text = read();
        if let Some((at, _)) = text.match_indices(HUP_RECEIVED).nth(before) {
            let after = &text[at..];
            let outcome = [RELOADED, REJECTED]
                .map(|needle| after.find(needle))
                .into_iter()
                .flatten()
                .min();
            match outcome {
                Some(i) if after[i..].starts_with(REJECTED) => {
                    // From the start of that line: the error may span several.
                    let line = after[..i].rfind('\n').map_or(0, |n| n + 1);
                    return Err(after[line..].to_owned());
                }
                Some(_) => return Ok(()),
                None => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "portcullis ({pid}) logged no reload outcome within {RELOAD_TIMEOUT:?} of SIGHUP; \
         log {}:\n{}",
        log.display(),
        log_tail(log, 40)
    );
}
