//! Real clients (skopeo, containerd) pull through portcullis from a real upstream registry
//! (distribution 2.8): every image kind, a second pull with the upstream stopped, single-flight,
//! a tampered upstream, and a kill -9 in the middle of a blob.

use std::path::Path;

use portcullis_testkit::dir_files as files;
use portcullis_testkit::{
    http, push, require_tools, skopeo_copy, skopeo_copy_all, tempdir, write_hosts_toml,
    ConfigBuilder, Containerd, Fault, FaultServer, Image, Proxy, Registry,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn start(work: &Path, upstream: &Registry) -> Proxy {
    Proxy::start(
        Path::new(BIN),
        &work.join("proxy"),
        &ConfigBuilder::pull_through(&upstream.host(), &upstream.url()),
    )
}

fn layer_digests(manifest: &[u8]) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn skopeo_pulls_every_kind_identically_and_again_with_upstream_down() {
    require_tools();
    let work = tempdir();
    let mut upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    push(Image::DockerV2s2, &upstream, "test/docker:v1");
    push(Image::Multi, &upstream, "test/multi:v1");
    push(Image::Big, &upstream, "test/big:v1");
    let proxy = start(work.path(), &upstream);

    let images = ["test/small:v1", "test/docker:v1", "test/big:v1"];
    for image in images {
        let direct = work.path().join("direct").join(image);
        let through = work.path().join("through").join(image);
        skopeo_copy(&format!("{}/{image}", upstream.host()), &direct).unwrap();
        skopeo_copy(&format!("{}/{image}", proxy.host()), &through)
            .unwrap_or_else(|e| panic!("{image}: {e}\n{}", proxy.log_contents()));
        assert_eq!(files(&direct), files(&through), "{image}");
    }
    let multi_direct = work.path().join("direct-multi");
    let multi_through = work.path().join("through-multi");
    skopeo_copy_all(&format!("{}/test/multi:v1", upstream.host()), &multi_direct).unwrap();
    skopeo_copy_all(&format!("{}/test/multi:v1", proxy.host()), &multi_through).unwrap();
    assert_eq!(files(&multi_direct), files(&multi_through));
    let log = proxy.log_contents();
    assert!(
        log.contains("application/vnd.docker.distribution.manifest.v2+json")
            || log.contains("test/docker")
    );

    upstream.stop();
    for image in images {
        let again = work.path().join("again").join(image);
        skopeo_copy(&format!("{}/{image}", proxy.host()), &again)
            .unwrap_or_else(|e| panic!("{image} from the cache: {e}\n{}", proxy.log_contents()));
        assert_eq!(
            files(&work.path().join("direct").join(image)),
            files(&again)
        );
    }
    let again = work.path().join("again-multi");
    skopeo_copy_all(&format!("{}/test/multi:v1", proxy.host()), &again).unwrap();
    assert_eq!(files(&multi_direct), files(&again));
}

#[test]
fn containerd_pulls_through_hosts_toml_with_ns() {
    require_tools();
    let work = tempdir();
    let mut upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    push(Image::Multi, &upstream, "test/multi:v1");
    // The default upstream is a dead port: only ?ns= can reach the registry.
    let config = ConfigBuilder::pull_through("docker.io", "http://127.0.0.1:9")
        .upstream(&upstream.host(), &upstream.url());
    let proxy = Proxy::start(Path::new(BIN), &work.path().join("proxy"), &config);
    let hosts = write_hosts_toml(
        &work.path().join("certs.d"),
        &upstream.host(),
        &upstream.url(),
        &proxy.url(),
    );
    let ctd = Containerd::start(&work.path().join("ctd"));
    for image in ["test/small:v1", "test/multi:v1"] {
        let reference = format!("{}/{image}", upstream.host());
        ctd.pull(&reference, &hosts)
            .unwrap_or_else(|e| panic!("{reference}: {e}\n{}", proxy.log_contents()));
        let (repo, tag) = image.split_once(':').unwrap();
        assert_eq!(
            ctd.image_digest(&reference).unwrap(),
            portcullis_testkit::manifest_digest_in_registry(&upstream, repo, tag)
        );
    }
    let log = proxy.log_contents();
    assert!(
        log.contains(&format!(
            "upstream={} ns={}",
            upstream.host(),
            upstream.host()
        )),
        "requests were routed by ?ns=: {log}"
    );
    // The pull came through portcullis, not from the fallback server: stop the upstream and
    // pull into a fresh containerd.
    upstream.stop();
    let ctd2 = Containerd::start(&work.path().join("ctd2"));
    ctd2.pull(&format!("{}/test/small:v1", upstream.host()), &hosts)
        .unwrap_or_else(|e| panic!("from the cache: {e}\n{}", proxy.log_contents()));
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_pulls_of_a_cold_blob_make_one_upstream_get() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Big, &upstream, "test/big:v1");
    let proxy = start(work.path(), &upstream);
    let manifest = http::get(&format!("{}/v2/test/big/manifests/v1", proxy.url())).await;
    assert_eq!(manifest.status, 200);
    let layer = layer_digests(&manifest.body).remove(0);
    let url = format!("{}/v2/test/big/blobs/{layer}", proxy.url());
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http::get(&url).await })
        })
        .collect();
    for pull in pulls {
        let resp = pull.await.unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.body.len() > 50 << 20);
        assert_eq!(portcullis_testkit::sha256_hex(&resp.body), layer);
    }
    assert_eq!(
        upstream.count_requests("GET", &format!("/blobs/{layer}")),
        1,
        "{}",
        proxy.log_contents()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_upstream_blob_is_neither_served_nor_cached() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    push(Image::Big, &upstream, "test/big:v1");
    let proxy = start(work.path(), &upstream);
    for (repo, copy) in [("test/small", "small"), ("test/big", "big")] {
        let manifest = http::get(&format!("{}/v2/{repo}/manifests/v1", proxy.url())).await;
        let layer = layer_digests(&manifest.body).remove(0);
        let stored = upstream.blob_path(&layer);
        let original = std::fs::read(&stored).unwrap();
        let mut bad = original.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        std::fs::write(&stored, &bad).unwrap();

        let dest = work.path().join("tampered").join(copy);
        let err = skopeo_copy(&format!("{}/{repo}:v1", proxy.host()), &dest).unwrap_err();
        assert!(!err.is_empty());
        let url = format!("{}/v2/{repo}/blobs/{layer}", proxy.url());
        match http::try_request("GET", &url, &[], Default::default()).await {
            Err(_) => {}
            Ok(resp) => assert!(
                resp.status != 200 || resp.body.len() < original.len(),
                "a tampered blob was served whole"
            ),
        }
        let hex = layer.strip_prefix("sha256:").unwrap();
        assert!(!proxy.data_dir.join("blobs/sha256").join(hex).exists());
        let log = proxy.wait_for_log("does not match its digest");
        assert!(log.contains("does not match its digest"), "{log}");

        std::fs::write(&stored, &original).unwrap();
        let repaired = work.path().join("repaired").join(copy);
        skopeo_copy(&format!("{}/{repo}:v1", proxy.host()), &repaired)
            .unwrap_or_else(|e| panic!("after repair: {e}\n{}", proxy.log_contents()));
        assert!(proxy.data_dir.join("blobs/sha256").join(hex).exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_blob_leaves_nothing_partial() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Big, &upstream, "test/big:v1");
    // A throttled relay keeps the fetch in flight long enough to kill the proxy mid-blob.
    let slow = FaultServer::start(Fault::Throttle {
        to: upstream.addr,
        bytes_per_sec: 8 << 20,
    });
    let mut proxy = Proxy::start(
        Path::new(BIN),
        &work.path().join("proxy"),
        &ConfigBuilder::pull_through(&upstream.host(), &slow.url()),
    );
    let manifest = http::get(&format!("{}/v2/test/big/manifests/v1", proxy.url())).await;
    let layer = layer_digests(&manifest.body).remove(0);
    let url = format!("{}/v2/test/big/blobs/{layer}", proxy.url());
    let pull = tokio::spawn({
        let url = url.clone();
        async move { http::try_request("GET", &url, &[], Default::default()).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let tmp = proxy.data_dir.join("tmp");
    let partial: u64 = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(partial > 0, "the fetch should be under way");
    proxy.kill9();
    let pulled = pull.await.unwrap();
    assert!(pulled.is_err() || pulled.unwrap().body.len() < 50 << 20);

    let hex = layer.strip_prefix("sha256:").unwrap();
    assert!(!proxy.data_dir.join("blobs/sha256").join(hex).exists());
    proxy.restart();
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "leftovers removed"
    );
    let resp = http::get(&url).await;
    assert_eq!(resp.status, 200);
    assert_eq!(portcullis_testkit::sha256_hex(&resp.body), layer);
    assert!(proxy.data_dir.join("blobs/sha256").join(hex).exists());
}
