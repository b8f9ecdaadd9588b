//! Hostile upstreams and hostile clients (issue #12), each attack tried end to end against the
//! binary, with the real upstream (distribution 2.8) and raw sockets on loopback:
//!
//! - [`evidence_amplification_is_bounded`]: referrers that name one 4 MiB bundle 32 times, eight
//!   times over: one upstream GET per distinct digest, at most 16 MiB of declared evidence per
//!   verdict, and the process's peak RSS under 200 MiB, for one request and for three at once.
//! - [`concurrent_cold_pulls_share_one_verdict`]: 20 cold pulls of one signed image fetch its
//!   evidence once.
//! - [`slowloris_neither_locks_out_new_clients_nor_stays_open`] and
//!   [`slowloris_connections_that_send_nothing_are_closed_too`]: half-sent requests, silent
//!   connections and idle keep-alives are closed after `header_read_timeout`, connections past
//!   `max_connections_per_peer` at once, and a client from another address is served meanwhile;
//!   [`connections_past_the_per_peer_cap_are_closed_at_once`], the cap alone.
//! - [`password_flood_neither_slows_users_nor_runs_argon2_unbounded`]: a wrong-password flood
//!   from one address leaves a verified user's `/v2/` under 50 ms and a new user served, and past
//!   `[auth] max_failures` that address is refused without argon2.
//!
//! Other client addresses come from 127/8, which is all loopback on Linux: a socket bound to
//! 127.0.0.2 before it connects is, to portcullis, another client. The figures these tests
//! measure (RSS, GET counts, latencies, close delays) are printed to stderr
//! (`cargo nextest run … --no-capture`), and every assertion's message carries them.
//!
//! They measure memory and time on small machines, so they run one at a time (see
//! [`exclusive`]), and the only timed assertions are the issue's own thresholds and the
//! header-read deadline, each with the slack its comment gives.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::future::join_all;
use portcullis_testkit::cosign::{push_signature, simple_signing_payload, CosignKey, SigLayer};
use portcullis_testkit::http;
use portcullis_testkit::referrers::{referrers_tag, EMPTY_CONFIG, OCI_INDEX, OCI_MANIFEST};
use portcullis_testkit::{
    manifest_digest_in_registry, push, require_tools, sha256_hex, tempdir, ConfigBuilder, Image,
    Proxy, Registry, Rule,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const MIB: u64 = 1024 * 1024;
/// What the issue asks of the amplification case: "memory under 200 MiB".
const RSS_LIMIT_KIB: u64 = 200 * 1024;
/// portcullis' cap on one evidence blob (4 MiB): the largest blob an attacker can have fetched,
/// so the one the amplification uses.
const EVIDENCE_BLOB: u64 = portcullis::oci::cosign::MAX_EVIDENCE_BLOB;
/// portcullis' declared-size budget for one verdict (`gate::evidence::MAX_EVIDENCE_BYTES`, which
/// the crate does not export), as the issue asks.
const EVIDENCE_BUDGET: u64 = 16 * MIB;
/// The slowloris tests' `[server] header_read_timeout`.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How late after `header_read_timeout` a connection may be closed: the deadline is hyper's
/// timer, checked when the connection is polled, on two cores shared with hundreds of sockets
/// and a debug build; a connection the deadline does not reach stays open for good, so a
/// generous slack still tells the two apart.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

/// The tests here measure peak memory and latency on a small (two-core) machine, so they run
/// one at a time, across nextest's processes: each holds this listener on an address nothing
/// else uses, and the kernel frees it when the test's process ends, however it ends.
struct Exclusive {
    _held: std::net::TcpListener,
}

fn exclusive() -> Exclusive {
    let lock = SocketAddr::from(([127, 43, 21, 1], 47_912));
    let start = Instant::now();
    loop {
        match std::net::TcpListener::bind(lock) {
            Ok(held) => return Exclusive { _held: held },
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                assert!(
                    start.elapsed() < Duration::from_secs(1800),
                    "another hostile test held {lock} for 30 min"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("bind the hostile tests' lock {lock}: {e}"),
        }
    }
}

// --- A hostile upstream: evidence amplification, and coalesced verdicts --------------------------

/// An upstream registry, a release key, and a config requiring that key's signature on
/// `keyed/**`.
struct Signed {
    dir: tempfile::TempDir,
    registry: Registry,
    key: CosignKey,
}

impl Signed {
    fn start() -> Signed {
        require_tools();
        let dir = tempdir();
        let registry = Registry::start(dir.path());
        let key = CosignKey::generate();
        key.write_public(&dir.path().join("release.pub"));
        Signed { dir, registry, key }
    }

    /// Pushes the small fixture as `repo:v1` with a valid `.sig` by the release key; its digest
    /// and the signature manifest's.
    fn image(&self, repo: &str) -> (String, String) {
        push(Image::Small, &self.registry, &format!("{repo}:v1"));
        let digest = manifest_digest_in_registry(&self.registry, repo, "v1");
        let payload = simple_signing_payload(&format!("{}/{repo}", self.registry.host()), &digest);
        let layer = SigLayer {
            signature_b64: self.key.sign(&payload),
            payload,
            ..SigLayer::default()
        };
        let sig = push_signature(&self.registry, repo, &digest, &[layer]);
        (digest, sig)
    }

    fn proxy(&self, sub: &str) -> Proxy {
        let host = self.registry.host();
        let config = ConfigBuilder::new()
            .default_upstream(&host, &self.registry.url())
            .trust_key("release", &self.dir.path().join("release.pub"))
            .rule(Rule::new("keyed", &[&format!("{host}/keyed/**")]).key("release"));
        Proxy::start(Path::new(BIN), &self.dir.path().join(sub), &config)
    }

    /// GETs of `repo`'s blob `digest` upstream.
    fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        self.registry
            .count_requests("GET", &format!("/v2/{repo}/blobs/{digest}"))
    }

    /// GETs of `repo`'s manifest `reference` (a tag or a digest) upstream; of a referrers tag,
    /// without those of its `.sig` and `.att`.
    fn manifest_gets(&self, repo: &str, reference: &str) -> usize {
        let path = format!("/v2/{repo}/manifests/{reference}");
        self.registry.count_requests("GET", &path)
            - self.registry.count_requests("GET", &format!("{path}."))
    }

    /// The upstream's manifest `repo@reference`, as JSON.
    async fn manifest(&self, repo: &str, reference: &str) -> Value {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.registry.url());
        let r = http::request("GET", &url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(r.status, 200, "GET {url}");
        serde_json::from_slice(&r.body).unwrap()
    }
}

/// A JSON object shaped like a Sigstore bundle (portcullis' shape check accepts it, so it is
/// kept and handed to the policy), exactly `len` bytes, distinct per `tag`.
fn bundle_shaped_blob(tag: &str, len: u64) -> Vec<u8> {
    let mut b =
        format!(r#"{{"mediaType":"{BUNDLE}","verificationMaterial":{{}},"padding":"{tag}-"#)
            .into_bytes();
    let tail = br#""}"#;
    b.resize(len as usize - tail.len(), b'a');
    b.extend_from_slice(tail);
    assert_eq!(b.len() as u64, len);
    b
}

/// What the amplification pushed for one subject.
struct Amplifier {
    artifacts: Vec<String>,
    blobs: Vec<String>,
    config: String,
}

/// The attack of issue #12: `artifacts` bundle-typed referrers of `subject` (an image in
/// `repo`), the i-th an OCI artifact whose 32 layers all name its own 4 MiB bundle-shaped
/// blob, and the referrers tag (`sha256-<hex>`, distribution 2.8 having no referrers API)
/// listing them all.
async fn push_amplifier(up: &Signed, repo: &str, subject: &str, artifacts: usize) -> Amplifier {
    let reg = &up.registry;
    let held = {
        let url = format!("{}/v2/{repo}/manifests/{subject}", reg.url());
        let r = http::request("GET", &url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(sha256_hex(&r.body), subject, "{url}");
        r
    };
    let subject_desc = json!({
        "mediaType": held.header("content-type").unwrap(),
        "digest": subject,
        "size": held.body.len(),
    });
    let config = reg.push_blob(repo, b"{}");
    let mut out = Amplifier {
        artifacts: Vec::new(),
        blobs: Vec::new(),
        config: config.clone(),
    };
    let mut listed = Vec::new();
    for i in 0..artifacts {
        let blob = bundle_shaped_blob(&format!("{repo}-{i}"), EVIDENCE_BLOB);
        let digest = reg.push_blob(repo, &blob);
        let layer = json!({ "mediaType": BUNDLE, "digest": digest, "size": blob.len() });
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE,
            "config": { "mediaType": EMPTY_CONFIG, "digest": config, "size": 2 },
            "layers": vec![layer; 32],
            "subject": subject_desc,
        }))
        .unwrap();
        let artifact = reg.put_manifest(repo, &sha256_hex(&manifest), OCI_MANIFEST, &manifest);
        listed.push(json!({
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE,
            "digest": artifact,
            "size": manifest.len(),
        }));
        out.artifacts.push(artifact);
        out.blobs.push(digest);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": listed,
    }))
    .unwrap();
    reg.put_manifest(repo, &referrers_tag(subject), OCI_INDEX, &index);
    out
}

/// `VmRSS` and `VmHWM` (peak RSS) of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `gets` of each of `digests`.
fn each(digests: &[String], gets: impl Fn(&str) -> usize) -> Vec<usize> {
    digests.iter().map(|d| gets(d)).collect()
}

/// Eight referrers of one subject, each naming one 4 MiB bundle 32 times: the issue measured
/// 160 upstream GETs and a 1.35 GiB peak for one request, 3.7 GiB for three. Now each distinct
/// digest is fetched at most once, at most 16 MiB of declared evidence is fetched per verdict,
/// and portcullis' peak RSS (`VmHWM`, the high-water mark over the process's life) stays under
/// 200 MiB, for one request and for three at once (of a second, cold, image, so that its verdict
/// is decided while they wait). The blobs are shaped like bundles: portcullis keeps, and hands
/// to the policy, only blobs that pass its shape check, so that is what a hostile upstream
/// serves. The image carries a valid signature as well, so the junk must not cost it its verdict
/// either.
#[tokio::test(flavor = "multi_thread")]
async fn evidence_amplification_is_bounded() {
    let _one_at_a_time = exclusive();
    let up = Signed::start();
    let (one, _) = up.image("keyed/amp-one");
    let (three, _) = up.image("keyed/amp-three");
    let amp_one = push_amplifier(&up, "keyed/amp-one", &one, 8).await;
    let amp_three = push_amplifier(&up, "keyed/amp-three", &three, 8).await;
    let p = up.proxy("p");
    let pid = p.pid().unwrap();
    let (idle_rss, _) = rss_kib(pid);
    let get = |repo: &str| {
        let url = format!("{}/v2/{repo}/manifests/v1", p.url());
        async move { http::request("GET", &url, &[("Accept", OCI_MANIFEST)]).await }
    };

    // One request.
    let r = get("keyed/amp-one").await;
    let (_, peak_one) = rss_kib(pid);
    // Three at once, of another image.
    let rs = join_all((0..3).map(|_| get("keyed/amp-three"))).await;
    let (rss_after, peak_three) = rss_kib(pid);
    // The registry logs a request once it has answered it.
    std::thread::sleep(Duration::from_millis(500));

    let mut report = format!(
        "RSS: idle {idle_rss} KiB, peak after one request {peak_one} KiB, peak after three \
         concurrent {peak_three} KiB, RSS afterwards {rss_after} KiB (limit {RSS_LIMIT_KIB} KiB)\n\
         statuses: one {}, three {:?}\n",
        r.status,
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let mut all = Vec::new();
    for (repo, amp, subject) in [
        ("keyed/amp-one", &amp_one, &one),
        ("keyed/amp-three", &amp_three, &three),
    ] {
        let blobs = each(&amp.blobs, |d| up.blob_gets(repo, d));
        let artifacts = each(&amp.artifacts, |d| up.manifest_gets(repo, d));
        let config = up.blob_gets(repo, &amp.config);
        let tag = up.manifest_gets(repo, &referrers_tag(subject));
        let fetched: usize = blobs.iter().sum();
        report.push_str(&format!(
            "{repo}: GETs of the eight 4 MiB blobs {blobs:?} (sum {fetched}, {} MiB), of the \
             eight artifact manifests {artifacts:?}, of the empty config {config}, of the \
             referrers tag {tag}\n",
            fetched as u64 * EVIDENCE_BLOB / MIB,
        ));
        all.push((repo, amp, blobs, artifacts, config, fetched));
    }
    eprintln!("{report}");

    for (repo, amp, blobs, artifacts, config, fetched) in &all {
        let fetches = amp.blobs.iter().zip(blobs);
        for (digest, n) in fetches.chain(amp.artifacts.iter().zip(artifacts)) {
            assert!(*n <= 1, "{repo}: {digest} was fetched {n} times\n{report}");
        }
        assert!(
            *config <= 1,
            "{repo}: the empty config was fetched {config} times\n{report}"
        );
        // The attack did reach the evidence blobs (nothing refused the artifacts before it),
        // and no more were fetched than the declared-size budget allows.
        assert!(
            *fetched >= 1,
            "{repo}: no bundle blob was fetched: the attack was not tried\n{report}"
        );
        assert!(
            *fetched as u64 * EVIDENCE_BLOB <= EVIDENCE_BUDGET,
            "{repo}: {fetched} blobs of 4 MiB fetched for one verdict\n{report}"
        );
    }
    assert!(
        peak_one < RSS_LIMIT_KIB && peak_three < RSS_LIMIT_KIB,
        "peak RSS over 200 MiB\n{report}"
    );
    // The junk evidence costs the signed image nothing.
    assert_eq!(r.status, 200, "{report}");
    assert!(rs.iter().all(|r| r.status == 200), "{report}");
}

/// The issue measured 5 manifest, 4 `.sig`, 20 referrers-tag and 29 blob GETs upstream for 20
/// concurrent cold pulls of one signed image: every request decided the verdict itself. Now they
/// share one tag resolution and one decision, so the image's tag, the signature's tag and its
/// blobs are each fetched once.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_pulls_share_one_verdict() {
    let _one_at_a_time = exclusive();
    let up = Signed::start();
    let repo = "keyed/pulled";
    let (digest, sig) = up.image(repo);
    let sig_manifest = up.manifest(repo, &sig).await;
    let mut sig_blobs = vec![sig_manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .to_owned()];
    for l in sig_manifest["layers"].as_array().unwrap() {
        sig_blobs.push(l["digest"].as_str().unwrap().to_owned());
    }
    let tag = referrers_tag(&digest);
    let sig_tag = format!("{tag}.sig");
    // Counted before and after: the setup's own requests (skopeo's push) are not the proxy's.
    let counts = |up: &Signed| {
        let mut c = vec![up.manifest_gets(repo, &sig_tag)];
        c.extend(each(&sig_blobs, |d| up.blob_gets(repo, d)));
        c.extend([
            up.manifest_gets(repo, &format!("{tag}.att")),
            up.registry
                .count_requests("GET", &format!("/v2/{repo}/referrers/{digest}")),
            up.manifest_gets(repo, &tag),
            up.manifest_gets(repo, "v1"),
            up.manifest_gets(repo, &digest),
        ]);
        c
    };
    let before = counts(&up);
    let p = up.proxy("p");

    let url = format!("{}/v2/{repo}/manifests/v1", p.url());
    let pulls = (0..20).map(|_| http::request("GET", &url, &[("Accept", OCI_MANIFEST)]));
    let statuses: Vec<u16> = join_all(pulls).await.iter().map(|r| r.status).collect();
    std::thread::sleep(Duration::from_millis(500));

    let gets: Vec<usize> = counts(&up)
        .iter()
        .zip(&before)
        .map(|(after, before)| after - before)
        .collect();
    let n = sig_blobs.len();
    let (sig_gets, blob_gets) = (gets[0], &gets[1..=n]);
    let &[att, api, tag, by_tag, by_digest] = &gets[n + 1..] else {
        unreachable!("{gets:?}")
    };
    let report = format!(
        "20 concurrent cold pulls: statuses {statuses:?}\nupstream GETs: `.sig` tag {sig_gets}, \
         signature blobs (config, payload) {blob_gets:?}, `.att` tag {att}, referrers API {api}, \
         referrers tag {tag}, the image by tag {by_tag}, by digest {by_digest}"
    );
    eprintln!("{report}");
    assert!(statuses.iter().all(|s| *s == 200), "{report}");
    assert_eq!(sig_gets, 1, "{report}");
    assert_eq!(blob_gets, vec![1; n], "{report}");
    // The tag too: one resolution for all twenty (registries rate-limit manifest GETs).
    assert_eq!(by_tag, 1, "{report}");
}

// --- Hostile clients: raw sockets from chosen loopback addresses --------------------------------

/// A TCP connection to `to` from the loopback address `from` (bound before connecting).
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Reads until the server closes the connection (EOF or reset), whatever it sends first; when.
async fn until_closed(s: &mut TcpStream) -> Instant {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// One HTTP/1.1 response (head, then a `Content-Length` body) read from `s`, with `buf` holding
/// what was read beyond it: its status, and whether the server keeps the connection.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<(u16, bool)> {
    let eof = || std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed");
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let len: usize = header("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a response without Content-Length: {head:?}"));
    let keep = header("connection:").is_none_or(|v| v != "close");
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + len);
    Ok((status, keep))
}

/// A keep-alive HTTP/1.1 client from a chosen address, reconnecting when the server closes.
struct RawClient {
    from: Ipv4Addr,
    to: SocketAddr,
    conn: Option<(TcpStream, Vec<u8>)>,
}

impl RawClient {
    fn new(from: Ipv4Addr, to: SocketAddr) -> RawClient {
        RawClient {
            from,
            to,
            conn: None,
        }
    }

    /// `GET path` with `Authorization: authorization`; the status.
    async fn get(&mut self, path: &str, authorization: &str) -> std::io::Result<u16> {
        if self.conn.is_none() {
            self.conn = Some((connect_from(self.from, self.to).await?, Vec::new()));
        }
        let (s, buf) = self.conn.as_mut().unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: portcullis\r\nAuthorization: {authorization}\r\n\r\n"
        );
        let answer = match s.write_all(req.as_bytes()).await {
            Ok(()) => read_response(s, buf).await,
            Err(e) => Err(e),
        };
        if !matches!(answer, Ok((_, true))) {
            self.conn = None;
        }
        answer.map(|(status, _)| status)
    }
}

fn slowloris_proxy(dir: &Path) -> (Registry, Proxy, usize) {
    require_tools();
    let upstream = Registry::start(dir);
    let config = ConfigBuilder::pull_through(&upstream.host(), &upstream.url())
        .server(|s| s.header_read_timeout = HEADER_READ_TIMEOUT);
    // `max_connections_per_peer` at its default.
    let per_peer = config.clone().build().server.max_connections_per_peer;
    let p = Proxy::start(Path::new(BIN), &dir.join("p"), &config);
    (upstream, p, per_peer)
}

/// The issue's slowloris: 300 half-sent requests from one address held new clients off (and
/// descriptors ran out) for as long as they were held. With `header_read_timeout = "2s"` and
/// `max_connections_per_peer` at its default (256): the first 256 are held until the deadline
/// and then closed by the server, the other 44 are closed at once, a client from another
/// address gets `/v2/` while all 256 are still held, and an idle keep-alive connection is
/// closed after the same deadline.
#[tokio::test(flavor = "multi_thread")]
async fn slowloris_neither_locks_out_new_clients_nor_stays_open() {
    let _one_at_a_time = exclusive();
    let dir = tempdir();
    let (_upstream, p, per_peer) = slowloris_proxy(dir.path());
    let slow = Ipv4Addr::new(127, 0, 0, 2);
    let idle = Ipv4Addr::new(127, 0, 0, 3);
    const HALF_SENT: usize = 300;
    assert!(
        per_peer < HALF_SENT,
        "max_connections_per_peer = {per_peer}"
    );

    // An idle keep-alive connection: one whole request answered, then nothing.
    let mut keep = connect_from(idle, p.addr).await.unwrap();
    keep.write_all(b"GET /v2/ HTTP/1.1\r\nHost: idle\r\n\r\n")
        .await
        .unwrap();
    let (status, kept) = read_response(&mut keep, &mut Vec::new()).await.unwrap();
    assert_eq!((status, kept), (200, true));
    let idle_since = Instant::now();
    let idle_closed = tokio::spawn(async move { until_closed(&mut keep).await - idle_since });

    // 300 requests from 127.0.0.2 whose headers never end.
    let mut held = Vec::new();
    for _ in 0..HALF_SENT {
        let mut s = connect_from(slow, p.addr).await.unwrap();
        // Writing to one closed at once may fail: that is the answer, not an error.
        let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: slow\r\n").await;
        let sent = Instant::now();
        held.push(tokio::spawn(
            async move { (sent, until_closed(&mut s).await) },
        ));
    }

    // A new client from 127.0.0.1, meanwhile.
    let asked = Instant::now();
    let r = http::get(&format!("{}/v2/", p.url())).await;
    let served = Instant::now();
    let latency = served - asked;

    let closes = tokio::time::timeout(Duration::from_secs(60), join_all(held))
        .await
        .expect("the half-sent requests were still open after 60 s");
    let delays: Vec<(Duration, Instant)> = closes
        .into_iter()
        .map(|c| {
            let (sent, closed) = c.unwrap();
            (closed - sent, closed)
        })
        .collect();
    let idle_delay = tokio::time::timeout(Duration::from_secs(60), idle_closed)
        .await
        .expect("the idle keep-alive connection was still open after 60 s")
        .unwrap();
    // Refused at accept: closed within milliseconds, long before any deadline. Held: until the
    // deadline, so never under half of it.
    let at_once: Vec<Duration> = delays
        .iter()
        .map(|d| d.0)
        .filter(|d| *d < HEADER_READ_TIMEOUT / 2)
        .collect();
    let timed_out: Vec<&(Duration, Instant)> = delays
        .iter()
        .filter(|d| d.0 >= HEADER_READ_TIMEOUT / 2)
        .collect();
    let still_held_when_served = timed_out.iter().filter(|d| d.1 > served).count();
    let slowest = timed_out.iter().map(|d| d.0).max().unwrap_or_default();
    let fastest = timed_out.iter().map(|d| d.0).min().unwrap_or_default();
    let report = format!(
        "{HALF_SENT} half-sent requests from {slow}, max_connections_per_peer {per_peer}, \
         header_read_timeout {HEADER_READ_TIMEOUT:?}: {} closed at once (slowest {:?}), {} closed \
         by the deadline after {fastest:?}..{slowest:?}; {still_held_when_served} of those still \
         open when the new client from 127.0.0.1 got {} after {latency:?}; an idle keep-alive \
         closed {idle_delay:?} after its answer",
        at_once.len(),
        at_once.iter().max().copied().unwrap_or_default(),
        timed_out.len(),
        r.status,
    );
    eprintln!("{report}");

    // Generous: the deadline is 2 s, and the point is "within seconds, not never"; a new client
    // is answered in milliseconds when nothing holds it off.
    assert_eq!(r.status, 200, "{report}");
    assert!(latency <= Duration::from_secs(5), "{report}");
    assert_eq!(at_once.len(), HALF_SENT - per_peer, "{report}");
    assert_eq!(timed_out.len(), per_peer, "{report}");
    assert_eq!(still_held_when_served, per_peer, "{report}");
    assert!(slowest <= HEADER_READ_TIMEOUT + CLOSE_SLACK, "{report}");
    assert!(
        idle_delay >= HEADER_READ_TIMEOUT / 2 && idle_delay <= HEADER_READ_TIMEOUT + CLOSE_SLACK,
        "{report}"
    );
}

/// The slowloris that sends nothing, or only the start of what a client sends first: the
/// config promises that "a client must send a request's headers within header_read_timeout",
/// so these connections too must be closed after it, or a few addresses hold every place under
/// `max_connections` for good. Three kinds, ten connections each, from 127.0.0.4: nothing at
/// all; the first 16 bytes of the HTTP/2 preface (`PRI * HTTP/2.0\r\n`); the whole 24-byte
/// preface and then no frame.
#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connections_that_send_nothing_are_closed_too() {
    let _one_at_a_time = exclusive();
    let dir = tempdir();
    let (_upstream, p, _) = slowloris_proxy(dir.path());
    let silent = Ipv4Addr::new(127, 0, 0, 4);
    let kinds: [(&str, &[u8]); 3] = [
        ("nothing sent", b""),
        ("16 bytes of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        (
            "the HTTP/2 preface, then no frame",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
    ];
    let mut tasks = Vec::new();
    for (kind, bytes) in kinds {
        for _ in 0..10 {
            let mut s = connect_from(silent, p.addr).await.unwrap();
            s.write_all(bytes).await.unwrap();
            let sent = Instant::now();
            tasks.push(tokio::spawn(async move {
                let closed = tokio::time::timeout(Duration::from_secs(15), until_closed(&mut s));
                (kind, closed.await.ok().map(|at| at - sent))
            }));
        }
    }
    // Another address is served meanwhile.
    let r = http::get(&format!("{}/v2/", p.url())).await;
    assert_eq!(r.status, 200);

    let results: Vec<(&str, Option<Duration>)> = join_all(tasks)
        .await
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    let mut report = format!(
        "connections from {silent}, header_read_timeout {HEADER_READ_TIMEOUT:?}, watched 15 s:"
    );
    for (kind, _) in kinds {
        let of_kind: Vec<Option<Duration>> = results
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, d)| *d)
            .collect();
        let closed: Vec<Duration> = of_kind.iter().flatten().copied().collect();
        report.push_str(&format!(
            "\n- {kind}: {} of {} closed by the server (slowest after {:?}), {} still open",
            closed.len(),
            of_kind.len(),
            closed.iter().max(),
            of_kind.len() - closed.len(),
        ));
    }
    eprintln!("{report}");
    for (kind, delay) in &results {
        assert!(
            delay.is_some_and(|d| d <= HEADER_READ_TIMEOUT + CLOSE_SLACK),
            "{kind}: {delay:?}\n{report}"
        );
    }
}

/// More than `max_connections_per_peer` from one address: the extra connections are closed at
/// once (before they send anything, with no deadline involved), and another address is still
/// served while that one holds its whole share.
#[tokio::test(flavor = "multi_thread")]
async fn connections_past_the_per_peer_cap_are_closed_at_once() {
    let _one_at_a_time = exclusive();
    let dir = tempdir();
    require_tools();
    let upstream = Registry::start(dir.path());
    const PER_PEER: usize = 8;
    let config = ConfigBuilder::pull_through(&upstream.host(), &upstream.url()).server(|s| {
        s.max_connections_per_peer = PER_PEER;
        // Long, so that nothing here is closed by the deadline.
        s.header_read_timeout = Duration::from_secs(60);
    });
    let p = Proxy::start(Path::new(BIN), &dir.path().join("p"), &config);
    let greedy = Ipv4Addr::new(127, 0, 0, 5);

    let mut held = Vec::new();
    for _ in 0..PER_PEER {
        let mut s = connect_from(greedy, p.addr).await.unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    let mut extra = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from(greedy, p.addr).await.unwrap();
        let opened = Instant::now();
        extra.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(10), until_closed(&mut s))
                .await
                .ok()
                .map(|at| at - opened)
        }));
    }
    let closed: Vec<Option<Duration>> = join_all(extra)
        .await
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    let r = http::get(&format!("{}/v2/", p.url())).await;
    // The held ones are still open: a whole request on one of them is answered.
    let first = &mut held[0];
    first.write_all(b"Host: greedy\r\n\r\n").await.unwrap();
    let (status, _) = read_response(first, &mut Vec::new()).await.unwrap();
    let report = format!(
        "max_connections_per_peer {PER_PEER}: {PER_PEER} held from {greedy}; the next 5 closed \
         after {closed:?}; a client from 127.0.0.1 got {}; a held connection finished its \
         request with {status}",
        r.status
    );
    eprintln!("{report}");
    // "At once": before the extra connection sent a byte, and far inside the 60 s deadline.
    assert!(
        closed
            .iter()
            .all(|d| d.is_some_and(|d| d < Duration::from_secs(2))),
        "{report}"
    );
    assert_eq!(r.status, 200, "{report}");
    assert_eq!(status, 200, "{report}");
}

// --- A password flood ----------------------------------------------------------------------------

fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// `(p50, p95)` of `samples`.
fn percentiles(samples: &[Duration]) -> (Duration, Duration) {
    let mut s = samples.to_vec();
    s.sort();
    let at = |q: usize| s[(s.len() * q / 100).min(s.len() - 1)];
    (at(50), at(95))
}

/// `n` sequential `GET /v2/` from 127.0.0.1 with `authorization`, `pause` apart: the latencies,
/// each asserted 200.
async fn timed_gets(url: &str, authorization: &str, n: usize, pause: Duration) -> Vec<Duration> {
    let mut out = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = http::request("GET", url, &[("Authorization", authorization)]).await;
        out.push(t.elapsed());
        assert_eq!(r.status, 200, "the legitimate user was refused");
        tokio::time::sleep(pause).await;
    }
    out
}

/// How many times the log says a login from `peer` was refused unchecked.
fn refused_unchecked(p: &Proxy, peer: Ipv4Addr) -> usize {
    p.log_contents()
        .lines()
        .filter(|l| l.contains("refused unchecked") && l.contains(&peer.to_string()))
        .count()
}

/// The issue's password flood: wrong passwords ran argon2 on the runtime's workers, and a
/// verified user's `/v2/` went from 0.4 ms to 0.5–0.9 s. Here 200 clients at 127.0.0.2 send
/// wrong passwords for `alice` (an argon2 user), each on a keep-alive connection, one request
/// every 100 ms or as fast as the answers come, whichever is slower. Meanwhile, from 127.0.0.1:
/// - `alice`, verified once before the flood, keeps getting `/v2/` 200 with a median under
///   50 ms (the issue's figure), over 30 requests 20 ms apart;
/// - `bob`, never verified, is verified (argon2 runs for him) and gets 200. How long he waits
///   is reported, not asserted: the issue sets no figure for a first verification, and it
///   follows from the argon2 runs bounded below (he queues behind them for a hash permit).
///
/// And `[auth] max_failures` bounds the argon2 work the flood costs: past it, 127.0.0.2 is
/// refused unchecked (the log says so for each), so argon2 runs at most `max_failures` times
/// for it, plus the `concurrent_hashes` that may already be running when the limit is reached;
/// after the flood, further attempts from 127.0.0.2 (for `bob`, whose own count is clean) are
/// each refused unchecked too. (The report also shows what a login of alice's own, not yet
/// verified, meets after the flood: her per-user count refuses it for the rest of the minute.)
///
/// argon2 in the test build (unoptimised) takes most of a second a hash, not the tens of
/// milliseconds of a release build: the flood's hashing lasts seconds, and the 30 requests are
/// measured inside it.
#[tokio::test(flavor = "multi_thread")]
async fn password_flood_neither_slows_users_nor_runs_argon2_unbounded() {
    let _one_at_a_time = exclusive();
    require_tools();
    let dir = tempdir();
    let upstream = Registry::start(dir.path());
    let users: PathBuf = dir.path().join("users");
    let hash = |s: &str| portcullis::auth::hash_secret(s).unwrap();
    std::fs::write(
        &users,
        format!(
            "alice:{}\nbob:{}\n",
            hash("alice's password"),
            hash("bob's password")
        ),
    )
    .unwrap();
    let config = ConfigBuilder::pull_through(&upstream.host(), &upstream.url())
        .auth(&users, &[(&["*"], &["**"])]);
    let auth = config.clone().build().auth.unwrap();
    let (max_failures, hashes) = (auth.max_failures as usize, auth.concurrent_hashes);
    let p = Proxy::start(Path::new(BIN), &dir.path().join("p"), &config);
    let v2 = format!("{}/v2/", p.url());
    let alice = basic("alice", "alice's password");
    let bob = basic("bob", "bob's password");
    let flooder = Ipv4Addr::new(127, 0, 0, 2);

    // alice is verified once (argon2 runs), then answered from the verified credentials.
    let first = Instant::now();
    timed_gets(&v2, &alice, 1, Duration::ZERO).await;
    let one_hash = first.elapsed();
    let quiet = timed_gets(&v2, &alice, 20, Duration::from_millis(20)).await;

    // The flood.
    let stop = Arc::new(AtomicBool::new(false));
    let flood_start = Instant::now();
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let mut client = RawClient::new(flooder, p.addr);
            let wrong = basic("alice", "guess");
            tokio::spawn(async move {
                let (mut refused, mut other, mut errors) = (0usize, Vec::new(), 0usize);
                while !stop.load(Ordering::SeqCst) {
                    let t = Instant::now();
                    match client.get("/v2/", &wrong).await {
                        Ok(401) => refused += 1,
                        Ok(s) => other.push(s),
                        Err(_) => errors += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()))
                        .await;
                }
                (refused, other, errors)
            })
        })
        .collect();
    // Inside the flood: the hashing it causes has begun.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bob_first = {
        let (v2, bob) = (v2.clone(), bob.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            // The testkit client gives up after 120 s: that is an answer too.
            let r = http::try_request("GET", &v2, &[("Authorization", &bob)], Default::default())
                .await
                .map(|r| r.status);
            (r, t.elapsed())
        })
    };
    let during = timed_gets(&v2, &alice, 30, Duration::from_millis(20)).await;
    let measured_for = flood_start.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (bob_status, bob_latency) = bob_first.await.unwrap();
    let ends = tokio::time::timeout(Duration::from_secs(600), join_all(flood))
        .await
        .expect("the flood's requests were not all answered within 10 min");
    let flood_took = flood_start.elapsed();
    let (mut answered_401, mut other, mut errors) = (0, Vec::new(), 0);
    for e in ends {
        let (r, o, e) = e.unwrap();
        answered_401 += r;
        other.extend(o);
        errors += e;
    }
    let unchecked = refused_unchecked(&p, flooder);
    let checked = answered_401.saturating_sub(unchecked);

    // After the flood: further attempts from 127.0.0.2, for a user with no failures.
    let mut after = Vec::new();
    let mut after_statuses = Vec::new();
    let mut after_client = RawClient::new(flooder, p.addr);
    for _ in 0..5 {
        let t = Instant::now();
        after_statuses.push(
            after_client
                .get("/v2/", &basic("bob", "guess"))
                .await
                .unwrap(),
        );
        after.push(t.elapsed());
    }
    std::thread::sleep(Duration::from_millis(200));
    let unchecked_after = refused_unchecked(&p, flooder) - unchecked;
    // And what alice's own count does to a login of hers not yet verified (the same password,
    // a header never seen: the scheme in lower case).
    let fresh_alice = http::request(
        "GET",
        &v2,
        &[("Authorization", &alice.replacen("Basic", "basic", 1))],
    )
    .await
    .status;

    let (q50, q95) = percentiles(&quiet);
    let (d50, d95) = percentiles(&during);
    let report = format!(
        "one argon2 verification (alice's first request): {one_hash:?}\n\
         alice, verified, before the flood: p50 {q50:?} p95 {q95:?} over {}\n\
         alice, verified, during the flood: p50 {d50:?} p95 {d95:?} max {:?} over {} (measured \
         in the flood's first {measured_for:?})\n\
         bob, first verification during the flood: {bob_status:?} after {bob_latency:?}\n\
         flood from {flooder}: 200 clients, {answered_401} answered 401, other statuses {other:?}, \
         {errors} transport errors, all answered {flood_took:?} after it began; refused \
         unchecked {unchecked}, so argon2 ran {checked} times for it (max_failures \
         {max_failures}, concurrent_hashes {hashes})\n\
         after the flood, 5 attempts from {flooder} for bob: {after_statuses:?} in {after:?}, \
         {unchecked_after} logged as refused unchecked\n\
         a fresh login of alice's (correct password) from 127.0.0.1 after the flood: \
         {fresh_alice}",
        quiet.len(),
        during.iter().max().unwrap(),
        during.len(),
    );
    eprintln!("{report}");

    assert!(d50 < Duration::from_millis(50), "{report}");
    assert_eq!(bob_status, Ok(200), "{report}");
    assert!(other.is_empty(), "{report}");
    assert_eq!(after_statuses, vec![401; 5], "{report}");
    assert_eq!(unchecked_after, 5, "{report}");
    assert!(checked <= max_failures + hashes, "{report}");
}
