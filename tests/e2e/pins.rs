//! Pins and moved tags (issue #14): an unsigned image passes only by a digest a person pinned
//! with `portcullis pin` (a pinned index vouching for its platform manifests), the pins file
//! reloads on change, `pin --check` reports moved tags; a tag moved upstream is logged and
//! counted, and under `immutable_tags` refused until the new digest is pinned.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use portcullis_testkit::cosign::{push_signature, simple_signing_payload, CosignKey, SigLayer};
use portcullis_testkit::http::{self, Response};
use portcullis_testkit::{
    free_port, manifest_digest_in_registry, push, require_tools, skopeo_copy, skopeo_copy_all,
    tempdir, ConfigBuilder, Image, Proxy, Registry, Rule,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

struct World {
    _dir: tempfile::TempDir,
    work: PathBuf,
    upstream: Registry,
}

impl World {
    fn new() -> World {
        require_tools();
        let dir = tempdir();
        let work = dir.path().to_owned();
        let upstream = Registry::start(&work);
        World {
            _dir: dir,
            work,
            upstream,
        }
    }

    fn host(&self) -> String {
        self.upstream.host()
    }

    fn push(&self, image: Image, repo_tag: &str) -> String {
        push(image, &self.upstream, repo_tag);
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        manifest_digest_in_registry(&self.upstream, repo, tag)
    }

    fn pins(&self) -> PathBuf {
        self.work.join("pins").join("reviewed.toml")
    }

    /// Every tag revalidated on each request, so that a move upstream is seen at once.
    fn config(&self) -> ConfigBuilder {
        let host = self.host();
        ConfigBuilder::new()
            .default_upstream(&host, &self.upstream.url())
            .cache(|c| c.tag_ttl = Duration::ZERO)
            .trust_pins("reviewed", &self.pins())
    }

    /// `portcullis pin ARGS --config <the proxy's config>`.
    fn pin(&self, proxy: &Proxy, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("pin")
            .args(args)
            .arg("--config")
            .arg(proxy.config_path())
            .output()
            .expect("run portcullis pin")
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn manifest(proxy: &Proxy, repo: &str, reference: &str) -> Response {
    http::request(
        "GET",
        &format!("{}/v2/{repo}/manifests/{reference}", proxy.url()),
        &[("Accept", ACCEPT)],
    )
    .await
}

fn message(resp: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    format!(
        "{} {}",
        v["errors"][0]["code"].as_str().unwrap_or(""),
        v["errors"][0]["message"].as_str().unwrap_or("")
    )
}

/// Polls until `GET repo:reference` answers `status` (the pins file is watched, not signalled).
async fn until_status(proxy: &Proxy, repo: &str, reference: &str, status: u16) -> Response {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = manifest(proxy, repo, reference).await;
        if r.status == status || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsigned_image_passes_only_by_a_reviewed_pin() {
    let w = World::new();
    let host = w.host();
    let reviewed = w.push(Image::Small, "library/alpine:3.20");
    let multi = w.push(Image::Multi, "library/multi:1");
    let config = w.config().rule(
        Rule::new("official", &[&format!("{host}/library/*")])
            .pinned("reviewed")
            .immutable_tags(),
    );
    let p = Proxy::start(Path::new(BIN), &w.work.join("p"), &config);

    // No signature at all: the denial says so and shows the pin command.
    let denied = manifest(&p, "library/alpine", "3.20").await;
    assert_eq!(denied.status, 403, "{}", message(&denied));
    let why = message(&denied);
    assert!(why.starts_with("DENIED"), "{why}");
    assert!(why.contains("carries no signature"), "{why}");
    assert!(
        why.contains(&format!(
            "portcullis pin {host}/library/alpine@{reviewed} --pins reviewed"
        )),
        "{why}"
    );

    // One command, reviewed and recorded: the tag resolved as a pull would, with who and when.
    let out = w.pin(&p, &[&format!("{host}/library/alpine:3.20")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&reviewed), "{}", text(&out));
    let pins = std::fs::read_to_string(w.pins()).unwrap();
    assert!(
        pins.contains(&format!("\"{host}/library/alpine:3.20\"")),
        "{pins}"
    );
    assert!(pins.contains(&reviewed), "{pins}");
    assert!(pins.contains("# tag 3.20, pinned by"), "{pins}");
    let again = w.pin(&p, &[&format!("{host}/library/alpine:3.20")]);
    assert!(text(&again).contains("already pinned"), "{}", text(&again));

    // The server reloads the pins file on its own; a real client pulls.
    let ok = until_status(&p, "library/alpine", "3.20", 200).await;
    assert_eq!(ok.status, 200, "{}\n{}", message(&ok), p.log_contents());
    skopeo_copy(
        &format!("{}/library/alpine:3.20", p.host()),
        &w.work.join("pulled"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));

    // A pinned index vouches for the manifests it lists: every platform pulls.
    let out = w.pin(&p, &[&format!("{host}/library/multi:1")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("linux/amd64") && text(&out).contains("linux/arm64"),
        "{}",
        text(&out)
    );
    let ok = until_status(&p, "library/multi", "1", 200).await;
    assert_eq!(ok.status, 200, "{}", message(&ok));
    skopeo_copy_all(
        &format!("{}/library/multi:1", p.host()),
        &w.work.join("multi"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let r = manifest(&p, "library/multi", &multi).await;
    assert_eq!(r.status, 200, "{}", message(&r));

    // `pin --check`: all current, then the tag moves upstream and it says so (exit 1).
    let check = w.pin(&p, &["--check"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("(current)"), "{}", text(&check));
    let moved = w.push(Image::Big, "library/alpine:3.20");
    let check = w.pin(&p, &["--check"]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        text(&check).contains(&format!(
            "library/alpine:3.20: MOVED: pinned {reviewed}, now points at {moved}"
        )),
        "{}",
        text(&check)
    );

    // Another digest of the same tag is not reviewed: denied, by tag and by digest.
    let r = manifest(&p, "library/alpine", "3.20").await;
    assert_eq!(r.status, 403, "{}", message(&r));
    assert!(
        message(&r).contains(&format!("{moved} is not pinned")),
        "{}",
        message(&r)
    );
    let r = manifest(&p, "library/alpine", &moved).await;
    assert_eq!(r.status, 403, "{}", message(&r));
    // The pinned digest itself still pulls.
    let r = manifest(&p, "library/alpine", &reviewed).await;
    assert_eq!(r.status, 200, "{}", message(&r));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pins_file_that_does_not_parse_keeps_the_pins_in_force() {
    let w = World::new();
    let host = w.host();
    let reviewed = w.push(Image::Small, "library/alpine:3.20");
    let config = w
        .config()
        .rule(Rule::new("official", &[&format!("{host}/library/*")]).pinned("reviewed"));
    let p = Proxy::start(Path::new(BIN), &w.work.join("p"), &config);
    let out = w.pin(&p, &[&format!("{host}/library/alpine@{reviewed}")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        until_status(&p, "library/alpine", "3.20", 200).await.status,
        200
    );
    std::fs::write(w.pins(), "\"alpine\" = [\"sha256:nope\"]\n").unwrap();
    p.reload().expect_err("a bad pins file is rejected");
    let r = manifest(&p, "library/alpine", "3.20").await;
    assert_eq!(r.status, 200, "{}", message(&r));
}

/// A keyed signature for `repo@digest` (so that a moved tag still verifies).
fn sign(w: &World, key: &CosignKey, repo: &str, digest: &str) {
    let payload = simple_signing_payload(&format!("{}/{repo}", w.host()), digest);
    let layer = SigLayer {
        signature_b64: key.sign(&payload),
        payload,
        ..SigLayer::default()
    };
    push_signature(&w.upstream, repo, digest, &[layer]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tag_is_logged_counted_and_refused_when_immutable() {
    let w = World::new();
    let host = w.host();
    let key = CosignKey::generate();
    key.write_public(&w.work.join("release.pub"));
    let first = w.push(Image::Small, "locked/app:v1");
    sign(&w, &key, "locked/app", &first);
    let loose = w.push(Image::Small, "loose/app:v1");
    sign(&w, &key, "loose/app", &loose);
    let mport = free_port();
    let config = w
        .config()
        .trust_key("release", &w.work.join("release.pub"))
        .rule(
            Rule::new("locked", &[&format!("{host}/locked/**")])
                .key("release")
                .immutable_tags(),
        )
        .rule(Rule::new("loose", &[&format!("{host}/loose/**")]).key("release"))
        .metrics(mport);
    let p = Proxy::start(Path::new(BIN), &w.work.join("p"), &config);
    for repo in ["locked/app", "loose/app"] {
        let r = manifest(&p, repo, "v1").await;
        assert_eq!(r.status, 200, "{repo}: {}", message(&r));
    }

    // Both tags move upstream to another image, validly signed (a rollback would look the same).
    let moved = w.push(Image::Big, "locked/app:v1");
    sign(&w, &key, "locked/app", &moved);
    let loose_moved = w.push(Image::Big, "loose/app:v1");
    sign(&w, &key, "loose/app", &loose_moved);

    // Without immutable_tags the new digest is served, and the move is logged and counted.
    let r = manifest(&p, "loose/app", "v1").await;
    assert_eq!(r.status, 200, "{}", message(&r));
    assert_eq!(
        r.header("docker-content-digest"),
        Some(loose_moved.as_str())
    );
    let log = p.wait_for_log("tag moved upstream");
    let line = log
        .lines()
        .find(|l| l.contains("tag moved upstream") && l.contains("loose/app"))
        .unwrap_or_else(|| panic!("no tag-move line:\n{log}"));
    assert!(
        line.contains(&loose) && line.contains(&loose_moved),
        "{line}"
    );
    assert!(line.contains(&format!("upstream={host}")), "{line}");

    // With it, the first verified digest stays the only one served for the tag.
    let r = manifest(&p, "locked/app", "v1").await;
    assert_eq!(r.status, 403, "{}", message(&r));
    let why = message(&r);
    assert!(
        why.contains("immutable") && why.contains(&first) && why.contains(&moved),
        "{why}"
    );
    // The new digest's own verdict is a pass: by digest it is served; only the tag is held.
    let r = manifest(&p, "locked/app", &moved).await;
    assert_eq!(r.status, 200, "{}", message(&r));
    let metrics = http::get(&format!("http://127.0.0.1:{mport}/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    let moves: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "portcullis_tag_moves_total{{upstream=\"{host}\"}}"
            ))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(moves, 2.0, "portcullis_tag_moves_total:\n{metrics}");

    // Held across a restart.
    let mut p = p;
    p.restart();
    let r = manifest(&p, "locked/app", "v1").await;
    assert_eq!(r.status, 403, "after a restart: {}", message(&r));

    // A pin of the tag at the new digest says otherwise: the tag follows it.
    let out = w.pin(&p, &[&format!("{host}/locked/app:v1")]);
    assert!(out.status.success(), "{}", text(&out));
    let r = until_status(&p, "locked/app", "v1", 200).await;
    assert_eq!(r.status, 200, "{}\n{}", message(&r), p.log_contents());
    assert_eq!(r.header("docker-content-digest"), Some(moved.as_str()));

    // Moved back upstream to the first digest, which was served verified before: still a move,
    // refused, since the tag's pin is what it must point at now.
    assert_eq!(w.push(Image::Small, "locked/app:v1"), first);
    let r = manifest(&p, "locked/app", "v1").await;
    assert_eq!(r.status, 403, "a rollback: {}", message(&r));
    assert!(
        message(&r).contains(&format!("is pinned at {moved}")),
        "{}",
        message(&r)
    );
}

/// A rule in warn mode that fails (here: an attestation nobody made) softens the verdict to
/// "served with a warning"; the immutable rule beside it must still hold the tag.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_warn_rule_does_not_switch_the_immutable_rule_off() {
    let w = World::new();
    let host = w.host();
    let key = CosignKey::generate();
    key.write_public(&w.work.join("release.pub"));
    let first = w.push(Image::Small, "mixed/app:v1");
    sign(&w, &key, "mixed/app", &first);
    let images = [format!("{host}/mixed/**")];
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    let config = w
        .config()
        .trust_key("release", &w.work.join("release.pub"))
        .rule(Rule::new("locked", &images).key("release").immutable_tags())
        .rule(
            Rule::new("sbom", &images)
                .mode(portcullis_policy::Mode::Warn)
                .key("release")
                .attestation("https://spdx.dev/Document", &[], &[]),
        );
    let p = Proxy::start(Path::new(BIN), &w.work.join("p"), &config);
    let r = manifest(&p, "mixed/app", "v1").await;
    assert_eq!(r.status, 200, "{}", message(&r));
    let moved = w.push(Image::Big, "mixed/app:v1");
    sign(&w, &key, "mixed/app", &moved);
    let r = manifest(&p, "mixed/app", "v1").await;
    assert_eq!(r.status, 403, "{}", message(&r));
    assert!(message(&r).contains("immutable"), "{}", message(&r));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_pushed_after_a_denial_is_found() {
    let w = World::new();
    let host = w.host();
    let key = CosignKey::generate();
    key.write_public(&w.work.join("release.pub"));
    let digest = w.push(Image::Small, "late/app:v1");
    let rule = Rule::new("late", &[&format!("{host}/late/**")]).key("release");
    let config = |ttl: Duration| {
        w.config()
            .cache(|c| c.tag_ttl = ttl)
            .trust_key("release", &w.work.join("release.pub"))
            .rule(rule.clone())
    };
    // With denials kept for tag_ttl (5 min): the signature arrives, the denial stands until its
    // time is up, and is not stored: a restart decides again and finds the signature.
    let mut p = Proxy::start(
        Path::new(BIN),
        &w.work.join("p"),
        &config(Duration::from_secs(300)),
    );
    let r = manifest(&p, "late/app", &digest).await;
    assert_eq!(r.status, 403, "{}", message(&r));
    sign(&w, &key, "late/app", &digest);
    let r = manifest(&p, "late/app", &digest).await;
    assert_eq!(r.status, 403, "within tag_ttl: {}", message(&r));
    p.restart();
    let r = manifest(&p, "late/app", &digest).await;
    assert_eq!(r.status, 200, "after a restart: {}", message(&r));

    // With tag_ttl 0 a denial lasts no longer than the request that made it.
    let other = w.push(Image::Big, "late/other:v1");
    let q = Proxy::start(Path::new(BIN), &w.work.join("q"), &config(Duration::ZERO));
    let r = manifest(&q, "late/other", &other).await;
    assert_eq!(r.status, 403, "{}", message(&r));
    sign(&w, &key, "late/other", &other);
    let r = manifest(&q, "late/other", &other).await;
    assert_eq!(r.status, 200, "{}", message(&r));
}

/// The "done when": a new user pulls `alpine` through the embedded default after one
/// `portcullis pin`. The embedded default as it ships, but for its Docker Hub address (the real
/// registry here, on loopback) and where its relative pins file lives.
#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_default_pulls_alpine_after_one_pin() {
    let w = World::new();
    let reviewed = w.push(Image::Multi, "library/alpine:3.20");
    let mut embedded = portcullis::Config::embedded();
    for pins in &mut embedded.trust.pins {
        pins.path = w.work.join(&pins.path); // relative to the working directory, as shipped
    }
    let pins_file = embedded.trust.pins[0].path.clone();
    let url = w.upstream.url();
    let config = ConfigBuilder::from_config(embedded)
        .with_upstream("docker.io", |u| u.url = url.parse().unwrap());
    let p = Proxy::start(Path::new(BIN), &w.work.join("p"), &config);

    // `docker pull alpine:3.20`, as Docker asks a registry mirror: denied, with the way out.
    let denied = manifest(&p, "library/alpine", "3.20").await;
    assert_eq!(denied.status, 403, "{}", message(&denied));
    let pin = format!("portcullis pin docker.io/library/alpine@{reviewed} --pins reviewed");
    assert!(message(&denied).contains(&pin), "{}", message(&denied));

    let out = w.pin(&p, &["docker.io/library/alpine:3.20"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read_to_string(&pins_file)
            .unwrap()
            .contains(&reviewed),
        "{}",
        text(&out)
    );
    let ok = until_status(&p, "library/alpine", "3.20", 200).await;
    assert_eq!(ok.status, 200, "{}", message(&ok));
    skopeo_copy(&format!("{}/alpine:3.20", p.host()), &w.work.join("alpine"))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
}
