//! The gate's side doors (issue #10), tried end to end the way an attacker with push access to
//! the upstream would try them: distribution 2.8 as the upstream, the portcullis binary, skopeo
//! as the client, and raw HTTP where a byte count is the point. Where distribution itself refuses
//! to store the attack (an index that is also a manifest) or where the attack is a broken answer
//! (a short body), an in-test relay in front of the real registry answers that one path and
//! relays everything else.
//!
//! 1. A fake signature opens no gate: a `.sig`/`.att`/referrer naming an unsigned image's blobs.
//! 2. A disguise is refused: keys Go reads and serde would not (`MediaType`, a duplicate, Unicode
//!    folds), an index under a signature tag, a referrer with a runnable layer, index/manifest
//!    ambiguity and media-type mismatches.
//! 3. A short body under the true length, and a length unlike the descriptor's: nothing reaches
//!    the client in `verify-first`, the transfer fails in `stream`.
//! 4. What must keep working: a signed image pulls in both modes, its signatures are served with
//!    or without a pull first, an honest cold blob arrives whole.
//!
//! Two tests at the end pin doors found while writing these (neither let a layer byte through;
//! both failed at 35f2ebc, both shut by 6d92737): evidence admitted for one subject was then
//! served for another (`evidence_admitted_for_one_subject_is_not_served_for_another`), and an
//! evidence artifact's config could be any JSON object, an unsigned image's own config included
//! (`an_image_config_is_not_evidence_config`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use portcullis::config::ColdBlobs;
use portcullis_testkit::cosign::{push_signature, simple_signing_payload, CosignKey, SigLayer};
use portcullis_testkit::http;
use portcullis_testkit::{
    dir_files, push, push_referrer, require_tools, sha256_hex, skopeo_copy, tempdir, ConfigBuilder,
    Image, Proxy, Registry, Rule,
};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// U+0131 LATIN SMALL LETTER DOTLESS I: Go folds it to `I` (`ToUpper(ToLower(r))`).
const DOTLESS_I: char = '\u{131}';

const MODES: [ColdBlobs; 2] = [ColdBlobs::VerifyFirst, ColdBlobs::Stream];

// ---------------------------------------------------------------------------------------------
// The world: a registry, a release key, and portcullis configs with one keyed rule.

struct World {
    _dir: tempfile::TempDir,
    work: PathBuf,
    upstream: Registry,
    release: CosignKey,
    key_path: PathBuf,
}

impl World {
    fn new() -> World {
        require_tools();
        let dir = tempdir();
        let work = dir.path().to_owned();
        let upstream = Registry::start(&work);
        let release = CosignKey::generate();
        let key_path = work.join("release.pub");
        release.write_public(&key_path);
        World {
            _dir: dir,
            work,
            upstream,
            release,
            key_path,
        }
    }

    /// Pushes a fixture as `repo:tag`; its manifest digest.
    fn push(&self, image: Image, repo_tag: &str) -> String {
        push(image, &self.upstream, repo_tag);
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        self.manifest(repo, tag).0
    }

    /// Signs `digest` with the release key (a cosign `.sig`); the payload it signed.
    fn sign(&self, repo: &str, digest: &str) -> Vec<u8> {
        let payload = simple_signing_payload(&format!("{}/{repo}", self.upstream.host()), digest);
        let layer = SigLayer {
            signature_b64: self.release.sign(&payload),
            payload: payload.clone(),
            ..SigLayer::default()
        };
        push_signature(&self.upstream, repo, digest, &[layer]);
        payload
    }

    /// `repo:reference` as the registry holds it: digest, bytes, parsed.
    fn manifest(&self, repo: &str, reference: &str) -> (String, Vec<u8>, Value) {
        let t = raw_get(
            self.upstream.addr,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", ACCEPT_ALL)],
        );
        assert_eq!(t.status, 200, "{repo}:{reference} in the registry");
        let v = serde_json::from_slice(&t.body).unwrap();
        (sha256_hex(&t.body), t.body, v)
    }

    /// Portcullis in front of the registry.
    fn proxy(&self, sub: &str, cold_blobs: ColdBlobs) -> Proxy {
        self.proxy_via(sub, &self.upstream.host(), &self.upstream.url(), cold_blobs)
    }

    /// Portcullis in front of the upstream `name` at `url` (the registry or a relay to it).
    fn proxy_via(&self, sub: &str, name: &str, url: &str, cold_blobs: ColdBlobs) -> Proxy {
        let config = ConfigBuilder::new()
            .default_upstream(name, url)
            .cache(|c| {
                c.tag_ttl = Duration::ZERO;
                c.cold_blobs = cold_blobs;
            })
            .trust_key("release", &self.key_path)
            .rule(Rule::new("keyed", &[&format!("{name}/keyed/**")]).key("release"));
        Proxy::start(Path::new(BIN), &self.work.join(sub), &config)
    }

    fn out(&self, name: &str) -> PathBuf {
        self.work.join("out").join(name)
    }
}

/// `sha256-<hex>.<suffix>`: where cosign keeps the `.sig` or `.att` of `digest`.
fn cosign_tag(digest: &str, suffix: &str) -> String {
    format!(
        "sha256-{}.{suffix}",
        digest.strip_prefix("sha256:").unwrap()
    )
}

/// The same request as a client names it three ways: the default upstream, `?ns=`, and a path
/// prefix naming the upstream.
fn routes(p: &Proxy, host: &str, repo: &str, rest: &str) -> Vec<String> {
    vec![
        format!("{}/v2/{repo}/{rest}", p.url()),
        format!("{}/v2/{repo}/{rest}?ns={host}", p.url()),
        format!("{}/v2/{host}/{repo}/{rest}", p.url()),
    ]
}

/// Status, OCI error code and message of `method url` (a client's Accept header).
async fn answer(method: &str, url: &str) -> (u16, String, String) {
    let resp = http::request(method, url, &[("Accept", ACCEPT_ALL)]).await;
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    (
        resp.status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
        v["errors"][0]["message"].as_str().unwrap_or("").to_owned(),
    )
}

/// Every url, by GET and by HEAD, is refused with `status`; GET says `code` and `needle`.
async fn refused(p: &Proxy, urls: &[String], status: u16, code: &str, needle: &str) {
    for url in urls {
        let (s, c, m) = answer("GET", url).await;
        assert_eq!(
            (s, c.as_str()),
            (status, code),
            "GET {url}: {m}\n{}",
            tail(p)
        );
        assert!(m.contains(needle), "GET {url}: {m:?} lacks {needle:?}");
        let (s, _, _) = answer("HEAD", url).await;
        assert_eq!(s, status, "HEAD {url}\n{}", tail(p));
    }
}

/// A served body that hashes to `digest`.
async fn served(p: &Proxy, url: &str, digest: &str) -> Vec<u8> {
    let resp = http::request("GET", url, &[("Accept", ACCEPT_ALL)]).await;
    assert_eq!(
        resp.status,
        200,
        "GET {url}: {}\n{}",
        String::from_utf8_lossy(&resp.body),
        tail(p)
    );
    assert_eq!(sha256_hex(&resp.body), digest, "GET {url}");
    resp.body.to_vec()
}

/// The last lines of the proxy's log, for assertion messages.
fn tail(p: &Proxy) -> String {
    let log = p.log_contents();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// Waits until the proxy has logged `n` failed blob fetches, then a moment more. A failed fetch
/// stays joinable until just after its log line, and a request that joins it fails with it,
/// without asking the upstream: the next request must find it gone to be a fresh attempt.
fn settle(p: &Proxy, n: usize) {
    let failed = || {
        p.log_contents()
            .matches("blob fetch failed; nothing cached")
            .count()
    };
    for _ in 0..400 {
        if failed() >= n {
            break;
        }
        thread::sleep(Duration::from_millis(25));
    }
    assert!(
        failed() >= n,
        "{n} failed fetches, nothing cached\n{}",
        tail(p)
    );
    thread::sleep(Duration::from_millis(200));
}

/// The digests a manifest names: its config and layers.
fn blobs_of(m: &Value) -> Vec<String> {
    std::iter::once(&m["config"])
        .chain(m["layers"].as_array().into_iter().flatten())
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// `skopeo copy` of `reference` fails, and says why: the refusal portcullis answered with.
fn skopeo_refused(reference: &str, out: &Path, why: &[&str]) {
    let err = match skopeo_copy(reference, out) {
        Ok(()) => panic!("skopeo copied {reference}"),
        Err(e) => e,
    };
    let lower = err.to_lowercase();
    assert!(
        why.iter().any(|w| lower.contains(w)),
        "skopeo failed on {reference}, but not with {why:?}: {err}"
    );
}

/// What skopeo says of a 403 (it prints the OCI message after it).
const DENIED: &[&str] = &["denied:"];
/// What skopeo says of a 502 (it does not read the body of a 5xx).
const INVALID: &[&str] = &["502 bad gateway"];
/// What skopeo says when a blob transfer breaks.
const BROKEN: &[&str] = &["unexpected eof"];

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP, for counting the bytes a client received before a transfer broke.

/// What a client reading one response to its end (or to the break) received.
#[derive(Debug)]
struct Transfer {
    /// 0 when not even a status line arrived.
    status: u16,
    content_length: Option<usize>,
    body: Vec<u8>,
}

impl Transfer {
    fn complete(&self) -> bool {
        self.content_length == Some(self.body.len())
    }
}

/// One `GET` with `Connection: close`, read until the server closes or breaks the connection.
fn raw_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Transfer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Transfer {
            status: 0,
            content_length: None,
            body: Vec::new(),
        };
    };
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    Transfer {
        status,
        content_length,
        body: raw[split + 4..].to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// The relay: an upstream in front of the real registry that answers some paths itself.

/// What the relay answers itself for one path.
#[derive(Debug, Clone)]
enum Canned {
    /// A manifest: `200`, this `Content-Type`, the body's digest, the body.
    Manifest { content_type: String, body: Vec<u8> },
    /// A lying blob answer: `200` with `Content-Length: declared` (none if `None`: the body
    /// runs to the close), then, after `pause` (so that the proxy has sent its client the
    /// headers), `body`, then the connection closes.
    Blob {
        declared: Option<usize>,
        body: Vec<u8>,
        pause: Duration,
    },
}

/// Relays every request to the registry (one per connection, `Connection: close`), except
/// those for a path given a [`Canned`] answer.
struct Relay {
    addr: SocketAddr,
    canned: Arc<Mutex<HashMap<String, Canned>>>,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let canned: Arc<Mutex<HashMap<String, Canned>>> = Arc::default();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, h, s) = (Arc::clone(&canned), Arc::clone(&hits), Arc::clone(&stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (c, h) = (Arc::clone(&c), Arc::clone(&h));
                thread::spawn(move || relay_one(stream, to, &c, &h));
            }
        });
        Relay {
            addr,
            canned,
            hits,
            stop,
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, requests for `path` (no query) get `canned`.
    fn answer(&self, path: &str, canned: Canned) {
        self.canned.lock().unwrap().insert(path.to_owned(), canned);
    }

    /// From now on, `path` is relayed like the rest.
    fn forget(&self, path: &str) {
        self.canned.lock().unwrap().remove(path);
    }

    /// Canned answers given so far to GETs.
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn relay_one(
    mut client: TcpStream,
    to: SocketAddr,
    canned: &Mutex<HashMap<String, Canned>>,
    hits: &AtomicUsize,
) {
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut words = text.split_whitespace();
    let method = words.next().unwrap_or("").to_owned();
    let target = words.next().unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_owned();
    let answer = canned.lock().unwrap().get(&path).cloned();
    match answer {
        Some(Canned::Manifest { content_type, body }) => {
            if method == "GET" {
                hits.fetch_add(1, Ordering::SeqCst);
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nDocker-Content-Digest: {}\r\nConnection: close\r\n\r\n",
                body.len(),
                sha256_hex(&body)
            );
            let _ = client.write_all(head.as_bytes());
            if method == "GET" {
                let _ = client.write_all(&body);
            }
        }
        Some(Canned::Blob {
            declared,
            body,
            pause,
        }) => {
            if method == "GET" {
                hits.fetch_add(1, Ordering::SeqCst);
            }
            let length = declared.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{length}Connection: close\r\n\r\n"
            );
            let _ = client.write_all(head.as_bytes());
            let _ = client.flush();
            if method == "GET" {
                thread::sleep(pause);
                let _ = client.write_all(&body);
            }
        }
        None => {
            let Ok(mut up) = TcpStream::connect(to) else {
                return;
            };
            let (first, rest) = text.split_once("\r\n").unwrap_or((&text, ""));
            let head = format!("{first}\r\nConnection: close\r\n{rest}");
            if up.write_all(head.as_bytes()).is_ok() {
                let _ = std::io::copy(&mut up, &mut client);
            }
        }
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// One request head (the proxy's requests have no body); `None` at EOF.
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

// ---------------------------------------------------------------------------------------------
// What an attacker pushes beside a signed image.

/// A real gzipped tar layer holding an executable `/payload.sh`, and its diff ID.
fn runnable_layer(marker: &str) -> (Vec<u8>, String) {
    let script = format!("#!/bin/sh\necho {marker}\n");
    let mut header = tar::Header::new_ustar();
    header.set_path("payload.sh").unwrap();
    header.set_size(script.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, script.as_bytes()).unwrap();
    let tar = builder.into_inner().unwrap();
    let diff_id = sha256_hex(&tar);
    let mut gzip = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    gzip.stdin.take().unwrap().write_all(&tar).unwrap();
    let out = gzip.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(&out.stdout[..2], b"\x1f\x8b");
    (out.stdout, diff_id)
}

/// A repository `keyed/app` holding a signed image S (whose verdict the proxy has cached) and
/// what an attacker pushed beside it: a runnable layer R, an image config C that runs it, an
/// unsigned image U of the two, and a simple-signing payload P that nothing legitimate names.
struct Stage {
    w: World,
    signed: String,
    signed_size: usize,
    unsigned: String,
    unsigned_size: usize,
    layer: (String, usize),
    config: (String, usize),
    payload: (String, usize),
}

const REPO: &str = "keyed/app";

impl Stage {
    fn new() -> Stage {
        let w = World::new();
        let signed = w.push(Image::Small, &format!("{REPO}:v1"));
        w.sign(REPO, &signed);
        let signed_size = w.manifest(REPO, &signed).1.len();
        let (layer, diff_id) = runnable_layer("pwned");
        let r = w.upstream.push_blob(REPO, &layer);
        let config = to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Entrypoint": ["/payload.sh"] },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        }));
        let c = w.upstream.push_blob(REPO, &config);
        let payload = simple_signing_payload("attacker.example/keyed/app", &signed);
        let p = w.upstream.push_blob(REPO, &payload);
        let u = to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": c, "size": config.len() },
            "layers": [{ "mediaType": TAR_GZ, "digest": r, "size": layer.len() }],
        }));
        let unsigned = w.upstream.put_manifest(REPO, "unsigned", OCI_MANIFEST, &u);
        Stage {
            w,
            signed,
            signed_size,
            unsigned,
            unsigned_size: u.len(),
            layer: (r, layer.len()),
            config: (c, config.len()),
            payload: (p, payload.len()),
        }
    }

    /// The config descriptor of the runnable image, as JSON text.
    fn config_json(&self) -> String {
        format!(
            r#"{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":{}}}"#,
            self.config.0, self.config.1
        )
    }

    /// The runnable layer's descriptor, as JSON text.
    fn layer_json(&self) -> String {
        format!(
            r#"{{"mediaType":"{TAR_GZ}","digest":"{}","size":{}}}"#,
            self.layer.0, self.layer.1
        )
    }

    /// The unsigned image's descriptor in an index.
    fn unsigned_json(&self) -> String {
        format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}"#,
            self.unsigned, self.unsigned_size
        )
    }

    /// Every blob of the attacker's: R, C and P.
    fn attacker_blobs(&self) -> [&str; 3] {
        [&self.layer.0, &self.config.0, &self.payload.0]
    }

    /// A proxy that has verified S (and refused U and R), so that S's evidence would pass.
    async fn proxy(&self, sub: &str, name: &str, url: &str) -> Proxy {
        let p = self.w.proxy_via(sub, name, url, ColdBlobs::VerifyFirst);
        for reference in ["v1", &self.signed] {
            let url = format!("{}/v2/{REPO}/manifests/{reference}", p.url());
            served(&p, &url, &self.signed).await;
        }
        let sig = format!(
            "{}/v2/{REPO}/manifests/{}",
            p.url(),
            cosign_tag(&self.signed, "sig")
        );
        assert_eq!(answer("GET", &sig).await.0, 200, "{}", tail(&p));
        refused(
            &p,
            &routes(&p, name, REPO, "manifests/unsigned"),
            403,
            "DENIED",
            "no signature found",
        )
        .await;
        self.blobs_refused(&p, name).await;
        p
    }

    /// R, C and P are refused, by every route, GET and HEAD.
    async fn blobs_refused(&self, p: &Proxy, host: &str) {
        for blob in self.attacker_blobs() {
            refused(
                p,
                &routes(p, host, REPO, &format!("blobs/{blob}")),
                403,
                "DENIED",
                "not referenced by any manifest",
            )
            .await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A fake signature opens no gate.

/// An unsigned image, and an artifact of verification material an attacker pushed for it whose
/// blobs are the image's own.
struct Fake {
    what: &'static str,
    repo: String,
    image: String,
    /// A cosign tag, or the referrer's digest.
    artifact: String,
    /// The image's config and layers, which the artifact names too.
    blobs: Vec<String>,
    /// Why portcullis refuses the artifact.
    needle: &'static str,
}

fn fakes(w: &World) -> Vec<Fake> {
    let variants: [(&str, &str, Option<&str>); 5] = [
        (
            "a .sig whose simple-signing layers are the image's blobs",
            "sig",
            Some(SIMPLE_SIGNING),
        ),
        (
            "a .sig whose layers keep their own media types",
            "sig",
            None,
        ),
        (
            "an .att whose DSSE layers are the image's blobs",
            "att",
            Some(DSSE),
        ),
        (
            "an .att whose layers keep their own media types",
            "att",
            None,
        ),
        (
            "a referrer whose bundle layers are the image's blobs",
            "referrer",
            Some(BUNDLE),
        ),
    ];
    let mut out = Vec::new();
    for (i, (what, kind, layer_type)) in variants.into_iter().enumerate() {
        let repo = format!("keyed/fake{i}");
        let image = w.push(Image::Small, &format!("{repo}:v1"));
        let (_, bytes, m) = w.manifest(&repo, &image);
        let mut layers = m["layers"].as_array().unwrap().clone();
        if let Some(t) = layer_type {
            for l in &mut layers {
                l["mediaType"] = t.into();
                l["annotations"] = json!({
                    SIGNATURE_ANNOTATION: w.release.sign(b"a payload for some other image"),
                });
            }
        }
        let mut artifact = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": m["config"],
            "layers": layers,
        });
        let artifact = if kind == "referrer" {
            artifact["artifactType"] = BUNDLE.into();
            artifact["subject"] =
                json!({ "mediaType": OCI_MANIFEST, "digest": image, "size": bytes.len() });
            let body = to_vec(&artifact);
            let digest = w
                .upstream
                .put_manifest(&repo, &sha256_hex(&body), OCI_MANIFEST, &body);
            // Listed under the referrers tag, as a client without the referrers API pushes it.
            let index = json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": body.len(),
                    "artifactType": BUNDLE,
                }],
            });
            let tag = format!("sha256-{}", image.strip_prefix("sha256:").unwrap());
            w.upstream
                .put_manifest(&repo, &tag, OCI_INDEX, &to_vec(&index));
            digest
        } else {
            let tag = cosign_tag(&image, kind);
            w.upstream
                .put_manifest(&repo, &tag, OCI_MANIFEST, &to_vec(&artifact));
            tag
        };
        out.push(Fake {
            what,
            repo,
            image,
            artifact,
            blobs: blobs_of(&m),
            needle: if layer_type.is_some() {
                "did not pass"
            } else {
                "no signature found"
            },
        });
    }
    out
}

impl Fake {
    async fn image_refused(&self, p: &Proxy, host: &str) {
        for reference in ["v1", &self.image] {
            refused(
                p,
                &routes(p, host, &self.repo, &format!("manifests/{reference}")),
                403,
                "DENIED",
                "no signature found",
            )
            .await;
        }
    }

    async fn artifact_refused(&self, p: &Proxy, host: &str) {
        let urls = routes(p, host, &self.repo, &format!("manifests/{}", self.artifact));
        for url in &urls {
            let (status, code, message) = answer("GET", url).await;
            assert_eq!(
                (status, code.as_str()),
                (403, "DENIED"),
                "{}: GET {url}: {message}\n{}",
                self.what,
                tail(p)
            );
            assert!(
                message.contains(self.needle),
                "{}: {message:?} lacks {:?}",
                self.what,
                self.needle
            );
        }
    }

    async fn blobs_refused(&self, p: &Proxy, host: &str) {
        for blob in &self.blobs {
            refused(
                p,
                &routes(p, host, &self.repo, &format!("blobs/{blob}")),
                403,
                "DENIED",
                "not referenced by any manifest",
            )
            .await;
        }
    }
}

/// Door 1: an unsigned image's `.sig`/`.att`/referrer that names the image's own config and
/// layers opens nothing: not the artifact, not one blob, in whatever order a client asks, by
/// whatever route, and skopeo cannot copy either.
#[tokio::test(flavor = "multi_thread")]
async fn a_fake_signature_opens_no_gate() {
    let w = World::new();
    let host = w.upstream.host();
    let fakes = fakes(&w);

    // The image first (its evidence is gathered), then the artifact, then each blob.
    let first = w.proxy("image-first", ColdBlobs::VerifyFirst);
    for f in &fakes {
        f.image_refused(&first, &host).await;
        f.artifact_refused(&first, &host).await;
        f.blobs_refused(&first, &host).await;
    }

    // A fresh instance: the artifact first (it asks for its subject's verdict), the blobs, the
    // image, the blobs again.
    let fresh = w.proxy("artifact-first", ColdBlobs::VerifyFirst);
    for f in &fakes {
        f.artifact_refused(&fresh, &host).await;
        f.blobs_refused(&fresh, &host).await;
        f.image_refused(&fresh, &host).await;
        f.blobs_refused(&fresh, &host).await;
    }

    // Blobs asked for before anything else, on a third instance.
    let blobs_first = w.proxy("blobs-first", ColdBlobs::Stream);
    for f in &fakes {
        f.blobs_refused(&blobs_first, &host).await;
        f.artifact_refused(&blobs_first, &host).await;
        f.blobs_refused(&blobs_first, &host).await;
    }

    for (i, f) in fakes.iter().enumerate() {
        let image = format!("{}/{}:v1", fresh.host(), f.repo);
        let artifact = if f.artifact.starts_with("sha256:") {
            format!("{}/{}@{}", fresh.host(), f.repo, f.artifact)
        } else {
            format!("{}/{}:{}", fresh.host(), f.repo, f.artifact)
        };
        for (n, reference) in [image, artifact].iter().enumerate() {
            let out = w.out(&format!("fake{i}-{n}"));
            skopeo_refused(reference, &out, DENIED);
        }
    }

    // Afterwards, on every instance, nothing of it is served either.
    for p in [&first, &fresh, &blobs_first] {
        for f in &fakes {
            f.image_refused(p, &host).await;
            f.artifact_refused(p, &host).await;
            f.blobs_refused(p, &host).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. A disguise is refused.

/// Manifests that a Go client reads as a runnable image while serde, reading exact keys only,
/// would read them as verification material: (what, document, why portcullis refuses it).
/// Several would pass every other check: under `layer\u017f`, serde sees only P (a valid
/// simple-signing payload) and C (a JSON object), so without the strict reader the document
/// would be admitted as S's evidence, while Docker reads its layers as [R]. No manifest field
/// has a `k`, so U+212A KELVIN SIGN cannot fold onto one; U+017F LONG S and U+0131 DOTLESS I
/// can.
fn disguises(s: &Stage) -> Vec<(&'static str, String, &'static str)> {
    let config = s.config_json();
    let (r, rn) = (&s.layer.0, s.layer.1);
    let (p, pn) = (&s.payload.0, s.payload.1);
    let head = format!(r#""schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config}"#);
    let subject = format!(
        r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}"#,
        s.signed, s.signed_size
    );
    let folded = "but Go clients read it as that field";
    vec![
        (
            "a referrer of S whose bundle layer is also a MediaType tar+gzip layer",
            format!(
                r#"{{{head},"artifactType":"{BUNDLE}","layers":[{{"mediaType":"{BUNDLE}","MediaType":"{TAR_GZ}","digest":"{r}","size":{rn}}}],"subject":{subject}}}"#
            ),
            folded,
        ),
        (
            "a layer with mediaType and MediaType (Go: last match wins)",
            format!(
                r#"{{{head},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","MediaType":"{TAR_GZ}","digest":"{r}","size":{rn}}}]}}"#
            ),
            folded,
        ),
        (
            "a layer with mediaType twice",
            format!(
                r#"{{{head},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"{r}","size":{rn},"mediaType":"{TAR_GZ}"}}]}}"#
            ),
            "appears twice in one object",
        ),
        (
            "a layer with med\u{131}aType (U+0131 DOTLESS I folds to I)",
            format!(
                r#"{{{head},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","med{DOTLESS_I}aType":"{TAR_GZ}","digest":"{r}","size":{rn}}}]}}"#
            ),
            folded,
        ),
        (
            "material under layers, the runnable layer under layer\\u017f (U+017F LONG S folds to S)",
            format!(
                r#"{{{head},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"{p}","size":{pn}}}],"layer\u017f":[{{"mediaType":"{TAR_GZ}","digest":"{r}","size":{rn}}}]}}"#
            ),
            folded,
        ),
        (
            "a simple-signing layer whose size is spelt twice, once as \u{17f}ize",
            format!(
                r#"{{{head},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"{p}","size":{pn},"ſize":{rn}}}]}}"#
            ),
            folded,
        ),
        (
            "a top-level \\u017fchemaVersion beside schemaVersion",
            format!(
                r#"{{"\u017fchemaVersion":2,{head},"layers":[{{"mediaType":"{SIMPLE_SIGNING}","digest":"{p}","size":{pn}}}]}}"#
            ),
            folded,
        ),
    ]
}

/// Door 2, the parser differential: under S's `.att` tag (S is signed and has passed, so the
/// subject check cannot be what refuses them), by tag and by digest, by every route, each
/// disguise is `502 MANIFEST_INVALID`, fetched again each time (never cached), and every blob
/// it names is `403`. Last, the `.sig` tag itself moved onto one after S's verdict was cached.
#[tokio::test(flavor = "multi_thread")]
async fn a_disguise_under_a_signature_tag_is_manifest_invalid() {
    let s = Stage::new();
    let host = s.w.upstream.host();
    let p = s.proxy("p", &host, &s.w.upstream.url()).await;
    let att = cosign_tag(&s.signed, "att");
    let mut seen = Vec::new();
    for (i, (what, doc, needle)) in disguises(&s).into_iter().enumerate() {
        // distribution (Go) stores it as it is: it reads it without complaint.
        let digest =
            s.w.upstream
                .put_manifest(REPO, &att, OCI_MANIFEST, doc.as_bytes());
        for reference in [att.as_str(), digest.as_str()] {
            let urls = routes(&p, &host, REPO, &format!("manifests/{reference}"));
            for url in &urls {
                let (status, code, message) = answer("GET", url).await;
                assert_eq!(
                    (status, code.as_str()),
                    (502, "MANIFEST_INVALID"),
                    "{what}: GET {url}: {message}\n{}",
                    tail(&p)
                );
                assert!(message.contains(needle), "{what}: {message:?}");
                assert_eq!(answer("HEAD", url).await.0, 502, "{what}: HEAD {url}");
            }
        }
        // Never cached: each request goes upstream again (the registry writes its access log
        // line after it answered: let it catch up before and after).
        let path = format!("/manifests/{digest}");
        let gets = || s.w.upstream.count_requests("GET", &path);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = gets();
        let url = format!("{}/v2/{REPO}/manifests/{digest}", p.url());
        assert_eq!(answer("GET", &url).await.1, "MANIFEST_INVALID");
        for _ in 0..100 {
            if gets() > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(gets(), before + 1, "{what}: asked upstream again");
        s.blobs_refused(&p, &host).await;
        for (n, reference) in [
            format!("{}/{REPO}:{att}", p.host()),
            format!("{}/{REPO}@{digest}", p.host()),
        ]
        .iter()
        .enumerate()
        {
            skopeo_refused(reference, &s.w.out(&format!("disguise{i}-{n}")), INVALID);
        }
        seen.push((what, digest));
    }

    // The `.sig` tag moved onto a disguise after S passed: refused the same way.
    let (what, doc, needle) = disguises(&s)
        .into_iter()
        .find(|(what, ..)| what.contains("MediaType (Go: last match wins)"))
        .unwrap();
    let sig = cosign_tag(&s.signed, "sig");
    s.w.upstream
        .put_manifest(REPO, &sig, OCI_MANIFEST, doc.as_bytes());
    for url in routes(&p, &host, REPO, &format!("manifests/{sig}")) {
        let (status, code, message) = answer("GET", &url).await;
        assert_eq!(
            (status, code.as_str()),
            (502, "MANIFEST_INVALID"),
            "{what}: {message}"
        );
        assert!(message.contains(needle), "{message}");
    }

    // Afterwards nothing of any of them is served; S itself still is.
    for (what, digest) in &seen {
        for url in routes(&p, &host, REPO, &format!("manifests/{digest}")) {
            assert_eq!(answer("GET", &url).await.1, "MANIFEST_INVALID", "{what}");
        }
    }
    s.blobs_refused(&p, &host).await;
    served(
        &p,
        &format!("{}/v2/{REPO}/manifests/{}", p.url(), s.signed),
        &s.signed,
    )
    .await;
    let log = p.log_contents();
    assert!(log.contains("manifest refused"), "{}", tail(&p));
}

/// Door 2, the shapes: an index under S's `.att` and then `.sig` tag listing the unsigned image,
/// and a referrer of S (by digest) with a runnable layer beside a bundle, are images, not
/// verification material: the policy refuses them, the unsigned child and every blob.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_or_a_runnable_referrer_beside_a_signed_image_is_refused() {
    let s = Stage::new();
    let host = s.w.upstream.host();
    let p = s.proxy("p", &host, &s.w.upstream.url()).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        s.unsigned_json()
    );
    let bundle = to_vec(&json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {},
        "pushedBy": "attacker",
    }));
    let bundle_digest = s.w.upstream.push_blob(REPO, &bundle);
    let empty = s.w.upstream.push_blob(REPO, b"{}");
    let referrer = to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE,
        "config": { "mediaType": EMPTY_CONFIG, "digest": empty, "size": 2 },
        "layers": [
            { "mediaType": BUNDLE, "digest": bundle_digest, "size": bundle.len() },
            { "mediaType": TAR_GZ, "digest": s.layer.0, "size": s.layer.1 },
        ],
        "subject": { "mediaType": OCI_MANIFEST, "digest": s.signed, "size": s.signed_size },
    }));
    let referrer =
        s.w.upstream
            .put_manifest(REPO, &sha256_hex(&referrer), OCI_MANIFEST, &referrer);

    let mut copies = 0;
    let mut skopeo_fails = |reference: String| {
        copies += 1;
        let out = s.w.out(&format!("shape{copies}"));
        skopeo_refused(&reference, &out, DENIED);
    };
    for suffix in ["att", "sig"] {
        let tag = cosign_tag(&s.signed, suffix);
        let digest =
            s.w.upstream
                .put_manifest(REPO, &tag, OCI_INDEX, index.as_bytes());
        for reference in [tag.as_str(), digest.as_str()] {
            refused(
                &p,
                &routes(&p, &host, REPO, &format!("manifests/{reference}")),
                403,
                "DENIED",
                "no signature found",
            )
            .await;
        }
        refused(
            &p,
            &routes(&p, &host, REPO, &format!("manifests/{}", s.unsigned)),
            403,
            "DENIED",
            "no signature found",
        )
        .await;
        s.blobs_refused(&p, &host).await;
        skopeo_fails(format!("{}/{REPO}:{tag}", p.host()));
        skopeo_fails(format!("{}/{REPO}@{digest}", p.host()));
    }

    refused(
        &p,
        &routes(&p, &host, REPO, &format!("manifests/{referrer}")),
        403,
        "DENIED",
        "no signature found",
    )
    .await;
    for blob in [&bundle_digest, &empty, &s.layer.0] {
        refused(
            &p,
            &routes(&p, &host, REPO, &format!("blobs/{blob}")),
            403,
            "DENIED",
            "not referenced by any manifest",
        )
        .await;
    }
    skopeo_fails(format!("{}/{REPO}@{referrer}", p.host()));
    skopeo_fails(format!("{}/{REPO}:unsigned", p.host()));
    s.blobs_refused(&p, &host).await;
}

/// Door 2, ambiguity (the CVE-2021-41190 class) and media types that disagree: distribution
/// refuses to store these, so the relay answers them in its place, under S's `.att` tag, a plain
/// tag and their digest. Each is `502 MANIFEST_INVALID` by every route, asked upstream again
/// every time, and nothing it names is served.
#[tokio::test(flavor = "multi_thread")]
async fn index_and_manifest_ambiguity_is_manifest_invalid() {
    let s = Stage::new();
    let relay = Relay::start(s.w.upstream.addr);
    let host = relay.host();
    let p = s.proxy("p", &host, &relay.url()).await;
    let config = s.config_json();
    let layer = s.layer_json();
    let child = s.unsigned_json();
    let both = "both an index (manifests) and an image manifest";
    let mismatch = "does not match its shape";
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "manifests and layers, an image manifest's mediaType",
            OCI_MANIFEST,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{config},"layers":[{layer}],"manifests":[{child}]}}"#
            ),
            both,
        ),
        (
            "manifests and layers, an index's mediaType",
            OCI_INDEX,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{child}],"config":{config},"layers":[{layer}]}}"#
            ),
            both,
        ),
        (
            "manifests and layers, no mediaType, served as JSON",
            "application/json",
            format!(
                r#"{{"schemaVersion":2,"manifests":[{child}],"layers":[{layer}],"config":{config}}}"#
            ),
            both,
        ),
        (
            "an index's mediaType on an image manifest",
            OCI_INDEX,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","config":{config},"layers":[{layer}]}}"#
            ),
            mismatch,
        ),
        (
            "an image manifest's mediaType on an index",
            OCI_MANIFEST,
            format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","manifests":[{child}]}}"#),
            mismatch,
        ),
        (
            "no mediaType, an image manifest served as an index",
            OCI_INDEX,
            format!(r#"{{"schemaVersion":2,"config":{config},"layers":[{layer}]}}"#),
            mismatch,
        ),
        (
            "an OCI manifest served as a Docker manifest",
            DOCKER_MANIFEST,
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","schemaVersion":2,"config":{config},"layers":[{layer}]}}"#
            ),
            "was served as",
        ),
    ];
    let att = cosign_tag(&s.signed, "att");
    for (i, (what, content_type, doc, needle)) in cases.into_iter().enumerate() {
        let digest = sha256_hex(doc.as_bytes());
        let tag = format!("ambiguous{i}");
        let canned = Canned::Manifest {
            content_type: content_type.to_owned(),
            body: doc.into_bytes(),
        };
        let paths: Vec<String> = [&att, &tag, &digest]
            .iter()
            .map(|r| format!("/v2/{REPO}/manifests/{r}"))
            .collect();
        for path in &paths {
            relay.answer(path, canned.clone());
        }
        for reference in [&att, &tag, &digest] {
            for url in routes(&p, &host, REPO, &format!("manifests/{reference}")) {
                let before = relay.hits();
                let (status, code, message) = answer("GET", &url).await;
                assert_eq!(
                    (status, code.as_str()),
                    (502, "MANIFEST_INVALID"),
                    "{what}: GET {url}: {message}\n{}",
                    tail(&p)
                );
                assert!(
                    message.contains(needle),
                    "{what}: {message:?} lacks {needle:?}"
                );
                assert!(
                    relay.hits() > before,
                    "{what}: {url} was answered from a cache"
                );
                assert_eq!(answer("HEAD", &url).await.0, 502, "{what}: HEAD {url}");
            }
        }
        refused(
            &p,
            &routes(&p, &host, REPO, &format!("manifests/{}", s.unsigned)),
            403,
            "DENIED",
            "no signature found",
        )
        .await;
        s.blobs_refused(&p, &host).await;
        for (n, reference) in [
            format!("{}/{REPO}:{tag}", p.host()),
            format!("{}/{REPO}:{att}", p.host()),
            format!("{}/{REPO}@{digest}", p.host()),
        ]
        .iter()
        .enumerate()
        {
            skopeo_refused(reference, &s.w.out(&format!("ambiguous{i}-{n}")), INVALID);
        }
        for path in &paths {
            relay.forget(path);
        }
    }
    // The honest S still passes through the relay.
    served(
        &p,
        &format!("{}/v2/{REPO}/manifests/v1", p.url()),
        &s.signed,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. A short body, or a length unlike the descriptor's.

/// Door 3: the relay answers the signed Big image's layer with the true `Content-Length`, waits
/// until portcullis has sent its client the headers, sends 8 MiB of other bytes and closes. In
/// `verify-first` the client receives not one body byte; in `stream` the transfer fails (a
/// prefix of the attacker's bytes may arrive first: that is what `stream` opts into). Nothing
/// is cached: the same again, and skopeo fails; once the relay is honest again, the whole blob
/// arrives and hashes to its digest.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_body_under_the_true_length_releases_nothing_before_the_digest() {
    let w = World::new();
    let big = w.push(Image::Big, "keyed/big:v1");
    w.sign("keyed/big", &big);
    let (_, _, m) = w.manifest("keyed/big", &big);
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let size = m["layers"][0]["size"].as_u64().unwrap() as usize;
    assert!(size > 40 << 20, "the Big layer is {size} bytes");
    let lies: Vec<u8> = b"#!/bin/sh\necho unverified\n"
        .iter()
        .copied()
        .cycle()
        .take(8 << 20)
        .collect();
    let relay = Relay::start(w.upstream.addr);
    let path = format!("/v2/keyed/big/blobs/{layer}");
    for mode in MODES {
        relay.answer(
            &path,
            Canned::Blob {
                declared: Some(size),
                body: lies.clone(),
                pause: Duration::from_secs(1),
            },
        );
        let base = relay.hits();
        let p = w.proxy_via(
            &format!("short-{mode:?}"),
            &relay.host(),
            &relay.url(),
            mode,
        );
        served(&p, &format!("{}/v2/keyed/big/manifests/v1", p.url()), &big).await;
        for attempt in 0..2 {
            // Every lie told so far ended in a failed fetch, and nothing was cached.
            settle(&p, relay.hits() - base);
            let before = relay.hits();
            let t = raw_get(p.addr, &path, &[]);
            assert_eq!(relay.hits(), before + 1, "{mode:?}: the lie was told");
            assert!(
                !t.complete(),
                "{mode:?}: a complete transfer of a short body"
            );
            assert!(t.body.len() < size, "{mode:?}");
            match mode {
                ColdBlobs::VerifyFirst => {
                    assert_eq!(
                        (t.status, t.content_length),
                        (200, Some(size)),
                        "{mode:?}: the headers go out at once\n{}",
                        tail(&p)
                    );
                    assert_eq!(
                        t.body.len(),
                        0,
                        "{mode:?} attempt {attempt}: unverified bytes reached the client"
                    );
                }
                ColdBlobs::Stream => {
                    // `stream` may release a prefix before the break: exactly the bytes the
                    // upstream sent, unverified. The client's own digest check is what catches
                    // them; the transfer never completes.
                    assert!(
                        t.body.len() <= lies.len() && t.body == lies[..t.body.len()],
                        "{mode:?}: what arrived is not a prefix of what the upstream sent"
                    );
                    eprintln!(
                        "{mode:?}: {} unverified bytes before the break",
                        t.body.len()
                    );
                }
            }
        }
        settle(&p, relay.hits() - base);
        skopeo_refused(
            &format!("{}/keyed/big:v1", p.host()),
            &w.out(&format!("short-{mode:?}")),
            BROKEN,
        );
        settle(&p, relay.hits() - base);

        // Honest again: the whole blob, cold, matching its digest.
        relay.forget(&path);
        let t = raw_get(p.addr, &path, &[]);
        assert_eq!(t.status, 200, "{mode:?}\n{}", tail(&p));
        assert!(t.complete(), "{mode:?}: {} of {size} bytes", t.body.len());
        assert_eq!(sha256_hex(&t.body), layer, "{mode:?}");
    }
}

/// Door 3, sizes: an upstream whose `Content-Length` for a blob is not the size the verified
/// descriptor promised (one more, one less) is refused before any byte, for GET and HEAD, in
/// both modes; an upstream that sends no length and runs past the descriptor's size breaks the
/// transfer with no byte released in `verify-first`.
#[tokio::test(flavor = "multi_thread")]
async fn a_length_unlike_the_descriptor_is_refused() {
    let w = World::new();
    let small = w.push(Image::Small, "keyed/small:v1");
    w.sign("keyed/small", &small);
    let (_, _, m) = w.manifest("keyed/small", &small);
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let truth = std::fs::read(w.upstream.blob_path(&layer)).unwrap();
    assert_eq!(sha256_hex(&truth), layer);
    let n = truth.len();
    let longer: Vec<u8> = truth.iter().copied().chain(*b"#!/bin/sh\n").collect();
    let relay = Relay::start(w.upstream.addr);
    let path = format!("/v2/keyed/small/blobs/{layer}");
    for mode in MODES {
        let p = w.proxy_via(&format!("len-{mode:?}"), &relay.host(), &relay.url(), mode);
        served(
            &p,
            &format!("{}/v2/keyed/small/manifests/v1", p.url()),
            &small,
        )
        .await;
        let base = relay.hits();
        for (what, declared, body) in [
            (
                "one byte more",
                n + 1,
                truth.iter().copied().chain([b'\n']).collect(),
            ),
            ("one byte less", n - 1, truth[..n - 1].to_vec()),
        ] {
            relay.answer(
                &path,
                Canned::Blob {
                    declared: Some(declared),
                    body,
                    pause: Duration::ZERO,
                },
            );
            settle(&p, relay.hits() - base);
            let before = relay.hits();
            let t = raw_get(p.addr, &path, &[]);
            assert_eq!(relay.hits(), before + 1);
            let v: Value = serde_json::from_slice(&t.body).unwrap_or_else(|_| {
                panic!(
                    "{mode:?} {what}: {} bytes of blob instead of an error",
                    t.body.len()
                )
            });
            assert_eq!(
                (t.status, v["errors"][0]["code"].as_str()),
                (502, Some("DIGEST_INVALID")),
                "{mode:?} {what}: {v}"
            );
            let message = v["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains("the verified manifest"), "{message}");
            let head = answer("HEAD", &format!("{}{path}", p.url())).await;
            assert_eq!(head.0, 502, "{mode:?} {what}: HEAD");
        }

        // No length at all, and more bytes than the descriptor says.
        relay.answer(
            &path,
            Canned::Blob {
                declared: None,
                body: longer.clone(),
                pause: Duration::from_secs(1),
            },
        );
        settle(&p, relay.hits() - base);
        let t = raw_get(p.addr, &path, &[]);
        assert!(!t.complete(), "{mode:?}: {t:?}");
        if mode == ColdBlobs::VerifyFirst {
            assert_eq!(
                (t.status, t.body.len()),
                (200, 0),
                "{mode:?}: unverified bytes reached the client"
            );
        }

        settle(&p, relay.hits() - base);
        relay.forget(&path);
        let t = raw_get(p.addr, &path, &[]);
        assert_eq!(
            (t.status, t.complete()),
            (200, true),
            "{mode:?}\n{}",
            tail(&p)
        );
        assert_eq!(sha256_hex(&t.body), layer);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. What must keep working.

/// A signed image's signatures, as a cosign-style client asks for them.
struct Signatures<'a> {
    repo: &'a str,
    host: &'a str,
    sig_tag: &'a str,
    sig_digest: &'a str,
    sig: &'a Value,
    payload: &'a [u8],
    referrer: &'a str,
    referrer_manifest: &'a Value,
    bundle: &'a [u8],
}

impl Signatures<'_> {
    /// The `.sig` manifest by every route, its blobs (the layer is the signed payload), the
    /// bundle referrer by digest and its blobs (the layer is the bundle): all 200, all whole.
    async fn served_by(&self, p: &Proxy) {
        let repo = self.repo;
        let base = format!("{}/v2/{repo}", p.url());
        for url in routes(p, self.host, repo, &format!("manifests/{}", self.sig_tag)) {
            served(p, &url, self.sig_digest).await;
        }
        let blobs = blobs_of(self.sig);
        for blob in &blobs {
            served(p, &format!("{base}/blobs/{blob}"), blob).await;
        }
        let got = served(p, &format!("{base}/blobs/{}", blobs[1]), &blobs[1]).await;
        assert!(got == self.payload, "the .sig layer is the signed payload");
        let url = format!("{base}/manifests/{}", self.referrer);
        served(p, &url, self.referrer).await;
        let blobs = blobs_of(self.referrer_manifest);
        for blob in &blobs {
            served(p, &format!("{base}/blobs/{blob}"), blob).await;
        }
        let got = served(p, &format!("{base}/blobs/{}", blobs[1]), &blobs[1]).await;
        assert!(got == self.bundle, "the referrer's layer is the bundle");
    }
}

/// A signed image still pulls with skopeo in both modes; its `.sig` manifest and signature
/// blobs, and a bundle referrer, are served without a pull first (the request asks for the
/// subject's verdict) and after one; a cold blob arrives whole and hashes to its digest.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_image_and_its_signatures_are_still_served() {
    let w = World::new();
    let repo = "keyed/app";
    let host = w.upstream.host();
    let image = w.push(Image::Big, &format!("{repo}:v1"));
    let payload = w.sign(repo, &image);
    let sig_tag = cosign_tag(&image, "sig");
    let (sig_digest, _, sig) = w.manifest(repo, &sig_tag);
    let bundle = to_vec(&json!({ "mediaType": BUNDLE, "verificationMaterial": {} }));
    let referrer = push_referrer(&w.upstream, repo, &image, BUNDLE, BUNDLE, &bundle, &[]);
    let (_, _, referrer_manifest) = w.manifest(repo, &referrer);
    let (_, _, m) = w.manifest(repo, &image);

    let signatures = Signatures {
        repo,
        host: &host,
        sig_tag: &sig_tag,
        sig_digest: &sig_digest,
        sig: &sig,
        payload: &payload,
        referrer: &referrer,
        referrer_manifest: &referrer_manifest,
        bundle: &bundle,
    };

    for mode in MODES {
        // The signatures first, on an instance that has seen nothing.
        let p = w.proxy(&format!("sig-first-{mode:?}"), mode);
        signatures.served_by(&p).await;
        let out = w.out(&format!("sig-{mode:?}"));
        skopeo_copy(&format!("{}/{repo}:{sig_tag}", p.host()), &out)
            .unwrap_or_else(|e| panic!("{mode:?}: {e}\n{}", tail(&p)));

        // The image first, on another: a cold layer by raw GET, whole.
        let p = w.proxy(&format!("image-first-{mode:?}"), mode);
        served(&p, &format!("{}/v2/{repo}/manifests/v1", p.url()), &image).await;
        let layer = m["layers"][0]["digest"].as_str().unwrap();
        let t = raw_get(p.addr, &format!("/v2/{repo}/blobs/{layer}"), &[]);
        assert_eq!(t.status, 200, "{mode:?}\n{}", tail(&p));
        assert!(
            t.complete(),
            "{mode:?}: {} bytes of {:?}",
            t.body.len(),
            t.content_length
        );
        assert_eq!(sha256_hex(&t.body), layer, "{mode:?}");
        let config = m["config"]["digest"].as_str().unwrap();
        served(&p, &format!("{}/v2/{repo}/blobs/{config}", p.url()), config).await;

        let out = w.out(&format!("image-{mode:?}"));
        skopeo_copy(&format!("{}/{repo}:v1", p.host()), &out)
            .unwrap_or_else(|e| panic!("{mode:?}: {e}\n{}", tail(&p)));
        let files = dir_files(&out);
        let mut blobs = 0;
        for (name, bytes) in &files {
            match name.as_str() {
                "manifest.json" => assert_eq!(sha256_hex(bytes), image),
                "version" => {}
                hex => {
                    assert_eq!(sha256_hex(bytes), format!("sha256:{hex}"), "{mode:?}");
                    blobs += 1;
                }
            }
        }
        let names: Vec<&String> = files.iter().map(|(n, _)| n).collect();
        assert_eq!(blobs, blobs_of(&m).len(), "{mode:?}: {names:?}");
        signatures.served_by(&p).await;
    }
}

/// Evidence is served only for a subject that passed (issue #10, "only a verdict opens the
/// gate", (c)). A legacy cosign `.sig` names its subject by its tag alone, so an attacker can
/// put the very bytes of a signed image's `.sig` under an unsigned image's `.sig` tag. Asked
/// for first, that is refused (the unsigned image did not pass); it must stay refused once the
/// signed image's own `.sig` has been served.
#[tokio::test(flavor = "multi_thread")]
async fn evidence_admitted_for_one_subject_is_not_served_for_another() {
    let s = Stage::new();
    let host = s.w.upstream.host();
    let (sig_digest, sig_bytes, _) = s.w.manifest(REPO, &cosign_tag(&s.signed, "sig"));
    let copied = cosign_tag(&s.unsigned, "sig");
    s.w.upstream
        .put_manifest(REPO, &copied, OCI_MANIFEST, &sig_bytes);
    let p = s.w.proxy("p", ColdBlobs::VerifyFirst);
    let urls = routes(&p, &host, REPO, &format!("manifests/{copied}"));
    for url in &urls {
        let (status, code, message) = answer("GET", url).await;
        assert_eq!((status, code.as_str()), (403, "DENIED"), "before: {url}");
        assert!(message.contains("did not pass"), "{message}");
    }
    let own = format!(
        "{}/v2/{REPO}/manifests/{}",
        p.url(),
        cosign_tag(&s.signed, "sig")
    );
    served(&p, &own, &sig_digest).await;
    // No content door: the unsigned image and its blobs stay refused...
    refused(
        &p,
        &routes(&p, &host, REPO, &format!("manifests/{}", s.unsigned)),
        403,
        "DENIED",
        "(enforce) failed",
    )
    .await;
    s.blobs_refused(&p, &host).await;
    // ...and neither is the artifact, for a subject that did not pass. (At 35f2ebc it was, 200:
    // `admit_evidence` remembered an admitted artifact by its own digest alone, not by subject.)
    for url in &urls {
        let (status, code, message) = answer("GET", url).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "DENIED"),
            "after {own} was served, the same bytes under {url} are served too: {message}"
        );
    }
}

/// Evidence blobs must parse as what they claim (issue #10, "only a verdict opens the gate",
/// (b): "... or the small config cosign writes"). An attacker names the unsigned image's own
/// config C (its entrypoint, its rootfs) as the config of an `.att` of the signed image S,
/// beside a DSSE envelope: C is a blob of an image that did not pass, and not the config cosign
/// writes (`{}`, or `rootfs.diff_ids` naming the artifact's own layers), so neither the `.att`
/// nor C is served, and R stays refused. (At 35f2ebc an artifact config was any JSON object:
/// the `.att` and C were served, 200.)
#[tokio::test(flavor = "multi_thread")]
async fn an_image_config_is_not_evidence_config() {
    let s = Stage::new();
    let host = s.w.upstream.host();
    let p = s.proxy("p", &host, &s.w.upstream.url()).await;
    let envelope = to_vec(&json!({
        "payload": "e30=",
        "payloadType": "application/vnd.in-toto+json",
        "signatures": [{ "sig": "eA==" }],
    }));
    let e = s.w.upstream.push_blob(REPO, &envelope);
    let att = to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": s.config.0, "size": s.config.1 },
        "layers": [{ "mediaType": DSSE, "digest": e, "size": envelope.len() }],
    }));
    let tag = cosign_tag(&s.signed, "att");
    s.w.upstream.put_manifest(REPO, &tag, OCI_MANIFEST, &att);
    let (status, _, message) =
        answer("GET", &format!("{}/v2/{REPO}/manifests/{tag}", p.url())).await;
    // The runnable layer stays shut whatever happens to the config.
    refused(
        &p,
        &routes(&p, &host, REPO, &format!("blobs/{}", s.layer.0)),
        403,
        "DENIED",
        "not referenced by any manifest",
    )
    .await;
    for url in routes(&p, &host, REPO, &format!("blobs/{}", s.config.0)) {
        let (status, code, _) = answer("GET", &url).await;
        assert_eq!(
            (status, code.as_str()),
            (403, "DENIED"),
            "the unsigned image's config is served as the config of {tag}: {url}"
        );
    }
    assert_eq!(status, 403, "{tag}: {message}");
}
