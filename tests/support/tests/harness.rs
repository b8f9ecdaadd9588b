//! Proves the harness against the real tools: distribution, skopeo, umoci, containerd.

use std::path::Path;

use portcullis_testkit::{
    fixtures, free_port, http, manifest_digest_in_registry, push, require_tools, skopeo_copy,
    skopeo_copy_all, tempdir, write_hosts_toml, Containerd, Image, Proxy, Registry,
};

/// Size of the largest file in a `skopeo copy ... dir:` output.
fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap()
}

/// Media type of the config blob: OCI manifests made by umoci carry no top-level `mediaType`.
fn config_media_type(dir: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    m["config"]["mediaType"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn registry_push_copy_count_restart() {
    require_tools();
    let work = tempdir();
    let mut reg = Registry::start(work.path());
    let fx = fixtures();

    for (image, repo) in [
        (Image::Small, "test/small"),
        (Image::Big, "test/big"),
        (Image::Multi, "test/multi"),
        (Image::DockerV2s2, "test/docker"),
    ] {
        push(image, &reg, &format!("{repo}:v1"));
    }

    // Digests survive the push, except the converted Docker one.
    for (tag, repo) in [
        ("small", "test/small"),
        ("big", "test/big"),
        ("multi", "test/multi"),
    ] {
        assert_eq!(
            manifest_digest_in_registry(&reg, repo, "v1"),
            fx.manifest_digest(tag),
            "{repo}"
        );
    }
    assert_ne!(
        manifest_digest_in_registry(&reg, "test/docker", "v1"),
        fx.manifest_digest("small")
    );

    let out = work.path().join("out");
    let host = reg.host();
    let src = |repo: &str| format!("{host}/{repo}:v1");
    skopeo_copy(&src("test/small"), &out.join("small")).unwrap();
    assert_eq!(
        config_media_type(&out.join("small")),
        "application/vnd.oci.image.config.v1+json"
    );
    skopeo_copy(&src("test/docker"), &out.join("docker")).unwrap();
    assert_eq!(
        config_media_type(&out.join("docker")),
        "application/vnd.docker.container.image.v1+json"
    );
    skopeo_copy(&src("test/big"), &out.join("big")).unwrap();
    let big = largest_file(&out.join("big"));
    assert!(big >= 50 * 1024 * 1024, "big layer is only {big} bytes");
    skopeo_copy_all(&src("test/multi"), &out.join("multi")).unwrap();
    let per_platform = std::fs::read_dir(out.join("multi"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.ends_with(".manifest.json") && name != "manifest.json"
        })
        .count();
    assert_eq!(per_platform, 2, "both platforms copied");
    assert!(skopeo_copy(&src("test/absent"), &out.join("absent")).is_err());

    // The access log saw the pulls.
    assert_eq!(reg.count_requests("GET", "/v2/test/small/manifests/v1"), 1);
    assert!(reg.count_requests("GET", "/v2/test/big/blobs/sha256:") >= 2);
    assert!(reg.count_requests("HEAD", "/v2/test/small/manifests/v1") >= 1);
    assert_eq!(reg.count_requests("DELETE", "/v2/"), 0);

    // Blob storage is where blob_path says.
    let big_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("big/manifest.json")).unwrap()).unwrap();
    let layer = big_manifest["layers"][0]["digest"].as_str().unwrap();
    let stored = std::fs::metadata(reg.blob_path(layer)).unwrap().len();
    assert_eq!(stored, big);

    // Stop: nothing answers; restart: same port, same content.
    reg.stop();
    assert!(std::net::TcpStream::connect(reg.addr).is_err());
    reg.restart();
    assert_eq!(reg.host(), host);
    skopeo_copy(&src("test/small"), &out.join("small-again")).unwrap();
    assert_eq!(reg.count_requests("GET", "/v2/test/small/manifests/v1"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_helper_and_distribution_proxy_mode() {
    require_tools();
    let work = tempdir();
    let up = Registry::start(work.path());
    push(Image::Small, &up, "test/small:v1");
    let peer = Registry::start_proxy_of(work.path(), &up.url());
    assert_ne!(peer.root, up.root);

    let r = http::get(&format!("{}/v2/", up.url())).await;
    assert_eq!(r.status, 200);
    let digest = fixtures().manifest_digest("small");
    let accept = ("Accept", "application/vnd.oci.image.manifest.v1+json");
    let r = http::request(
        "GET",
        &format!("{}/v2/test/small/manifests/v1", peer.url()),
        &[
            accept,
            ("Accept", "application/vnd.oci.image.index.v1+json"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(portcullis_testkit::sha256_hex(&r.body), digest);
    assert!(up.count_requests("GET", "/v2/test/small/manifests/") >= 1);

    let r = http::get(&format!("{}/v2/test/small/manifests/nope", up.url())).await;
    assert_eq!(r.status, 404);
    let dead = format!("http://127.0.0.1:{}/v2/", free_port());
    assert!(http::try_request("GET", &dead, &[], Default::default())
        .await
        .is_err());
}

#[test]
fn containerd_pulls_small_image_from_registry() {
    require_tools();
    let work = tempdir();
    let reg = Registry::start(work.path());
    push(Image::Small, &reg, "test/small:v1");
    let ctd = Containerd::start(work.path());
    let hosts = write_hosts_toml(
        &work.path().join("certs.d"),
        &reg.host(),
        &reg.url(),
        &reg.url(),
    );
    let image = format!("{}/test/small:v1", reg.host());
    let out = ctd.pull(&image, &hosts).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("unpacking linux/amd64"), "{out}");
    assert_eq!(
        ctd.image_digest(&image),
        Some(manifest_digest_in_registry(&reg, "test/small", "v1"))
    );
    assert_eq!(ctd.image_digest("127.0.0.1:1/absent:v1"), None);
    assert!(reg.count_requests("HEAD", "/v2/test/small/manifests/v1") >= 1);
    let missing = format!("{}/test/absent:v1", reg.host());
    assert!(ctd.pull(&missing, &hosts).is_err());
}

/// Drives `Proxy` with a stand-in binary (a script that runs distribution on the config it is
/// given), since the real portcullis is not built by this crate.
#[test]
fn proxy_lifecycle_with_stand_in_binary() {
    require_tools();
    let work = tempdir();
    let bin = work.path().join("fake-portcullis");
    std::fs::write(
        &bin,
        "#!/bin/sh\n# usage: fake-portcullis serve --config FILE\necho \"fake start $*\"\n\
         exec docker-registry serve \"$3\"\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", bin.to_str().unwrap()])
        .status()
        .unwrap();
    // distribution reads the "toml" file as YAML; only the placeholders matter here.
    let config = "version: 0.1\nlog: {level: info}\n\
                  storage: {filesystem: {rootdirectory: \"{DATA}\"}}\nhttp: {addr: \"{LISTEN}\"}\n";
    let pdir = work.path().join("proxy");
    let mut proxy = Proxy::start(&bin, &pdir, config);
    let text = std::fs::read_to_string(&proxy.config).unwrap();
    assert!(text.contains(&proxy.host()) && text.contains(proxy.data_dir.to_str().unwrap()));
    assert!(proxy.log_contents().contains("fake start serve --config"));
    let port = proxy.addr.port();

    proxy.kill9();
    assert!(std::net::TcpStream::connect(proxy.addr).is_err());
    proxy.restart();
    assert_eq!(proxy.addr.port(), port);
    assert_eq!(proxy.log_contents().matches("fake start").count(), 2);
    let status = proxy.terminate();
    assert!(proxy.pid().is_none(), "exited with {status:?}");
    proxy.restart();
    assert!(std::net::TcpStream::connect(proxy.addr).is_ok());
}

#[test]
fn containerd_socket_moves_out_of_a_deep_workdir() {
    require_tools();
    let work = tempdir();
    let deep = work.path().join("a-rather-long-directory-name".repeat(4));
    let ctd = Containerd::start(&deep);
    assert!(
        ctd.socket.to_str().unwrap().starts_with("/tmp/ctd"),
        "{}",
        ctd.socket.display()
    );
    assert!(ctd.dir.starts_with(&deep));
    assert!(ctd.ctr(&["images", "ls"]).is_ok());
    let socket_dir = ctd.socket.parent().unwrap().to_path_buf();
    drop(ctd);
    assert!(!socket_dir.exists());
}
