//! Air-gapped operation, end to end: `portcullis mirror` and `export` on the connected side
//! write an OCI layout (or a tar of one) holding images and their cosign signatures;
//! `portcullis import` verifies each image against the policy on arrival; `serve --offline` (or
//! `[server] offline = true`) then serves skopeo and containerd from the cache alone. Every
//! offline instance's only upstream is a counting fault server, so any connection is caught.
//! Tampered transfers (a flipped byte, a swapped or missing signature, a cut tar), a layout written
//! by skopeo, a `kill -9` mid-import, re-import and `cache ls`/`cache gc` are covered too.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_testkit::cosign::{
    push_signature, signature_tag, simple_signing_payload, CosignKey, SigLayer,
};
use portcullis_testkit::http::{self, Response};
use portcullis_testkit::{
    free_port, manifest_digest_in_registry, push, require_tools, sha256_hex, skopeo_copy,
    skopeo_copy_all, tempdir, write_hosts_toml, Containerd, Fault, FaultServer, Image, Proxy,
    Registry,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// The OCI annotation that names an entry of a layout's index.json.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Longest a subcommand may run (a mirror of the 50 MiB image included) before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------------
// Running the binary's subcommands

/// What one run of a portcullis subcommand did.
struct Run {
    command: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
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
    fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(self.code, Some(code), "expected exit {code}: {self}");
        assert!(
            !self.stderr.contains("panicked"),
            "the command panicked: {self}"
        );
        self
    }

    /// The stdout line `<verb> <reference> ...` (for `reference` = `registry/repo:tag`), if any.
    fn line(&self, verb: &str, reference: &str) -> Option<&str> {
        let prefix = format!("{verb} {reference} ");
        self.stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&prefix))
    }

    /// Asserts the exact stdout line `<verb> <reference> <digest>`.
    fn expect_line(&self, verb: &str, reference: &str, digest: &str) -> &Run {
        let want = format!("{verb} {reference} {digest}");
        assert!(
            self.stdout.lines().any(|l| l.trim() == want),
            "no line {want:?}: {self}"
        );
        self
    }

    /// Asserts `rejected <reference> <digest>: <reasons>` and that the reasons hold every needle.
    fn expect_rejected(&self, reference: &str, digest: &str, needles: &[&str]) -> &Run {
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

    fn lines_starting(&self, verb: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(&format!("{verb} ")))
            .collect()
    }
}

/// Runs `portcullis ARGS` to completion (killed after [`COMMAND_TIMEOUT`]), capturing its output.
fn portcullis(args: &[OsString]) -> Run {
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

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// The world: an upstream with signed images, and portcullis instances (a config + a cache dir)

/// An upstream registry holding images signed (or not) with the trusted key `release`.
struct World {
    _dir: tempfile::TempDir,
    work: PathBuf,
    upstream: Registry,
    release: CosignKey,
}

impl World {
    fn new() -> World {
        require_tools();
        let dir = tempdir();
        let work = dir.path().to_owned();
        let upstream = Registry::start(&work);
        let release = CosignKey::generate();
        release.write_public(&work.join("release.pub"));
        World {
            _dir: dir,
            work,
            upstream,
            release,
        }
    }

    /// The upstream's `127.0.0.1:PORT`, the registry part of every image name here.
    fn host(&self) -> String {
        self.upstream.host()
    }

    /// `<upstream host>/<repo_tag>`.
    fn name(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    /// Pushes `image` as `repo:tag`; returns its manifest digest.
    fn push(&self, image: Image, repo: &str, tag: &str) -> String {
        push(image, &self.upstream, &format!("{repo}:{tag}"));
        manifest_digest_in_registry(&self.upstream, repo, tag)
    }

    /// Pushes `image` as `repo:tag` and a cosign signature of it by `release`; returns its digest.
    fn push_signed(&self, image: Image, repo: &str, tag: &str) -> String {
        let digest = self.push(image, repo, tag);
        self.sign(repo, &self.name(repo), &digest);
        digest
    }

    /// Pushes to `repo` a `release` signature whose payload names `docker_reference`.
    fn sign(&self, repo: &str, docker_reference: &str, digest: &str) {
        let payload = simple_signing_payload(docker_reference, digest);
        let layer = SigLayer {
            signature_b64: self.release.sign(&payload),
            payload,
            ..SigLayer::default()
        };
        push_signature(&self.upstream, repo, digest, &[layer]);
    }

    /// Trust and rules shared by every instance: `<host>/keyed/**` and `docker.io/library/**`
    /// need a signature by `release`; anything else is denied.
    fn policy(&self) -> String {
        format!(
            r#"[policy]
default = "deny"
[[trust.key]]
name = "release"
path = "{key}"
[[rule]]
name = "keyed"
images = ["{host}/keyed/**"]
[[rule.authority]]
key = "release"
[[rule]]
name = "library"
images = ["docker.io/library/**"]
[[rule.authority]]
key = "release"
"#,
            key = self.work.join("release.pub").display(),
            host = self.host(),
        )
    }

    fn instance(
        &self,
        sub: &str,
        server: &str,
        cache: &str,
        upstreams: &str,
        mirror: &str,
    ) -> Instance {
        let template = format!(
            "[server]\nlisten = \"{{LISTEN}}\"\n{server}\n\
             [cache]\ndir = \"{{DATA}}\"\nmax_size = \"2GiB\"\n{cache}\n\
             {upstreams}\n{mirror}\n{policy}",
            policy = self.policy()
        );
        Instance {
            workdir: self.work.join(sub),
            template,
        }
    }

    /// The connected side: the real upstream as the default one, `[[mirror]]` listing `images`.
    fn connected(&self, sub: &str, images: &[String]) -> Instance {
        let upstream = format!(
            "[[upstream]]\nname = \"{}\"\nurl = \"{}\"\ndefault = true\n",
            self.host(),
            self.upstream.url()
        );
        let mirror = format!(
            "[[mirror]]\nimages = {}\n",
            serde_json::to_string(images).unwrap()
        );
        self.instance(sub, "", "", &upstream, &mirror)
    }

    /// The air-gapped side: `[server] offline = true`, and one default upstream named like the
    /// real one but pointing at `fault`, so that any connection would be counted. Tags expire
    /// after a second, to show that offline they resolve whatever their age.
    fn offline(&self, sub: &str, fault: &FaultServer) -> Instance {
        let upstream = format!(
            "[[upstream]]\nname = \"{}\"\nurl = \"{}\"\ndefault = true\nconnect_timeout = \"1s\"\nread_timeout = \"1s\"\n",
            self.host(),
            fault.url()
        );
        self.instance(
            sub,
            "offline = true",
            "tag_ttl = \"1s\"\nmax_stale = \"1s\"",
            &upstream,
            "",
        )
    }

    /// No `[[upstream]]` at all; `offline = true` in `[server]` or not (then `serve --offline`).
    fn bare(&self, sub: &str, offline: bool) -> Instance {
        let server = if offline { "offline = true" } else { "" };
        self.instance(sub, server, "", "", "")
    }
}

/// A portcullis instance: a config template with `{LISTEN}` and `{DATA}`, and a work dir whose
/// `data/` is the cache, as [`Proxy::start`] lays it out, so that the CLI and the server share it.
struct Instance {
    workdir: PathBuf,
    template: String,
}

impl Instance {
    fn data(&self) -> PathBuf {
        self.workdir.join("data")
    }

    /// Writes `workdir/<file>` with `{DATA}` and `{LISTEN}` substituted; returns its path.
    fn write_config(&self, file: &str, listen: &str) -> PathBuf {
        std::fs::create_dir_all(&self.workdir).unwrap();
        let path = self.workdir.join(file);
        let text = self
            .template
            .replace("{LISTEN}", listen)
            .replace("{DATA}", &self.data().display().to_string());
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `portcullis ARGS --config <this instance's config>`.
    fn run(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
        let config = self.write_config("cli.toml", "127.0.0.1:0");
        let mut all = os(args);
        all.extend(os(&[&"--config", &config]));
        portcullis(&all)
    }

    fn import(&self, path: &Path, name: Option<&str>) -> Run {
        match name {
            Some(n) => self.run(&[&"import", &path, &"--name", &n]),
            None => self.run(&[&"import", &path]),
        }
    }

    fn export(&self, refs: &[String], output: &Path) -> Run {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"export"];
        for r in refs {
            args.push(r);
        }
        args.push(&"--output");
        args.push(&output);
        self.run(&args)
    }

    fn mirror(&self, output: &Path) -> Run {
        self.run(&[&"mirror", &"--output", &output])
    }

    /// `portcullis serve --config FILE` on this cache (stop it before the next CLI command).
    fn serve(&self) -> Proxy {
        Proxy::start(Path::new(BIN), &self.workdir, &self.template)
    }
}

/// `portcullis serve --config FILE --offline`, which [`Proxy::start`] cannot pass. Killed on drop.
struct FlagServe {
    addr: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl FlagServe {
    fn start(instance: &Instance) -> FlagServe {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = instance.write_config("flag-serve.toml", &addr.to_string());
        let log = instance.workdir.join("flag-serve.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--offline")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut s = FlagServe { addr, log, child };
        let start = Instant::now();
        while !v2_answers_200(addr) {
            if let Some(status) = s.child.try_wait().unwrap() {
                panic!("serve --offline exited ({status}):\n{}", s.log_contents());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "serve --offline not ready:\n{}",
                s.log_contents()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log_contents(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for FlagServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn v2_answers_200(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET /v2/ HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    raw.starts_with(b"HTTP/1.1 200")
}

// ---------------------------------------------------------------------------------------------
// OCI layouts and responses

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn index_of(layout: &Path) -> Value {
    read_json(&layout.join("index.json"))
}

fn ref_names(layout: &Path) -> Vec<String> {
    let mut names: Vec<String> = index_of(layout)["manifests"]
        .as_array()
        .expect("index.json has manifests")
        .iter()
        .filter_map(|d| d["annotations"][REF_NAME].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The descriptor of `layout`'s index.json entry named `name`.
fn entry(layout: &Path, name: &str) -> Value {
    index_of(layout)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"][REF_NAME] == name)
        .unwrap_or_else(|| {
            panic!(
                "no entry {name} in {}: {:?}",
                layout.display(),
                ref_names(layout)
            )
        })
        .clone()
}

fn write_index(layout: &Path, index: &Value) {
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(index).unwrap(),
    )
    .unwrap();
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").expect("sha256 digest"))
}

/// `<name>:sha256-<hex>.sig`, the entry name of `digest`'s signature manifest in an export.
fn sig_name(name: &str, digest: &str) -> String {
    format!("{name}:{}", signature_tag(digest))
}

/// Copies a directory tree into fresh files (never hard links, so edits stay in the copy).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Every file skopeo wrote for an image (manifest, config, layers), name by name.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn code_and_message(resp: &Response) -> (u16, String, String) {
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    (
        resp.status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
        v["errors"][0]["message"].as_str().unwrap_or("").to_owned(),
    )
}

/// Asserts that `GET` and `HEAD` of `path` (under `/v2/`) do not answer 200.
async fn assert_not_served(base: &str, path: &str, log: &dyn Fn() -> String) {
    for method in ["GET", "HEAD"] {
        let resp = http::request(method, &format!("{base}/v2/{path}"), &[]).await;
        assert_ne!(
            resp.status,
            200,
            "{method} /v2/{path} must not be served\n{}",
            log()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The connected side, as most tests need it

/// A world with `keyed/app:v1` (Image::Small) and `keyed/multi:v1` (Image::Multi, whose arm64
/// child has a layer of its own), both signed by `release`, mirrored into instance `a`.
struct Mirrored {
    w: World,
    a: Instance,
    app: String,
    multi: String,
}

impl Mirrored {
    fn new() -> Mirrored {
        let w = World::new();
        let app = w.push_signed(Image::Small, "keyed/app", "v1");
        let multi = w.push_signed(Image::Multi, "keyed/multi", "v1");
        let a = w.connected("a", &[w.name("keyed/app:v1"), w.name("keyed/multi:v1")]);
        let out = w.work.join("a-mirror-out");
        a.mirror(&out).expect_code(0);
        Mirrored { w, a, app, multi }
    }

    fn app_ref(&self) -> String {
        self.w.name("keyed/app:v1")
    }

    fn multi_ref(&self) -> String {
        self.w.name("keyed/multi:v1")
    }

    /// `portcullis export` of both images from `a` to `output` (a dir, or a tar by its suffix).
    fn export(&self, output: &Path) {
        self.a
            .export(&[self.app_ref(), self.multi_ref()], output)
            .expect_code(0);
    }

    /// The arm64 layer of `multi`, read from an exported layout: no other image holds it.
    fn arm64_layer(&self, layout: &Path) -> String {
        let index = read_json(&blob_path(layout, &self.multi));
        let child = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == "arm64")
            .expect("arm64 child")["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let manifest = read_json(&blob_path(layout, &child));
        manifest["layers"][0]["digest"].as_str().unwrap().to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Connected -> air-gapped round trip

#[test]
fn mirror_to_tar_import_offline_and_serve_skopeo_and_containerd_without_upstream() {
    let mut w = World::new();
    let app = w.push_signed(Image::Small, "keyed/app", "v1");
    let multi = w.push_signed(Image::Multi, "keyed/multi", "v1");
    let (app_ref, multi_ref) = (w.name("keyed/app:v1"), w.name("keyed/multi:v1"));
    let a = w.connected("a", &[app_ref.clone(), multi_ref.clone()]);
    let tar = w.work.join("transfer/images.tar");
    std::fs::create_dir_all(tar.parent().unwrap()).unwrap();
    a.mirror(&tar).expect_code(0);
    assert!(tar.is_file(), "mirror wrote no {}", tar.display());

    // What the upstream itself serves, to compare with what the air-gapped side serves.
    let direct = w.work.join("direct");
    skopeo_copy(&app_ref, &direct.join("app")).unwrap();
    skopeo_copy_all(&multi_ref, &direct.join("multi")).unwrap();
    w.upstream.stop();

    let fault = FaultServer::start(Fault::Status(500));
    let b = w.offline("b", &fault);
    b.import(&tar, None)
        .expect_code(0)
        .expect_line("imported", &app_ref, &app)
        .expect_line("imported", &multi_ref, &multi);

    let p = b.serve();
    let through = w.work.join("through");
    skopeo_copy(&format!("{}/keyed/app:v1", p.host()), &through.join("app"))
        .unwrap_or_else(|e| panic!("skopeo offline: {e}\n{}", p.log_contents()));
    skopeo_copy_all(
        &format!("{}/keyed/multi:v1", p.host()),
        &through.join("multi"),
    )
    .unwrap_or_else(|e| panic!("skopeo offline: {e}\n{}", p.log_contents()));
    for image in ["app", "multi"] {
        assert_eq!(
            files(&direct.join(image)),
            files(&through.join(image)),
            "{image}: offline bytes differ from the upstream's"
        );
    }
    assert_eq!(
        sha256_hex(&std::fs::read(through.join("app/manifest.json")).unwrap()),
        app
    );
    assert_eq!(
        sha256_hex(&std::fs::read(through.join("multi/manifest.json")).unwrap()),
        multi
    );

    // containerd asks with ?ns=<upstream host>; its fallback server is a dead port.
    let ctd = Containerd::start(&w.work.join("ctd"));
    let hosts = write_hosts_toml(
        &w.work.join("certs.d"),
        &w.host(),
        "http://127.0.0.1:9",
        &p.url(),
    );
    for (reference, digest) in [(&app_ref, &app), (&multi_ref, &multi)] {
        ctd.pull(reference, &hosts)
            .unwrap_or_else(|e| panic!("containerd {reference}: {e}\n{}", p.log_contents()));
        assert_eq!(
            ctd.image_digest(reference).as_deref(),
            Some(digest.as_str()),
            "{reference}"
        );
    }
    assert_eq!(
        fault.connections(),
        0,
        "an offline instance connected to its upstream\n{}",
        p.log_contents()
    );
}

// 2. Offline misses

#[tokio::test(flavor = "multi_thread")]
async fn offline_misses_answer_404_saying_offline_and_tags_never_expire() {
    let m = Mirrored::new();
    let layout = m.w.work.join("export");
    m.a.export(&[m.app_ref()], &layout).expect_code(0);
    let fault = FaultServer::start(Fault::Status(500));
    let b = m.w.offline("b", &fault);
    b.import(&layout, None).expect_code(0);
    let p = b.serve();
    let base = p.url();
    let log = || p.log_contents();

    // tag_ttl and max_stale are 1 s: offline, the last verified mapping holds anyway.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resp = http::get(&format!("{base}/v2/keyed/app/manifests/v1")).await;
    assert_eq!(
        resp.status,
        200,
        "a held tag, past tag_ttl and max_stale\n{}",
        log()
    );
    assert_eq!(sha256_hex(&resp.body), m.app);

    let zeros = format!("sha256:{}", "0".repeat(64));
    for path in [
        "keyed/app/manifests/v2".to_owned(),
        "keyed/multi/manifests/v1".to_owned(),
        "keyed/nothing/manifests/latest".to_owned(),
        format!("keyed/app/manifests/{zeros}"),
    ] {
        let resp = http::get(&format!("{base}/v2/{path}")).await;
        let (status, code, message) = code_and_message(&resp);
        assert_eq!(
            (status, code.as_str()),
            (404, "MANIFEST_UNKNOWN"),
            "GET /v2/{path}: {message}\n{}",
            log()
        );
        assert!(
            message.contains("offline"),
            "GET /v2/{path}: {message:?} does not say offline"
        );
        let head = http::request("HEAD", &format!("{base}/v2/{path}"), &[]).await;
        assert_eq!(head.status, 404, "HEAD /v2/{path}");
    }

    let resp = http::get(&format!("{base}/v2/keyed/app/blobs/{zeros}")).await;
    let (status, code, message) = code_and_message(&resp);
    assert!(
        matches!(
            (status, code.as_str()),
            (404, "BLOB_UNKNOWN") | (403, "DENIED")
        ),
        "a blob not held: {status} {code} {message}\n{}",
        log()
    );
    assert_eq!(
        fault.connections(),
        0,
        "offline connected upstream\n{}",
        log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_offline_flag_without_upstreams_routes_names_like_docker_references() {
    let m = Mirrored::new();
    // A layout of `docker.io/library/fixture:v1` written by skopeo, signed by `release`.
    let fixture = m.w.push(Image::Small, "library/fixture", "v1");
    m.w.sign("library/fixture", "docker.io/library/fixture", &fixture);
    let oci = m.w.work.join("fixture-oci");
    let sig = signature_tag(&fixture);
    for tag in ["v1", sig.as_str()] {
        skopeo_oci(&m.w.name(&format!("library/fixture:{tag}")), &oci, tag);
    }
    let exported = m.w.work.join("export");
    m.export(&exported);

    // Imported with `[server] offline = true`, served by a config without it plus `--offline`;
    // both name the same cache.
    let c = m.w.bare("c", true);
    c.import(&oci, Some("docker.io/library/fixture"))
        .expect_code(0)
        .expect_line("imported", "docker.io/library/fixture:v1", &fixture);
    c.import(&exported, None)
        .expect_code(0)
        .expect_line("imported", &m.app_ref(), &m.app);

    let s = FlagServe::start(&m.w.bare("c", false));
    let base = s.url();
    // One-segment names are docker.io/library/<name>; a first segment with ':' is the registry.
    let host = m.w.host();
    for (path, digest) in [
        ("fixture/manifests/v1".to_owned(), &fixture),
        ("library/fixture/manifests/v1".to_owned(), &fixture),
        (
            "docker.io/library/fixture/manifests/v1".to_owned(),
            &fixture,
        ),
        (format!("{host}/keyed/app/manifests/v1"), &m.app),
        (format!("keyed/app/manifests/v1?ns={host}"), &m.app),
    ] {
        let resp = http::get(&format!("{base}/v2/{path}")).await;
        assert_eq!(
            resp.status,
            200,
            "GET /v2/{path}: {}\n{}",
            String::from_utf8_lossy(&resp.body),
            s.log_contents()
        );
        assert_eq!(&sha256_hex(&resp.body), digest, "/v2/{path}");
    }
    // `keyed/app` alone is docker.io/keyed/app (which no rule covers), not the held image.
    let resp = http::get(&format!("{base}/v2/keyed/app/manifests/v1")).await;
    assert_ne!(resp.status, 200, "docker.io/keyed/app is not held");
    // `alpine` is docker.io/library/alpine: allowed by a rule, not held, so an offline miss.
    let resp = http::get(&format!("{base}/v2/alpine/manifests/latest")).await;
    let (status, code, message) = code_and_message(&resp);
    assert_eq!(
        (status, code.as_str()),
        (404, "MANIFEST_UNKNOWN"),
        "{message}\n{}",
        s.log_contents()
    );
    assert!(message.contains("offline"), "{message}");
}

/// `skopeo copy docker://<src> oci:<dir>:<tag>` from the (plain-HTTP) upstream.
fn skopeo_oci(src: &str, dir: &Path, tag: &str) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .arg(format!("docker://{src}"))
        .arg(format!("oci:{}:{tag}", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy {src} to oci:{}:{tag}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The export format

#[test]
fn export_names_images_and_signatures_registry_repo_tag_and_blobs_match_their_names() {
    let m = Mirrored::new();
    let layout = m.w.work.join("export");
    m.export(&layout);
    let mut want = vec![
        m.app_ref(),
        sig_name(&m.w.name("keyed/app"), &m.app),
        m.multi_ref(),
        sig_name(&m.w.name("keyed/multi"), &m.multi),
    ];
    want.sort();
    assert_eq!(ref_names(&layout), want);
    assert_eq!(entry(&layout, &m.app_ref())["digest"], m.app.as_str());
    assert_eq!(entry(&layout, &m.multi_ref())["digest"], m.multi.as_str());
    let oci_layout = read_json(&layout.join("oci-layout"));
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let actual = sha256_hex(&std::fs::read(e.path()).unwrap());
        assert_eq!(actual, format!("sha256:{name}"), "blob file {name}");
    }

    let tar = m.w.work.join("export.tar");
    m.export(&tar);
    let listing = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    assert!(listing.status.success(), "tar -tf {}", tar.display());
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in ["index.json", "oci-layout"] {
        assert!(
            listing.lines().any(|l| l.trim_start_matches("./") == f),
            "{f} not in the tar:\n{listing}"
        );
    }
}

#[test]
fn export_after_an_ordinary_pull_carries_the_signature() {
    let w = World::new();
    let app = w.push_signed(Image::Small, "keyed/app", "v1");
    let a = w.connected("a", &[]);
    let mut p = a.serve();
    skopeo_copy(
        &format!("{}/keyed/app:v1", p.host()),
        &w.work.join("pulled"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    p.terminate();
    drop(p);
    let layout = w.work.join("export");
    a.export(&[w.name("keyed/app:v1")], &layout).expect_code(0);
    let names = ref_names(&layout);
    assert!(
        names.contains(&sig_name(&w.name("keyed/app"), &app)),
        "the signature manifest is missing from the export: {names:?}"
    );
    let fault = FaultServer::start(Fault::Status(500));
    w.offline("b", &fault)
        .import(&layout, None)
        .expect_code(0)
        .expect_line("imported", &w.name("keyed/app:v1"), &app);
}

#[test]
fn mirror_exits_1_when_an_image_is_denied_and_exports_only_what_passed() {
    let w = World::new();
    let app = w.push_signed(Image::Small, "keyed/app", "v1");
    w.push(Image::Small, "keyed/bare", "v1");
    let a = w.connected("a", &[w.name("keyed/app:v1"), w.name("keyed/bare:v1")]);
    let out = w.work.join("mirror-out");
    let run = a.mirror(&out);
    run.expect_code(1);
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains(&w.name("keyed/bare")),
        "the denied image is not named: {run}"
    );
    if out.join("index.json").exists() {
        let names = ref_names(&out);
        assert!(
            !names.iter().any(|n| n.contains("keyed/bare")),
            "a denied image was exported: {names:?}"
        );
        assert!(names.contains(&w.name("keyed/app:v1")), "{names:?}");
        assert_eq!(entry(&out, &w.name("keyed/app:v1"))["digest"], app.as_str());
    }
}

#[test]
fn mirror_expands_tag_globs_from_the_upstream_tag_list() {
    let w = World::new();
    let v1 = w.push_signed(Image::Small, "keyed/app", "v1.0");
    let v2 = w.push_signed(Image::DockerV2s2, "keyed/app", "v1.1");
    w.push_signed(Image::Small, "keyed/app", "v2.0");
    let a = w.connected("a", &[w.name("keyed/app:v1.*")]);
    let out = w.work.join("glob-out");
    let run = a.mirror(&out);
    run.expect_code(0);
    let names = ref_names(&out);
    assert!(names.contains(&w.name("keyed/app:v1.0")), "{names:?}");
    assert!(names.contains(&w.name("keyed/app:v1.1")), "{names:?}");
    assert!(!names.contains(&w.name("keyed/app:v2.0")), "{names:?}");
    assert_eq!(
        entry(&out, &w.name("keyed/app:v1.0"))["digest"],
        v1.as_str()
    );
    assert_eq!(
        entry(&out, &w.name("keyed/app:v1.1"))["digest"],
        v2.as_str()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Tampered transfers

/// Imports `layout` into a fresh offline instance; returns the run, the instance and its fault.
fn import_fresh(m: &Mirrored, sub: &str, layout: &Path) -> (Run, Instance, FaultServer) {
    let fault = FaultServer::start(Fault::Status(500));
    let b = m.w.offline(sub, &fault);
    let run = b.import(layout, None);
    eprintln!("{run}");
    (run, b, fault)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_in_a_layer_rejects_that_image_only() {
    let m = Mirrored::new();
    let exported = m.w.work.join("export");
    m.export(&exported);
    let layout = m.w.work.join("flipped");
    copy_dir(&exported, &layout);
    let layer = m.arm64_layer(&layout);
    let file = blob_path(&layout, &layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, &bytes).unwrap();

    let (run, b, fault) = import_fresh(&m, "b", &layout);
    run.expect_code(1)
        .expect_rejected(&m.multi_ref(), &m.multi, &[&layer, "digest"])
        .expect_line("imported", &m.app_ref(), &m.app);
    assert!(run.line("imported", &m.multi_ref()).is_none(), "{run}");
    let hex = layer.strip_prefix("sha256:").unwrap();
    assert!(
        !b.data().join("blobs/sha256").join(hex).exists(),
        "the tampered layer was stored under its digest"
    );

    let p = b.serve();
    let log = || p.log_contents();
    assert_not_served(&p.url(), "keyed/multi/manifests/v1", &log).await;
    assert_not_served(
        &p.url(),
        &format!("keyed/multi/manifests/{}", m.multi),
        &log,
    )
    .await;
    assert_not_served(&p.url(), &format!("keyed/multi/blobs/{layer}"), &log).await;
    assert_not_served(&p.url(), &format!("keyed/app/blobs/{layer}"), &log).await;
    let app = http::get(&format!("{}/v2/keyed/app/manifests/v1", p.url())).await;
    assert_eq!(app.status, 200, "the untouched image\n{}", log());
    assert_eq!(fault.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_swapped_for_another_images_is_rejected() {
    let m = Mirrored::new();
    let exported = m.w.work.join("export");
    m.export(&exported);
    let layout = m.w.work.join("swapped");
    copy_dir(&exported, &layout);
    // keyed/app's signature entry now points at keyed/multi's signature manifest.
    let app_sig = sig_name(&m.w.name("keyed/app"), &m.app);
    let multi_sig = entry(&layout, &sig_name(&m.w.name("keyed/multi"), &m.multi));
    let mut index = index_of(&layout);
    for d in index["manifests"].as_array_mut().unwrap() {
        if d["annotations"][REF_NAME] == app_sig.as_str() {
            for k in ["mediaType", "digest", "size"] {
                d[k] = multi_sig[k].clone();
            }
        }
    }
    write_index(&layout, &index);

    let (run, b, fault) = import_fresh(&m, "b", &layout);
    run.expect_code(1)
        .expect_rejected(
            &m.app_ref(),
            &m.app,
            &["digest mismatch in the payload", &m.multi],
        )
        .expect_line("imported", &m.multi_ref(), &m.multi);
    let p = b.serve();
    let log = || p.log_contents();
    assert_not_served(&p.url(), "keyed/app/manifests/v1", &log).await;
    assert_not_served(&p.url(), &format!("keyed/app/manifests/{}", m.app), &log).await;
    let multi = http::get(&format!("{}/v2/keyed/multi/manifests/v1", p.url())).await;
    assert_eq!(
        multi.status,
        200,
        "the image whose signature is intact\n{}",
        log()
    );
    assert_eq!(fault.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_without_its_signature_is_rejected() {
    let m = Mirrored::new();
    let exported = m.w.work.join("export");
    m.export(&exported);
    let layout = m.w.work.join("unsigned");
    copy_dir(&exported, &layout);
    let app_sig = sig_name(&m.w.name("keyed/app"), &m.app);
    let mut index = index_of(&layout);
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|d| d["annotations"][REF_NAME] != app_sig.as_str());
    write_index(&layout, &index);

    let (run, b, fault) = import_fresh(&m, "b", &layout);
    run.expect_code(1)
        .expect_rejected(&m.app_ref(), &m.app, &["no signature found"])
        .expect_line("imported", &m.multi_ref(), &m.multi);
    let p = b.serve();
    let log = || p.log_contents();
    assert_not_served(&p.url(), "keyed/app/manifests/v1", &log).await;
    assert_not_served(&p.url(), &format!("keyed/app/manifests/{}", m.app), &log).await;
    assert_eq!(fault.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_tar_or_a_missing_layout_exits_2_and_imports_nothing() {
    let m = Mirrored::new();
    let tar = m.w.work.join("export.tar");
    m.export(&tar);
    let bytes = std::fs::read(&tar).unwrap();
    let cut = m.w.work.join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();

    let (run, b, fault) = import_fresh(&m, "b", &cut);
    run.expect_code(2);
    assert!(
        !run.stderr.trim().is_empty(),
        "stderr must say what is wrong: {run}"
    );
    assert!(run.lines_starting("imported").is_empty(), "{run}");

    let no_index = m.w.work.join("no-index");
    std::fs::create_dir_all(no_index.join("blobs/sha256")).unwrap();
    let run = b.import(&no_index, None);
    run.expect_code(2);
    assert!(!run.stderr.trim().is_empty(), "{run}");
    let run = b.import(&m.w.work.join("does-not-exist.tar"), None);
    run.expect_code(2);
    assert!(!run.stderr.trim().is_empty(), "{run}");

    let p = b.serve();
    let log = || p.log_contents();
    for repo in ["keyed/app", "keyed/multi"] {
        assert_not_served(&p.url(), &format!("{repo}/manifests/v1"), &log).await;
    }
    assert_eq!(fault.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// 4. A layout written by a third-party tool

#[test]
fn a_layout_written_by_skopeo_imports_with_name_and_serves_offline() {
    let w = World::new();
    let app = w.push_signed(Image::Small, "keyed/app", "v1");
    let oci = w.work.join("skopeo-oci");
    let sig = signature_tag(&app);
    for tag in ["v1", sig.as_str()] {
        skopeo_oci(&w.name(&format!("keyed/app:{tag}")), &oci, tag);
    }
    assert_eq!(
        entry(&oci, "v1")["digest"],
        app.as_str(),
        "skopeo kept the manifest"
    );

    let fault = FaultServer::start(Fault::Status(500));
    let b = w.offline("b", &fault);
    let run = b.import(&oci, Some(&w.name("keyed/app")));
    run.expect_code(0)
        .expect_line("imported", &w.name("keyed/app:v1"), &app);
    assert!(run.lines_starting("rejected").is_empty(), "{run}");

    let direct = w.work.join("direct");
    skopeo_copy(&w.name("keyed/app:v1"), &direct).unwrap();
    let p = b.serve();
    let through = w.work.join("through");
    skopeo_copy(&format!("{}/keyed/app:v1", p.host()), &through)
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    assert_eq!(files(&direct), files(&through));
    assert_eq!(fault.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// 5. kill -9 during an import

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_import_leaves_nothing_unverified_and_a_rerun_completes() {
    let w = World::new();
    let big = w.push_signed(Image::Big, "keyed/big", "v1");
    let big_ref = w.name("keyed/big:v1");
    let a = w.connected("a", std::slice::from_ref(&big_ref));
    let layout = w.work.join("big-layout");
    a.mirror(&layout).expect_code(0);
    let direct = w.work.join("direct");
    skopeo_copy(&big_ref, &direct).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(direct.join("manifest.json")).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();

    let fault = FaultServer::start(Fault::Status(500));
    let b = w.offline("b", &fault);
    let config = b.write_config("cli.toml", "127.0.0.1:0");
    let mut child = Command::new(BIN)
        .arg("import")
        .arg(&layout)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    if let Some(status) = child.try_wait().unwrap() {
        eprintln!("note: the import finished ({status}) before the kill; the kill tests nothing");
    }
    let killed = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    eprintln!("kill -9: {killed}; import ended with {status}");

    // Whatever is served now must be whole and verified.
    {
        let p = b.serve();
        let base = p.url();
        let resp = http::get(&format!("{base}/v2/keyed/big/manifests/v1")).await;
        if resp.status == 200 {
            assert_eq!(sha256_hex(&resp.body), big);
        }
        let resp = http::try_request(
            "GET",
            &format!("{base}/v2/keyed/big/blobs/{layer}"),
            &[],
            Default::default(),
        )
        .await;
        if let Ok(resp) = resp {
            if resp.status == 200 {
                assert_eq!(sha256_hex(&resp.body), layer, "a partial layer was served");
            }
        }
    }

    let run = b.import(&layout, None);
    run.expect_code(0);
    assert!(
        run.line("imported", &big_ref).is_some() || run.line("unchanged", &big_ref).is_some(),
        "{run}"
    );
    assert!(run.stdout.contains(&big), "{run}");
    let p = b.serve();
    let through = w.work.join("through");
    skopeo_copy(&format!("{}/keyed/big:v1", p.host()), &through)
        .unwrap_or_else(|e| panic!("after the rerun: {e}\n{}", p.log_contents()));
    assert!(files(&direct) == files(&through), "the served bytes differ");
    assert_eq!(fault.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// 6. Re-import, 7. cache ls / gc

/// Mirrors `keyed/app:v1`, exports it to a dir and imports it into a fresh offline instance
/// (whose counting upstream is returned too, to keep it listening).
fn imported_app() -> (Mirrored, Instance, PathBuf, FaultServer) {
    let m = Mirrored::new();
    let layout = m.w.work.join("export");
    m.a.export(&[m.app_ref()], &layout).expect_code(0);
    let fault = FaultServer::start(Fault::Status(500));
    let b = m.w.offline("b", &fault);
    b.import(&layout, None)
        .expect_code(0)
        .expect_line("imported", &m.app_ref(), &m.app);
    (m, b, layout, fault)
}

#[test]
fn reimporting_the_same_layout_says_unchanged() {
    let (m, b, layout, fault) = imported_app();
    let again = b.import(&layout, None);
    again
        .expect_code(0)
        .expect_line("unchanged", &m.app_ref(), &m.app);
    assert!(
        again.lines_starting("imported").is_empty(),
        "nothing is new the second time: {again}"
    );
    assert!(again.lines_starting("rejected").is_empty(), "{again}");
    assert_eq!(fault.connections(), 0);
}

#[test]
fn cache_ls_lists_imported_tags_and_gc_keeps_them() {
    let (m, b, _, _fault) = imported_app();
    let ls = b.run(&[&"cache", &"ls"]);
    ls.expect_code(0);
    let line = ls
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{} {} ", m.app_ref(), m.app)))
        .unwrap_or_else(|| panic!("no `{} {} ...` line: {ls}", m.app_ref(), m.app));
    let fields: Vec<&str> = line.splitn(5, ' ').collect();
    assert_eq!(
        fields.len(),
        5,
        "<ref> <digest> <bytes> <verdict> <last-access>: {line:?}"
    );
    let bytes: u64 = fields[2]
        .parse()
        .unwrap_or_else(|e| panic!("bytes {:?} in {line:?}: {e}", fields[2]));
    assert!(bytes > 0, "{line:?}");
    let verdict = fields[3].to_ascii_lowercase();
    assert!(
        !verdict.is_empty() && !verdict.contains("den") && !verdict.contains("reject"),
        "verdict of an imported image: {line:?}"
    );

    let gc = b.run(&[&"cache", &"gc"]);
    gc.expect_code(0);
    let ls = b.run(&[&"cache", &"ls"]);
    ls.expect_code(0);
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.trim().starts_with(&format!("{} {} ", m.app_ref(), m.app))),
        "gc removed a verified image under max_size: {ls}\n{gc}"
    );
}
