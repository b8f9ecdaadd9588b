//! The registry API's edges, over raw HTTP against a real upstream: `Accept` variants, HEAD
//! shapes, routing, `Range`, every error code, tag pagination, revalidation and stale serving.

use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;

use portcullis_policy::DefaultAction;
use portcullis_testkit::http::{self, Response};
use portcullis_testkit::{
    manifest_digest_in_registry, push, require_tools, tempdir, ConfigBuilder, Image, Proxy,
    Registry,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const V2S2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Portcullis in `work/sub` in front of `upstream`, its config `edit`ed.
fn proxy(
    work: &Path,
    sub: &str,
    upstream: &Registry,
    edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder,
) -> Proxy {
    let config = ConfigBuilder::pull_through(&upstream.host(), &upstream.url());
    Proxy::start(Path::new(BIN), &work.join(sub), &edit(config))
}

/// The OCI error code of a response, checking the error JSON's shape on the way.
fn code(resp: &Response) -> String {
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("error body is JSON: {e}: {:?}", resp.body));
    assert!(v["errors"][0]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    v["errors"][0]["code"].as_str().unwrap().to_owned()
}

fn message(resp: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    v["errors"][0]["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_negotiate_accept_and_route_three_ways() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::DockerV2s2, &upstream, "test/docker:v1");
    push(Image::Multi, &upstream, "test/multi:v1");
    push(Image::Small, &upstream, "test/small:v1");
    let p = proxy(work.path(), "p", &upstream, |c| c);
    let base = p.url();

    let root = http::get(&format!("{base}/v2/")).await;
    assert_eq!((root.status, &root.body[..]), (200, &b"{}"[..]));
    assert_eq!(
        root.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    // Docker: one Accept line per media type.
    let docker_accept = [
        ("accept", V2S2),
        ("accept", LIST),
        ("accept", OCI),
        ("accept", INDEX),
    ];
    let head = http::request(
        "HEAD",
        &format!("{base}/v2/test/docker/manifests/v1"),
        &docker_accept,
    )
    .await;
    let get = http::request(
        "GET",
        &format!("{base}/v2/test/docker/manifests/v1"),
        &docker_accept,
    )
    .await;
    let digest = manifest_digest_in_registry(&upstream, "test/docker", "v1");
    for resp in [&head, &get] {
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some(V2S2));
        assert_eq!(resp.header("docker-content-digest"), Some(digest.as_str()));
        assert_eq!(
            resp.header("content-length"),
            Some(get.body.len().to_string().as_str())
        );
    }
    assert!(head.body.is_empty());
    assert_eq!(portcullis_testkit::sha256_hex(&get.body), digest);

    // containerd: one comma-joined line, and ?ns= echoed back.
    let joined = format!("{INDEX}, {LIST}, {OCI}, {V2S2}, */*");
    let multi = http::request(
        "GET",
        &format!("{base}/v2/test/multi/manifests/v1?ns={}", upstream.host()),
        &[("accept", joined.as_str())],
    )
    .await;
    assert_eq!(multi.status, 200);
    assert_eq!(multi.header("content-type"), Some(INDEX));
    assert_eq!(
        multi.header("oci-namespace"),
        Some(upstream.host().as_str())
    );

    // By digest, and by a path prefix naming the upstream.
    let by_digest = http::get(&format!("{base}/v2/test/docker/manifests/{digest}")).await;
    assert_eq!(by_digest.body, get.body);
    let prefixed = http::get(&format!(
        "{base}/v2/{}/test/small/manifests/v1",
        upstream.host()
    ))
    .await;
    assert_eq!(prefixed.status, 200);
    assert_eq!(
        prefixed.header("docker-content-digest"),
        Some(manifest_digest_in_registry(&upstream, "test/small", "v1").as_str())
    );

    let unknown_ns = http::get(&format!("{base}/v2/test/small/manifests/v1?ns=quay.io")).await;
    assert_eq!(
        (unknown_ns.status, code(&unknown_ns).as_str()),
        (404, "NAME_UNKNOWN")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_blobs_serve_ranges_and_head() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Big, &upstream, "test/big:v1");
    push(Image::Small, &upstream, "test/small:v1");
    let p = proxy(work.path(), "p", &upstream, |c| c);
    for repo in ["test/big", "test/small"] {
        let m = http::get(&format!("{}/v2/{repo}/manifests/v1", p.url())).await;
        let m: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let layer = m["layers"][0]["digest"].as_str().unwrap();
        let url = format!("{}/v2/{repo}/blobs/{layer}", p.url());

        let cold_head = http::request("HEAD", &url, &[]).await;
        assert_eq!(cold_head.status, 200);
        let whole = http::get(&url).await.body;
        let size = whole.len();
        assert_eq!(
            cold_head.header("content-length"),
            Some(size.to_string().as_str())
        );

        let head = http::request("HEAD", &url, &[]).await;
        assert_eq!((head.status, head.body.len()), (200, 0));
        assert_eq!(
            head.header("content-length"),
            Some(size.to_string().as_str())
        );
        assert_eq!(head.header("docker-content-digest"), Some(layer));

        let first = http::request("GET", &url, &[("range", "bytes=0-9")]).await;
        assert_eq!(first.status, 206);
        assert_eq!(first.body, whole.slice(0..10));
        assert_eq!(
            first.header("content-range"),
            Some(format!("bytes 0-9/{size}").as_str())
        );
        let tail = http::request("GET", &url, &[("range", "bytes=-5")]).await;
        assert_eq!(
            (tail.status, tail.body.clone()),
            (206, whole.slice(size - 5..))
        );
        let rest = http::request("GET", &url, &[("range", "bytes=7-")]).await;
        assert_eq!(rest.body, whole.slice(7..));
        let beyond = format!("bytes={size}-");
        let bad = http::request("GET", &url, &[("range", beyond.as_str())]).await;
        assert_eq!(bad.status, 416);
        assert_eq!(
            bad.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_the_right_oci_error() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    let p = proxy(work.path(), "p", &upstream, |c| c);
    let long = "a".repeat(256);
    let zeros = format!("sha256:{}", "0".repeat(64));
    let sha512 = format!("sha512:{}", "a".repeat(128));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "GET",
            "/v2/Test/small/manifests/v1".into(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/test//small/manifests/v1".into(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/test/../small/manifests/v1".into(),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            format!("/v2/{long}/manifests/v1"),
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/test/small/blobs/sha256:abc".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/test/small/manifests/sha256:XYZ".into(),
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            format!("/v2/test/small/blobs/{sha512}"),
            400,
            "UNSUPPORTED",
        ),
        (
            "GET",
            "/v2/test/small/manifests/-dash".into(),
            400,
            "MANIFEST_INVALID",
        ),
        (
            "GET",
            "/v2/test/small/manifests/nope".into(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            format!("/v2/test/small/manifests/{zeros}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            "GET",
            format!("/v2/test/small/blobs/{zeros}"),
            403,
            "DENIED",
        ),
        (
            "GET",
            "/v2/test/absent/tags/list".into(),
            404,
            "NAME_UNKNOWN",
        ),
        (
            "PUT",
            "/v2/test/small/manifests/v1".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            "POST",
            "/v2/test/small/blobs/uploads/".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            format!("/v2/test/small/blobs/{zeros}"),
            405,
            "UNSUPPORTED",
        ),
        (
            "PATCH",
            "/v2/test/small/blobs/uploads/x".into(),
            405,
            "UNSUPPORTED",
        ),
    ];
    for (method, path, status, expected) in cases {
        let resp = http::request(method, &format!("{}{path}", p.url()), &[]).await;
        assert_eq!(
            (resp.status, code(&resp).as_str()),
            (status, expected),
            "{method} {path}: {}",
            message(&resp)
        );
    }
    let log = p.log_contents();
    assert!(
        log.contains("code=NAME_INVALID"),
        "each refusal is logged: {log}"
    );

    // A blob the verified manifest names, gone from the upstream.
    let m = http::get(&format!("{}/v2/test/small/manifests/v1", p.url())).await;
    let m: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    let config = m["config"]["digest"].as_str().unwrap();
    std::fs::remove_file(upstream.blob_path(config)).unwrap();
    let gone = http::get(&format!("{}/v2/test/small/blobs/{config}", p.url())).await;
    assert_eq!((gone.status, code(&gone).as_str()), (404, "BLOB_UNKNOWN"));

    let head = http::request(
        "HEAD",
        &format!("{}/v2/test/small/manifests/nope", p.url()),
        &[],
    )
    .await;
    assert_eq!((head.status, head.body.len()), (404, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_and_deny_lists_refuse_before_any_upstream_traffic() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    push(Image::Small, &upstream, "test/secret:v1");
    push(Image::Small, &upstream, "other/img:v1");
    let host = upstream.host();
    let p = proxy(work.path(), "p", &upstream, |c| {
        c.allow(&format!("{host}/test/*"))
            .deny(&format!("{host}/test/secret"))
    });
    let ok = http::get(&format!("{}/v2/test/small/manifests/v1", p.url())).await;
    assert_eq!(ok.status, 200);
    for (path, needle) in [
        ("/v2/test/secret/manifests/v1", "deny-list"),
        ("/v2/other/img/manifests/v1", "allow-list"),
        ("/v2/test/secret/tags/list", "deny-list"),
    ] {
        let resp = http::get(&format!("{}{path}", p.url())).await;
        assert_eq!(
            (resp.status, code(&resp).as_str()),
            (403, "DENIED"),
            "{path}"
        );
        assert!(message(&resp).contains(needle), "{}", message(&resp));
    }
    assert_eq!(upstream.count_requests("GET", "/test/secret"), 0);
    assert_eq!(upstream.count_requests("GET", "/other/img/manifests"), 0);

    let deny_all = proxy(work.path(), "deny", &upstream, |c| {
        c.policy_default(DefaultAction::Deny)
    });
    let resp = http::get(&format!("{}/v2/test/small/manifests/v1", deny_all.url())).await;
    assert_eq!((resp.status, code(&resp).as_str()), (403, "DENIED"));
    assert!(
        message(&resp).contains("[policy] default"),
        "{}",
        message(&resp)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_manifests_are_refused() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Multi, &upstream, "test/multi:v1");
    let p = proxy(work.path(), "p", &upstream, |c| {
        c.server(|s| s.max_manifest_size = ByteSize::b(100))
    });
    let resp = http::get(&format!("{}/v2/test/multi/manifests/v1", p.url())).await;
    assert_eq!((resp.status, code(&resp).as_str()), (502, "SIZE_INVALID"));
    assert!(
        message(&resp).contains("max_manifest_size"),
        "{}",
        message(&resp)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_list_passes_pagination_through() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    for tag in ["v1", "v2", "v3"] {
        push(Image::Small, &upstream, &format!("test/small:{tag}"));
    }
    let p = proxy(work.path(), "p", &upstream, |c| c);
    let all = http::get(&format!("{}/v2/test/small/tags/list", p.url())).await;
    let v: serde_json::Value = serde_json::from_slice(&all.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v1", "v2", "v3"]));

    // distribution 2.8 ignores `n` and `last`; that they reach it is what portcullis owes. The
    // `Link` rewrite is unit-tested beside the handler.
    let prefixed = format!("{}/test/small", upstream.host());
    let page = http::get(&format!("{}/v2/{prefixed}/tags/list?n=2&last=v1", p.url())).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        upstream.count_requests("GET", "/v2/test/small/tags/list?n=2&last=v1"),
        1
    );
    let bad = http::get(&format!("{}/v2/test/small/tags/list?n=lots", p.url())).await;
    assert_eq!((bad.status, code(&bad).as_str()), (400, "UNSUPPORTED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_hub_names_get_library_and_mirror_prefixes_work() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "library/alpine:latest");
    let p = Proxy::start(
        Path::new(BIN),
        &work.path().join("p"),
        &ConfigBuilder::pull_through("docker.io", &upstream.url()),
    );
    let digest = manifest_digest_in_registry(&upstream, "library/alpine", "latest");
    for path in [
        "/v2/alpine/manifests/latest",
        "/v2/library/alpine/manifests/latest",
        "/v2/docker.io/alpine/manifests/latest",
        "/v2/alpine/manifests/latest?ns=docker.io",
    ] {
        let resp = http::get(&format!("{}{path}", p.url())).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(
            resp.header("docker-content-digest"),
            Some(digest.as_str()),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_revalidate_with_head_and_serve_stale_within_max_stale() {
    require_tools();
    let work = tempdir();
    let mut upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    let revalidating = |c: ConfigBuilder| c.cache(|c| c.tag_ttl = Duration::ZERO);
    let p = proxy(work.path(), "p", &upstream, revalidating);
    let strict = proxy(work.path(), "strict", &upstream, |c| {
        revalidating(c).cache(|c| c.max_stale = Duration::ZERO)
    });
    let url = |p: &Proxy| format!("{}/v2/test/small/manifests/v1", p.url());
    let first = http::get(&url(&p)).await;
    let second = http::get(&url(&p)).await;
    assert_eq!(first.body, second.body);
    assert_eq!(
        upstream.count_requests("HEAD", "/test/small/manifests/v1"),
        1
    );
    assert_eq!(
        upstream.count_requests("GET", "/test/small/manifests/v1"),
        1,
        "a revalidated tag is not fetched again"
    );

    // The tag moves upstream: the next request follows it.
    push(Image::DockerV2s2, &upstream, "test/small:v1");
    let moved = http::get(&url(&p)).await;
    assert_eq!(moved.header("content-type"), Some(V2S2));
    let moved_digest = moved.header("docker-content-digest").unwrap().to_owned();
    assert_eq!(http::get(&url(&strict)).await.status, 200);

    upstream.stop();
    let stale = http::get(&url(&p)).await;
    assert_eq!(stale.status, 200);
    assert_eq!(
        stale.header("docker-content-digest"),
        Some(moved_digest.as_str())
    );
    assert!(p.log_contents().contains("stale"), "{}", p.log_contents());
    let by_digest = http::get(&format!(
        "{}/v2/test/small/manifests/{moved_digest}",
        p.url()
    ))
    .await;
    assert_eq!(
        by_digest.status, 200,
        "digest references never go upstream once cached"
    );

    let refused = http::get(&url(&strict)).await;
    assert_eq!(
        (refused.status, code(&refused).as_str()),
        (503, "UNAVAILABLE")
    );
}
