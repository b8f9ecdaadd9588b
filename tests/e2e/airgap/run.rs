//! Running the binary's subcommands.

use std::ffi::OsString;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::support::BIN;

/// Longest a subcommand may run (a mirror of the 50 MiB image included) before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// What one run of a portcullis subcommand did.
pub(crate) struct Run {
    command: String,
    code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    pub(crate) fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self}");
        assert!(
            !self.stderr.contains("panicked"),
            "the command panicked: {self}"
        );
        self
    }

    /// The stdout line `<verb> <reference> ...` (for `reference` = `registry/repo:tag`), if any.
    pub(crate) fn line(&self, verb: &str, reference: &str) -> Option<&str> {
        let prefix = format!("{verb} {reference} ");
        self.stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&prefix))
    }

    /// Asserts the exact stdout line `<verb> <reference> <digest>`.
    pub(crate) fn expect_line(&self, verb: &str, reference: &str, digest: &str) -> &Run {
        let want = format!("{verb} {reference} {digest}");
        assert!(
            self.stdout.lines().any(|l| l.trim() == want),
            "no line {want:?}: {self}"
        );
        self
    }

    /// Asserts `rejected <reference> <digest>: <reasons>` and that the reasons hold every needle.
    pub(crate) fn expect_rejected(&self, reference: &str, digest: &str, needles: &[&str]) -> &Run {
        let prefix = format!("rejected {reference} {digest}: ");
        let line = self
            .stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}: {self}"));
        for n in needles {
            assert!(line.contains(n), "{line:?} lacks {n:?}: {self}");
        }
        self
    }

    pub(crate) fn lines_starting(&self, verb: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(&format!("{verb} ")))
            .collect()
    }
}

/// Runs `portcullis ARGS` to completion (killed after [`COMMAND_TIMEOUT`]), capturing its output.
pub(crate) fn portcullis(args: &[OsString]) -> Run {
    let command = format!(
        "portcullis {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > COMMAND_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        command,
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(status.is_some(), "killed after {COMMAND_TIMEOUT:?}: {run}");
    run
}

pub(crate) fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_owned()).collect()
}
