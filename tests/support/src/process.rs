//! A child process whose stdout and stderr are appended to one log file, with the readiness
//! wait and the kill/terminate helpers that `Registry` and `Proxy` share.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::tools::{blocking_http, log_tail};

/// How long a server gets to answer its first request.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A restartable child process: the command line is kept so that it can be run again.
pub(crate) struct Daemon {
    /// What it is, for panic messages.
    name: String,
    program: PathBuf,
    args: Vec<String>,
    /// Set on top of the inherited environment, at every spawn.
    env: Vec<(String, String)>,
    pub(crate) log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub(crate) fn new(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> Daemon {
        Daemon {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            env: Vec::new(),
            log,
            child: None,
        }
    }

    /// Adds `vars` to the environment of this and every later spawn.
    pub(crate) fn envs(&mut self, vars: &[(String, String)]) {
        self.env.extend_from_slice(vars);
    }

    /// Starts the process (it must not be running), appending its output to the log.
    pub(crate) fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", self.log.display()));
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} ({}): {e}", self.name, self.program.display()));
        self.child = Some(child);
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Polls `GET /v2/` on `addr` until it answers with a status that `ok` accepts. Panics with
    /// the log tail on timeout or if the process exits first.
    pub(crate) fn wait_ready(&mut self, addr: SocketAddr, ok: impl Fn(u16) -> bool) {
        self.wait_ready_at(addr, "/v2/", ok);
    }

    /// As [`Daemon::wait_ready`], polling `GET path` instead: a server that is no registry.
    pub(crate) fn wait_ready_at(&mut self, addr: SocketAddr, path: &str, ok: impl Fn(u16) -> bool) {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited before it was ready ({status}); log {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log, 40)
                );
            }
            match blocking_http(addr, "GET", path, &[], &[]) {
                Ok(r) if ok(r.status) => return,
                Ok(r) => last = format!("status {}", r.status),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.kill();
        panic!(
            "{} not ready on http://{addr}{path} after {READY_TIMEOUT:?} (last: {last}); log {}:\n{}",
            self.name,
            self.log.display(),
            log_tail(&self.log, 40)
        );
    }

    /// `Some(status)` if the process has exited on its own (it is then no longer tracked).
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// SIGKILL and reap; `None` if it was not running.
    pub(crate) fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Sends `signal` (a name such as `TERM`) with the `kill` command and waits up to `timeout`.
    /// On timeout the process is SIGKILLed and this panics.
    pub(crate) fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        if !matches!(sent, Ok(s) if s.success()) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("could not send SIG{signal} to {}: {sent:?}", self.name);
        }
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{} did not exit within {timeout:?} of SIG{signal}; log tail:\n{}",
                        self.name,
                        log_tail(&self.log, 40)
                    );
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
