//! The OCI referrers API (`/v2/<name>/referrers/<digest>`) through portcullis, against the real
//! upstream (distribution 2.8, which has no referrers API: the `sha256-<hex>` tag schema stands
//! in) and an in-process upstream that has one; the cache and its stale serving; and referrer
//! artifacts served as verification material under a denying policy.

use std::path::Path;
use std::time::Duration;

use portcullis_policy::DefaultAction;
use portcullis_testkit::http::{self, Response};
use portcullis_testkit::referrers::{referrers_tag, OCI_MANIFEST};
use portcullis_testkit::{
    manifest_digest_in_registry, push, push_referrer, require_tools, sha256_hex, tempdir,
    ConfigBuilder, CosignKey, Fault, FaultServer, Image, Proxy, Registry, Rule,
};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SBOM: &str = "application/vnd.example.sbom";
const TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const FIVE_MINUTES: Duration = Duration::from_secs(5 * 60);

/// An upstream registry with `test/app:v1` (Small) and `test/app:v2` (DockerV2s2), and their
/// digests.
struct Upstream {
    dir: tempfile::TempDir,
    registry: Registry,
    v1: String,
    v2: String,
}

impl Upstream {
    fn start() -> Upstream {
        require_tools();
        let dir = tempdir();
        let registry = Registry::start(dir.path());
        push(Image::Small, &registry, "test/app:v1");
        push(Image::DockerV2s2, &registry, "test/app:v2");
        let v1 = manifest_digest_in_registry(&registry, "test/app", "v1");
        let v2 = manifest_digest_in_registry(&registry, "test/app", "v2");
        Upstream {
            dir,
            registry,
            v1,
            v2,
        }
    }

    fn work(&self) -> &Path {
        self.dir.path()
    }

    /// A Sigstore-bundle referrer of `subject` in `repo`: (manifest digest, bundle bytes).
    fn bundle(&self, repo: &str, subject: &str) -> (String, Vec<u8>) {
        let bundle = serde_json::to_vec(&json!({ "mediaType": BUNDLE, "for": subject })).unwrap();
        let ann = [(
            "dev.sigstore.bundle.predicateType",
            "https://sigstore.dev/cosign/sign/v1",
        )];
        let digest = push_referrer(&self.registry, repo, subject, BUNDLE, BUNDLE, &bundle, &ann);
        (digest, bundle)
    }

    /// The config of a proxy in front of the registry, with `tag_ttl`.
    fn config(&self, tag_ttl: Duration) -> ConfigBuilder {
        ConfigBuilder::pull_through(&self.registry.host(), &self.registry.url())
            .cache(|c| c.tag_ttl = tag_ttl)
    }

    /// A proxy in `workdir/sub` with `config`.
    fn proxy(&self, sub: &str, config: &ConfigBuilder) -> Proxy {
        Proxy::start(Path::new(BIN), &self.work().join(sub), config)
    }
}

/// The referrers a response lists, checking that it is an OCI index on the way.
/// Pulls `subject`'s manifest through `p` (whatever the verdict): referrers are looked up only
/// for manifests the repository holds.
async fn hold(p: &Proxy, repo: &str, subject: &str) {
    let resp = http::get(&format!("{}/v2/{repo}/manifests/{subject}", p.url())).await;
    assert!(
        resp.status == 200 || resp.status == 403,
        "pulling {subject}: {}",
        resp.status
    );
}

fn listed(resp: &Response) -> Vec<Value> {
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.header("content-type"), Some(INDEX));
    let v: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(
        (v["schemaVersion"].as_u64(), v["mediaType"].as_str()),
        (Some(2), Some(INDEX))
    );
    v["manifests"].as_array().unwrap().clone()
}

fn digests(list: &[Value]) -> Vec<&str> {
    list.iter().map(|d| d["digest"].as_str().unwrap()).collect()
}

fn error_code(resp: &Response) -> (u16, String) {
    let v: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    let code = v["errors"][0]["code"].as_str().unwrap_or("").to_owned();
    (resp.status, code)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tag_schema_stands_in_for_a_missing_api() {
    let up = Upstream::start();
    let (bundle, _) = up.bundle("test/app", &up.v1);
    let sbom = push_referrer(
        &up.registry,
        "test/app",
        &up.v1,
        SBOM,
        "application/spdx+json",
        b"{}",
        &[],
    );
    let p = up.proxy("p", &up.config(FIVE_MINUTES));
    let url = format!("{}/v2/test/app/referrers/{}", p.url(), up.v1);
    hold(&p, "test/app", &up.v1).await;

    let all = listed(&http::get(&url).await);
    assert_eq!(digests(&all), [bundle.as_str(), sbom.as_str()]);
    assert_eq!(all[0]["artifactType"], BUNDLE);
    assert_eq!(all[0]["mediaType"], OCI_MANIFEST);
    assert_eq!(
        all[0]["annotations"]["dev.sigstore.bundle.predicateType"],
        "https://sigstore.dev/cosign/sign/v1"
    );
    assert_eq!(all[1]["artifactType"], SBOM);
    assert!(
        up.registry.count_requests("GET", "/referrers/") >= 1,
        "the API was tried first"
    );
    assert!(up.registry.count_requests("GET", &referrers_tag(&up.v1)) >= 1);

    // `+` must be escaped in a query, as Go's url.QueryEscape does.
    let filtered = http::get(&format!(
        "{url}?artifactType={}",
        BUNDLE.replace('+', "%2B")
    ))
    .await;
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(digests(&listed(&filtered)), [bundle.as_str()]);
    let unfiltered = http::get(&url).await;
    assert_eq!(unfiltered.header("oci-filters-applied"), None);

    let head = http::request("HEAD", &url, &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(unfiltered.body.len().to_string().as_str())
    );

    // No referrers: an empty index, not a 404. `?ns=` is echoed as for any endpoint.
    let host = up.registry.host();
    hold(&p, "test/app", &up.v2).await;
    let none = http::get(&format!(
        "{}/v2/test/app/referrers/{}?ns={host}",
        p.url(),
        up.v2
    ))
    .await;
    assert!(listed(&none).is_empty());
    assert_eq!(none.header("oci-namespace"), Some(host.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_digest_is_digest_invalid() {
    let up = Upstream::start();
    let p = up.proxy("p", &up.config(FIVE_MINUTES));
    for bad in ["sha256:zz", "latest", "sha256:ABC"] {
        let resp = http::get(&format!("{}/v2/test/app/referrers/{bad}", p.url())).await;
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(
            error_code(&resp),
            (400, "DIGEST_INVALID".to_owned()),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_lists_outlive_the_upstream() {
    let mut up = Upstream::start();
    let (bundle, _) = up.bundle("test/app", &up.v1);
    let fresh = up.proxy("fresh", &up.config(FIVE_MINUTES));
    let stale = up.proxy("stale", &up.config(Duration::ZERO));
    let path = format!("/v2/test/app/referrers/{}", up.v1);
    for p in [&fresh, &stale] {
        hold(p, "test/app", &up.v1).await;
        assert_eq!(
            digests(&listed(&http::get(&format!("{}{path}", p.url())).await)),
            [&bundle]
        );
    }
    // Fresh within tag_ttl: no upstream traffic at all.
    let asked = up.registry.count_requests("GET", "/referrers/");
    listed(&http::get(&format!("{}{path}", fresh.url())).await);
    assert_eq!(up.registry.count_requests("GET", "/referrers/"), asked);

    up.registry.stop();
    for p in [&fresh, &stale] {
        let resp = http::get(&format!("{}{path}", p.url())).await;
        assert_eq!(digests(&listed(&resp)), [&bundle], "{}", p.log_contents());
    }
    let log = stale.wait_for_log("serving the last known referrers (stale)");
    assert!(
        log.contains("serving the last known referrers (stale)"),
        "{log}"
    );
    // A subject this repository does not hold: an empty index, and no upstream traffic (any
    // client can name any digest; those lookups must cost nothing and leave nothing behind).
    let unknown = http::get(&format!("{}/v2/test/app/referrers/{}", stale.url(), up.v2)).await;
    assert!(listed(&unknown).is_empty());

    // Offline: what is held, else an empty index.
    let mut offline = fresh;
    offline.write_config(&up.config(FIVE_MINUTES).offline());
    offline.restart();
    let held = http::get(&format!("{}{path}", offline.url())).await;
    assert_eq!(digests(&listed(&held)), [&bundle]);
    let none = http::get(&format!(
        "{}/v2/test/app/referrers/{}",
        offline.url(),
        up.v2
    ))
    .await;
    assert!(listed(&none).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_referrers_api_is_preferred_over_the_tag() {
    let up = Upstream::start();
    up.bundle("test/app", &up.v1);
    // What the API lists: a pointer that the tag does not hold.
    let elsewhere = sha256_hex(b"listed by the API only");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": elsewhere,
            "size": 123,
            "artifactType": SBOM,
        }],
    });
    let api = FaultServer::start(Fault::Referrers {
        to: up.registry.addr,
        index: serde_json::to_vec(&index).unwrap(),
    });
    let config = ConfigBuilder::pull_through(&api.addr.to_string(), &api.url());
    let p = Proxy::start(Path::new(BIN), &up.work().join("p"), &config);
    let tag = referrers_tag(&up.v1);
    let tag_reads = || {
        let r = &up.registry;
        r.count_requests("GET", &tag) + r.count_requests("HEAD", &tag)
    };
    hold(&p, "test/app", &up.v1).await;
    let before = tag_reads();
    let resp = http::get(&format!("{}/v2/test/app/referrers/{}", p.url(), up.v1)).await;
    let list = listed(&resp);
    assert_eq!(digests(&list), [elsewhere.as_str()], "{}", p.log_contents());
    assert_eq!(list[0]["artifactType"], SBOM);
    assert_eq!(tag_reads(), before, "the tag was not consulted");
}

#[tokio::test(flavor = "multi_thread")]
async fn bundle_referrers_of_a_denied_image_are_not_served() {
    let up = Upstream::start();
    let key = CosignKey::generate();
    let key_path = up.work().join("release.pub");
    key.write_public(&key_path);
    let host = up.registry.host();
    push(Image::Small, &up.registry, "signed/app:v1");
    let image = manifest_digest_in_registry(&up.registry, "signed/app", "v1");
    let (bundle, bundle_bytes) = up.bundle("signed/app", &image);
    // A subject does not make a runnable layer verification material.
    let sneaky = push_referrer(
        &up.registry,
        "signed/app",
        &image,
        SBOM,
        TAR_GZ,
        b"tar",
        &[],
    );
    let config = up
        .config(FIVE_MINUTES)
        .policy_default(DefaultAction::Deny)
        .trust_key("release", &key_path)
        .rule(Rule::new("signed", &[&format!("{host}/signed/**")]).key("release"));
    let p = up.proxy("p", &config);
    let base = format!("{}/v2/signed/app", p.url());
    hold(&p, "signed/app", &image).await;

    let list = listed(&http::get(&format!("{base}/referrers/{image}")).await);
    assert_eq!(digests(&list), [bundle.as_str(), sneaky.as_str()]);

    // Verification material is served only for a subject that passed: this image is not
    // signed by the release key, so neither its bundle artifact nor the bundle blob is served.
    let manifest = http::get(&format!("{base}/manifests/{bundle}")).await;
    assert_eq!(
        error_code(&manifest),
        (403, "DENIED".to_owned()),
        "{}",
        p.log_contents()
    );
    let bundle_layer = sha256_hex(&bundle_bytes);
    let blob = http::get(&format!("{base}/blobs/{bundle_layer}")).await;
    assert_eq!(error_code(&blob), (403, "DENIED".to_owned()));

    for denied in [
        format!("{base}/manifests/v1"),
        format!("{base}/manifests/{image}"),
        format!("{base}/manifests/{sneaky}"),
    ] {
        let resp = http::get(&denied).await;
        assert_eq!(error_code(&resp), (403, "DENIED".to_owned()), "{denied}");
    }
    // A name no rule covers is refused before any upstream traffic, referrers included.
    let other = http::get(&format!("{}/v2/test/app/referrers/{}", p.url(), up.v1)).await;
    assert_eq!(error_code(&other), (403, "DENIED".to_owned()));
}
