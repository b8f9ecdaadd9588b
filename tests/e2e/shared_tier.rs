//! Replicas sharing one verified tier (`[cache.shared]`) in a real S3 API server (moto, on
//! loopback), in front of a real upstream (distribution 2.8):
//!
//! - [`a_pull_through_one_replica_is_served_by_another_from_the_bucket`]: zero upstream GETs
//!   for B's pull of what A pulled.
//! - [`twenty_cold_pulls_over_two_replicas_make_one_upstream_get`]: the fleet-wide lease.
//! - [`tampered_bucket_objects_are_refused_and_fetched_from_upstream`]: the bucket is not
//!   trusted.
//! - [`pulls_keep_working_with_the_bucket_stopped`]: and the tier comes back with the bucket.
//! - [`a_replica_killed_mid_upload_leaves_nothing_visible`]: multipart completes only after the
//!   match, and the dead replica's lease runs out.
//! - [`a_denied_image_stays_denied_on_every_replica`]: evidence is shared, verdicts are not.
//! - [`immutable_tags_hold_across_the_fleet`]: the first digest is the fleet's.
//! - [`gc_deletes_only_what_no_kept_manifest_references`]: `portcullis cache gc --shared`.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use portcullis_cache::shared::SharedConfig;
use portcullis_testkit::cosign::{push_signature, simple_signing_payload, CosignKey, SigLayer};
use portcullis_testkit::dir_files as files;
use portcullis_testkit::free_port;
use portcullis_testkit::referrers::OCI_MANIFEST;
use portcullis_testkit::{
    http, manifest_digest_in_registry, push, require_tools, sha256_hex, skopeo_copy, tempdir,
    write_cli_config, ConfigBuilder, Image, Proxy, Registry, Rule, S3Server,
};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Where in the bucket the fleet keeps its tier.
const PREFIX: &str = "fleet";

struct Fleet {
    dir: tempfile::TempDir,
    registry: Registry,
    s3: S3Server,
}

impl Fleet {
    fn start() -> Fleet {
        require_tools();
        let dir = tempdir();
        let registry = Registry::start(dir.path());
        let s3 = S3Server::start(dir.path());
        Fleet { dir, registry, s3 }
    }

    fn shared(&self) -> SharedConfig {
        serde_json::from_value(json!({
            "url": format!("s3://{}/{PREFIX}", self.s3.bucket()),
            "endpoint": self.s3.endpoint(),
            "region": "us-east-1",
            "timeout": "2s",
            // Long enough for a waiting replica to see a 50 MiB upload to moto land on a slow
            // machine (a waiter that gives up fetches upstream too).
            "lease_ttl": "30s",
            "retry_after": "1s",
        }))
        .unwrap()
    }

    /// A replica named `name` with `config` and the fleet's bucket.
    fn replica(&self, name: &str, config: ConfigBuilder) -> Proxy {
        self.replica_with(name, config, |_| {})
    }

    /// As [`Fleet::replica`], with `[cache.shared]` edited.
    fn replica_with(
        &self,
        name: &str,
        config: ConfigBuilder,
        edit: impl FnOnce(&mut SharedConfig),
    ) -> Proxy {
        let mut shared = self.shared();
        edit(&mut shared);
        let config = config.cache(|c| c.shared = Some(shared));
        Proxy::start_with_env(
            Path::new(BIN),
            &self.dir.path().join(name),
            &config,
            &self.s3.proxy_env(),
        )
    }

    fn pull_through(&self) -> ConfigBuilder {
        ConfigBuilder::pull_through(&self.registry.host(), &self.registry.url())
    }

    fn blob_key(&self, digest: &str) -> String {
        format!(
            "{PREFIX}/blobs/sha256/{}",
            digest.trim_start_matches("sha256:")
        )
    }

    fn manifest_key(&self, digest: &str) -> String {
        format!(
            "{PREFIX}/manifests/sha256/{}",
            digest.trim_start_matches("sha256:")
        )
    }

    /// Signs `repo:tag` as it is now upstream with `key` (a cosign `.sig`).
    fn sign(&self, key: &CosignKey, repo: &str, tag: &str) -> String {
        let digest = manifest_digest_in_registry(&self.registry, repo, tag);
        let host = self.registry.host();
        let payload = simple_signing_payload(&format!("{host}/{repo}"), &digest);
        let layer = SigLayer {
            signature_b64: key.sign(&payload),
            payload,
            ..SigLayer::default()
        };
        push_signature(&self.registry, repo, &digest, &[layer]);
        digest
    }

    /// The upstream by default, `release.pub` (in the fleet's directory) trusted, and `rule`.
    fn keyed(&self, rule: Rule) -> ConfigBuilder {
        ConfigBuilder::new()
            .default_upstream(&self.registry.host(), &self.registry.url())
            .trust_key("release", &self.dir.path().join("release.pub"))
            .rule(rule)
    }

    /// Upstream GETs of `repo`'s blobs and manifests.
    fn gets(&self, repo: &str) -> (usize, usize) {
        (
            self.registry
                .count_requests("GET", &format!("/v2/{repo}/blobs/")),
            self.registry
                .count_requests("GET", &format!("/v2/{repo}/manifests/")),
        )
    }

    /// Pushes the small fixture as `repo:v1`: its manifest as JSON, and its digest.
    async fn push_small(&self, repo: &str) -> (Value, String) {
        push(Image::Small, &self.registry, &format!("{repo}:v1"));
        let manifest = self.manifest(repo, "v1").await;
        (
            manifest,
            manifest_digest_in_registry(&self.registry, repo, "v1"),
        )
    }

    /// The upstream's manifest `repo:reference` as JSON.
    async fn manifest(&self, repo: &str, reference: &str) -> Value {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.registry.url());
        let r = http::request("GET", &url, &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(r.status, 200, "GET {url}");
        serde_json::from_slice(&r.body).unwrap()
    }
}

/// Waits (up to 30 s) for `done`, which the replicas' background uploads make true.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "waited 30 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `repo:v1`'s manifest through replica `p`, as an OCI client asks for it.
async fn manifest_v1(p: &Proxy, repo: &str) -> http::Response {
    let url = format!("{}/v2/{repo}/manifests/v1", p.url());
    http::request("GET", &url, &[("Accept", OCI_MANIFEST)]).await
}

fn layers(manifest: &Value) -> Vec<String> {
    let mut out = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    for l in manifest["layers"].as_array().unwrap() {
        out.push(l["digest"].as_str().unwrap().to_owned());
    }
    out
}

/// A's pull fills the bucket (content, the tag mapping); B's pull of the same image then makes
/// no upstream GET at all, and both copies are the upstream's.
#[tokio::test(flavor = "multi_thread")]
async fn a_pull_through_one_replica_is_served_by_another_from_the_bucket() {
    let f = Fleet::start();
    let repo = "test/small";
    let (manifest, digest) = f.push_small(repo).await;
    let a = f.replica("a", f.pull_through());
    let b = f.replica("b", f.pull_through());

    let direct = f.dir.path().join("direct");
    skopeo_copy(&format!("{}/{repo}:v1", f.registry.host()), &direct).unwrap();
    let via_a = f.dir.path().join("via-a");
    skopeo_copy(&format!("{}/{repo}:v1", a.host()), &via_a)
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_contents()));
    wait_until("A's uploads", || {
        layers(&manifest)
            .iter()
            .all(|d| f.s3.get(&f.blob_key(d)).is_some())
            && f.s3.get(&f.manifest_key(&digest)).is_some()
            && !f.s3.keys(&format!("{PREFIX}/records/tag/")).is_empty()
    });

    let before = f.gets(repo);
    let via_b = f.dir.path().join("via-b");
    skopeo_copy(&format!("{}/{repo}:v1", b.host()), &via_b)
        .unwrap_or_else(|e| panic!("{e}\n{}", b.log_contents()));
    let after = f.gets(repo);
    assert_eq!(
        before,
        after,
        "B's pull made upstream GETs (blobs, manifests)\n{}",
        b.log_contents()
    );
    assert_eq!(files(&direct), files(&via_a));
    assert_eq!(files(&direct), files(&via_b));
    assert!(
        b.log_contents().contains("shared"),
        "B's request log shows content from the shared tier\n{}",
        b.log_contents()
    );
}

/// Ten cold GETs of a 50 MiB layer at each of two replicas: one replica claims the fetch, the
/// other waits for its upload and reads the bucket; the upstream sees one GET.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_cold_pulls_over_two_replicas_make_one_upstream_get() {
    let f = Fleet::start();
    let repo = "test/big";
    push(Image::Big, &f.registry, &format!("{repo}:v1"));
    let manifest = f.manifest(repo, "v1").await;
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let a = f.replica("a", f.pull_through());
    let b = f.replica("b", f.pull_through());
    for p in [&a, &b] {
        let r = manifest_v1(p, repo).await;
        assert_eq!(r.status, 200, "{}", p.log_contents());
    }

    let urls: Vec<String> = (0..20)
        .map(|i| {
            let p = if i % 2 == 0 { &a } else { &b };
            format!("{}/v2/{repo}/blobs/{layer}", p.url())
        })
        .collect();
    let bodies = join_all(urls.iter().map(|u| http::get(u))).await;
    for (u, r) in urls.iter().zip(&bodies) {
        assert_eq!(
            r.status,
            200,
            "{u}\nA:\n{}\nB:\n{}",
            a.log_contents(),
            b.log_contents()
        );
        assert_eq!(sha256_hex(&r.body), layer, "{u}");
    }
    let gets = f
        .registry
        .count_requests("GET", &format!("/v2/{repo}/blobs/{layer}"));
    assert_eq!(gets, 1, "upstream GETs of the layer over both replicas");
}

/// Objects in the bucket that do not hash to their keys (a layer of the right size, a manifest)
/// are refused by B, which pulls from the upstream instead, correctly, and drops them.
#[tokio::test(flavor = "multi_thread")]
async fn tampered_bucket_objects_are_refused_and_fetched_from_upstream() {
    let f = Fleet::start();
    let repo = "test/small";
    let (manifest, digest) = f.push_small(repo).await;
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let a = f.replica("a", f.pull_through());
    skopeo_copy(
        &format!("{}/{repo}:v1", a.host()),
        &f.dir.path().join("via-a"),
    )
    .unwrap();
    let (layer_key, manifest_key) = (f.blob_key(&layer), f.manifest_key(&digest));
    wait_until("A's uploads", || {
        f.s3.get(&layer_key).is_some() && f.s3.get(&manifest_key).is_some()
    });
    let mut evil = f.s3.get(&layer_key).unwrap();
    evil.iter_mut().take(64).for_each(|b| *b ^= 0xff);
    f.s3.put(&layer_key, &evil);
    let mut evil_manifest = f.s3.get(&manifest_key).unwrap();
    evil_manifest.extend_from_slice(b"\n");
    f.s3.put(&manifest_key, &evil_manifest);

    let b = f.replica("b", f.pull_through());
    let before = f
        .registry
        .count_requests("GET", &format!("/v2/{repo}/blobs/{layer}"));
    let direct = f.dir.path().join("direct");
    skopeo_copy(&format!("{}/{repo}:v1", f.registry.host()), &direct).unwrap();
    let via_b = f.dir.path().join("via-b");
    skopeo_copy(&format!("{}/{repo}:v1", b.host()), &via_b)
        .unwrap_or_else(|e| panic!("{e}\n{}", b.log_contents()));
    assert_eq!(files(&direct), files(&via_b));
    let log = b.log_contents();
    assert!(log.contains("shared tier object refused"), "{log}");
    assert!(
        f.registry
            .count_requests("GET", &format!("/v2/{repo}/blobs/{layer}"))
            > before,
        "the layer came from the upstream\n{log}"
    );
    // Dropped, then written again from B's verified copy.
    wait_until("the bucket's layer to hash right", || {
        f.s3.get(&layer_key)
            .is_none_or(|bytes| sha256_hex(&bytes) == layer)
    });
}

/// The bucket killed mid-run: both replicas keep serving (cold and warm) with a log line, and
/// once it is back the tier fills again.
#[tokio::test(flavor = "multi_thread")]
async fn pulls_keep_working_with_the_bucket_stopped() {
    let mut f = Fleet::start();
    push(Image::Small, &f.registry, "test/small:v1");
    push(Image::DockerV2s2, &f.registry, "test/docker:v1");
    let a = f.replica("a", f.pull_through());
    // B skips the tier for longer after a failure, so that /readyz is seen to say so.
    let b_metrics = free_port();
    let b = f.replica_with("b", f.pull_through().metrics(b_metrics), |s| {
        s.retry_after = Duration::from_secs(8);
    });
    let readyz = || async move {
        let r = http::get(&format!("http://127.0.0.1:{b_metrics}/readyz")).await;
        assert_eq!(r.status, 200, "/readyz is never unready for the bucket");
        serde_json::from_slice::<Value>(&r.body).unwrap()["shared"].clone()
    };
    let shared_state = || async move { readyz().await["state"].as_str().unwrap().to_owned() };
    skopeo_copy(
        &format!("{}/test/small:v1", a.host()),
        &f.dir.path().join("a1"),
    )
    .unwrap();
    assert_eq!(shared_state().await, "up");
    // moto honours If-None-Match (Garage 2.5 does not: the probe at start says so).
    assert_eq!(readyz().await["conditional_writes"], json!(true));

    f.s3.stop();
    for (p, image, out) in [
        (&a, "test/small:v1", "a2"),
        (&b, "test/small:v1", "b1"),
        (&b, "test/docker:v1", "b2"),
    ] {
        skopeo_copy(&format!("{}/{image}", p.host()), &f.dir.path().join(out))
            .unwrap_or_else(|e| panic!("{image} with the bucket down: {e}\n{}", p.log_contents()));
    }
    assert!(
        b.log_contents().contains("shared tier failed"),
        "{}",
        b.log_contents()
    );
    assert_eq!(shared_state().await, "down");

    f.s3.start_again();
    std::thread::sleep(Duration::from_millis(1500)); // A's retry_after
    skopeo_copy(
        &format!("{}/test/docker:v1", a.host()),
        &f.dir.path().join("a3"),
    )
    .unwrap();
    // Its layers are small's, held by A already; its manifest and tag mapping are new.
    wait_until("the tier to fill again", || {
        !f.s3.keys(&format!("{PREFIX}/manifests/")).is_empty()
    });
    std::thread::sleep(Duration::from_secs(8)); // B's
    assert_eq!(shared_state().await, "up");
}

/// A replica killed with SIGKILL while its 50 MiB layer goes up in parts: no object appears (the
/// upload was never completed); B, once the dead replica's lease ran out, fetches and shares it.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_upload_leaves_nothing_visible() {
    let f = Fleet::start();
    let repo = "test/big";
    push(Image::Big, &f.registry, &format!("{repo}:v1"));
    let manifest = f.manifest(repo, "v1").await;
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let key = f.blob_key(&layer);
    // A short lease: B takes the dead replica's over soon.
    let short_lease = |s: &mut SharedConfig| s.lease_ttl = Duration::from_secs(3);
    let mut a = f.replica_with("a", f.pull_through(), short_lease);
    assert_eq!(manifest_v1(&a, repo).await.status, 200);

    let blob = format!("{}/v2/{repo}/blobs/{layer}", a.url());
    let r = http::get(&blob).await;
    assert_eq!(r.status, 200);
    // The upload starts once A verified and committed the layer: catch it in flight.
    let start = Instant::now();
    while f.s3.uploads_in_progress() == 0 {
        assert!(
            f.s3.get(&key).is_none(),
            "the upload finished before it could be interrupted"
        );
        assert!(start.elapsed() < Duration::from_secs(30), "no upload began");
        std::thread::sleep(Duration::from_millis(2));
    }
    a.kill9();
    std::thread::sleep(Duration::from_millis(500));
    assert!(f.s3.get(&key).is_none(), "a partial upload became visible");

    let b = f.replica_with("b", f.pull_through(), short_lease);
    assert_eq!(manifest_v1(&b, repo).await.status, 200);
    let r = http::get(&format!("{}/v2/{repo}/blobs/{layer}", b.url())).await;
    assert_eq!(r.status, 200, "{}", b.log_contents());
    assert_eq!(sha256_hex(&r.body), layer);
    wait_until("B's upload", || f.s3.get(&key).is_some());
    let shared = f.s3.get(&key).unwrap();
    assert_eq!(sha256_hex(&shared), layer);
}

/// An unsigned image under a keyed rule: denied by A, and by B although the bucket holds its
/// manifest and blobs; a signed one passes on both. Each replica decides for itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_denied_image_stays_denied_on_every_replica() {
    let f = Fleet::start();
    let key = CosignKey::generate();
    key.write_public(&f.dir.path().join("release.pub"));
    let host = f.registry.host();
    push(Image::Small, &f.registry, "keyed/signed:v1");
    push(Image::Small, &f.registry, "keyed/unsigned:v1");
    f.sign(&key, "keyed/signed", "v1");
    let config = || f.keyed(Rule::new("keyed", &[&format!("{host}/keyed/**")]).key("release"));
    let a = f.replica("a", config());
    let b = f.replica("b", config());
    assert_eq!(
        manifest_v1(&a, "keyed/signed").await.status,
        200,
        "{}",
        a.log_contents()
    );
    assert_eq!(
        manifest_v1(&a, "keyed/unsigned").await.status,
        403,
        "{}",
        a.log_contents()
    );
    wait_until("A's shared signature", || {
        !f.s3.keys(&format!("{PREFIX}/records/tag/")).is_empty()
    });
    assert_eq!(
        manifest_v1(&b, "keyed/signed").await.status,
        200,
        "{}",
        b.log_contents()
    );
    assert_eq!(
        manifest_v1(&b, "keyed/unsigned").await.status,
        403,
        "{}",
        b.log_contents()
    );
    let unsigned_layer = f.manifest("keyed/unsigned", "v1").await["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = http::get(&format!(
        "{}/v2/keyed/unsigned/blobs/{unsigned_layer}",
        b.url()
    ))
    .await;
    assert_ne!(r.status, 200, "a blob of the denied image was served by B");
}

/// A's pull, plus an object nothing references and an abandoned upload's worth of garbage:
/// `gc --shared` deletes the unreferenced object only, and B still pulls everything from the
/// bucket; with `--keep 0s` no record keeps anything, and the bucket is emptied of content.
#[tokio::test(flavor = "multi_thread")]
async fn gc_deletes_only_what_no_kept_manifest_references() {
    let f = Fleet::start();
    let repo = "test/small";
    let (manifest, digest) = f.push_small(repo).await;
    let a = f.replica("a", f.pull_through());
    skopeo_copy(
        &format!("{}/{repo}:v1", a.host()),
        &f.dir.path().join("via-a"),
    )
    .unwrap();
    let held: Vec<String> = layers(&manifest)
        .iter()
        .map(|d| f.blob_key(d))
        .chain([f.manifest_key(&digest)])
        .collect();
    wait_until("A's uploads", || {
        held.iter().all(|k| f.s3.get(k).is_some())
            && !f.s3.keys(&format!("{PREFIX}/records/tag/")).is_empty()
    });
    let garbage = b"referenced by nothing".to_vec();
    let garbage_key = f.blob_key(&sha256_hex(&garbage));
    f.s3.put(&garbage_key, &garbage);
    // A record too large to be one of ours (a referrers list an attacker padded, say) keeps
    // nothing and stops nothing.
    let padded = format!("{PREFIX}/records/referrers/{}", "0".repeat(64));
    f.s3.put(&padded, &vec![b' '; 2 << 20]);

    let config = f.dir.path().join("gc.toml");
    let shared = f.shared();
    write_cli_config(
        &config,
        &f.pull_through().cache(|c| c.shared = Some(shared)),
        &f.dir.path().join("gc-data"),
    );
    let gc = |extra: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["cache", "gc", "--shared", "--grace", "0s", "--config"])
            .arg(&config)
            .args(extra)
            .envs(f.s3.proxy_env())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "gc --shared: {text}");
        text
    };
    let report = gc(&[]);
    assert!(f.s3.get(&garbage_key).is_none(), "garbage kept: {report}");
    for k in &held {
        assert!(f.s3.get(k).is_some(), "{k} deleted: {report}");
    }

    let b = f.replica("b", f.pull_through());
    let before = f.gets(repo);
    skopeo_copy(
        &format!("{}/{repo}:v1", b.host()),
        &f.dir.path().join("via-b"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", b.log_contents()));
    assert_eq!(before, f.gets(repo), "B pulled from the bucket after gc");

    let report = gc(&["--keep", "0s"]);
    for k in &held {
        assert!(
            f.s3.get(k).is_none(),
            "{k} kept by an expired record: {report}"
        );
    }
}

/// A tag under `immutable_tags` seen by A, then moved upstream to another validly signed image:
/// B, started after the move and never having seen the tag, refuses it too, as does A.
#[tokio::test(flavor = "multi_thread")]
async fn immutable_tags_hold_across_the_fleet() {
    let f = Fleet::start();
    let key = CosignKey::generate();
    key.write_public(&f.dir.path().join("release.pub"));
    let host = f.registry.host();
    push(Image::Small, &f.registry, "locked/app:v1");
    let first = f.sign(&key, "locked/app", "v1");
    let config = || {
        f.keyed(
            Rule::new("locked", &[&format!("{host}/locked/**")])
                .key("release")
                .immutable_tags(),
        )
        .cache(|c| c.tag_ttl = Duration::ZERO)
    };
    let a = f.replica("a", config());
    let r = manifest_v1(&a, "locked/app").await;
    assert_eq!(r.status, 200, "{}", a.log_contents());
    assert_eq!(r.header("docker-content-digest"), Some(first.as_str()));
    wait_until("the fleet's first digest", || {
        !f.s3.keys(&format!("{PREFIX}/records/first/")).is_empty()
    });

    push(Image::Big, &f.registry, "locked/app:v1");
    let moved = f.sign(&key, "locked/app", "v1");
    assert_ne!(first, moved);
    let b = f.replica("b", config());
    for (name, p) in [("B", &b), ("A", &a)] {
        let r = manifest_v1(p, "locked/app").await;
        assert_eq!(
            r.status,
            403,
            "{name} served the moved tag\n{}",
            p.log_contents()
        );
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(
            body.contains(&first) && body.contains(&moved),
            "{name}: {body}"
        );
    }
}
