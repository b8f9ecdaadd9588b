//! containerd as a real registry client: a private daemon, `ctr images pull` and `hosts.toml`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{Daemon, READY_TIMEOUT};
use crate::tools::log_tail;

/// Longest socket path we put under the work dir: unix socket paths are limited to 108 bytes,
/// and containerd adds `.ttrpc` to the ttrpc one.
const MAX_SOCKET_PATH: usize = 100;

/// A private containerd daemon (no CRI). Killed on drop.
pub struct Containerd {
    /// The gRPC socket that `ctr --address` takes.
    pub socket: PathBuf,
    /// `workdir/containerd`: config, root, state, opt and the log.
    pub dir: PathBuf,
    pub log: PathBuf,
    daemon: Daemon,
    /// Holds a short `/tmp` dir for the sockets when the work dir is too deep for them.
    _socket_dir: Option<tempfile::TempDir>,
}

impl Containerd {
    /// Starts containerd with everything under `workdir/containerd` (the sockets go to a short
    /// `/tmp/ctd*` dir if that path would be too long), and waits until `ctr version` answers.
    pub fn start(workdir: &Path) -> Containerd {
        let dir = workdir.join("containerd");
        std::fs::create_dir_all(&dir).expect("create containerd dir");
        let mut socket = dir.join("ctd.sock");
        let mut socket_dir = None;
        if socket.as_os_str().len() + ".ttrpc".len() > MAX_SOCKET_PATH {
            let short = tempfile::Builder::new()
                .prefix("ctd")
                .tempdir_in("/tmp")
                .expect("create short socket dir");
            socket = short.path().join("ctd.sock");
            socket_dir = Some(short);
        }
        let d = |sub: &str| dir.join(sub).display().to_string();
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = d("root"),
            state = d("state"),
            opt = d("opt"),
            sock = socket.display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let log = dir.join("containerd.log");
        let args = vec!["--config".to_string(), config_path.display().to_string()];
        let daemon = Daemon::new("containerd", Path::new("containerd"), args, log.clone());
        let mut ctd = Containerd {
            socket,
            dir,
            log,
            daemon,
            _socket_dir: socket_dir,
        };
        ctd.daemon.spawn();
        ctd.wait_ready();
        ctd
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        let mut last = String::from("socket not there yet");
        while start.elapsed() < READY_TIMEOUT {
            if let Some(status) = self.daemon.exited() {
                panic!(
                    "containerd exited at start ({status}); log:\n{}",
                    log_tail(&self.log, 40)
                );
            }
            if self.socket.exists() {
                match self.ctr(&["version"]) {
                    Ok(_) => return,
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.daemon.kill();
        panic!(
            "containerd not ready after {READY_TIMEOUT:?} (last: {last}); log:\n{}",
            log_tail(&self.log, 40)
        );
    }

    /// Runs `ctr --address SOCK ARGS`: `Ok(stdout)`, or `Err(stderr + stdout)`.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run ctr: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "ctr {} ({}):\n{stderr}{stdout}",
                args.join(" "),
                out.status
            ))
        }
    }

    /// `ctr images pull --hosts-dir DIR REF` (fetch and unpack with the default snapshotter):
    /// `Ok(stdout)` or `Err(stderr + stdout)`.
    pub fn pull(&self, image_ref: &str, hosts_dir: &Path) -> Result<String, String> {
        let hosts = hosts_dir.to_str().ok_or("hosts dir is not UTF-8")?;
        self.ctr(&["images", "pull", "--hosts-dir", hosts, image_ref])
    }

    /// Digest of `image_ref` (its manifest or index) as `ctr images ls` lists it.
    pub fn image_digest(&self, image_ref: &str) -> Option<String> {
        let list = self.ctr(&["images", "ls"]).ok()?;
        list.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&image_ref))
                .then(|| cols.get(2).map(|d| d.to_string()))
                .flatten()
        })
    }
}

/// Writes `dir/<registry_host>/hosts.toml` with `server = server` and `mirror_url` as a
/// pull+resolve host, and returns `dir` (what `--hosts-dir` takes).
pub fn write_hosts_toml(
    dir: &Path,
    registry_host: &str,
    server: &str,
    mirror_url: &str,
) -> PathBuf {
    let host_dir = dir.join(registry_host);
    std::fs::create_dir_all(&host_dir).expect("create hosts dir");
    let text = format!(
        "server = \"{server}\"\n\n[host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    std::fs::write(host_dir.join("hosts.toml"), text).expect("write hosts.toml");
    dir.to_path_buf()
}
