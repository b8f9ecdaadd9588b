//! Private upstreams: the real registry behind basic auth (htpasswd) and behind TLS signed by a
//! CA made at test time, trusted through `ca_file`.

use std::path::Path;
use std::process::Command;

use portcullis_testkit::http::{self, Response};
use portcullis_testkit::{push, require_tools, tempdir, ConfigBuilder, Image, Proxy, Registry};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

fn code(resp: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    v["errors"][0]["code"].as_str().unwrap().to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_upstream_with_credentials_from_files() {
    require_tools();
    let work = tempdir();
    let mut upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    let hash = run(Command::new("python3").args([
        "-W",
        "ignore",
        "-c",
        "import crypt; print(crypt.crypt('pull-pass', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
    ]));
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("puller:{}", hash.trim())).unwrap();
    upstream.secure(Some(&htpasswd), None);
    std::fs::write(work.path().join("user"), "puller\n").unwrap();
    std::fs::write(work.path().join("pass"), "pull-pass\n").unwrap();
    let config = ConfigBuilder::pull_through(&upstream.host(), &upstream.url()).with_upstream(
        &upstream.host(),
        |u| {
            u.username_file = Some(work.path().join("user"));
            u.password_file = Some(work.path().join("pass"));
        },
    );
    let p = Proxy::start(Path::new(BIN), &work.path().join("p"), &config);
    let m = http::get(&format!("{}/v2/test/small/manifests/v1", p.url())).await;
    assert_eq!(m.status, 200, "{}", p.log_contents());
    assert!(!p.log_contents().contains("pull-pass"));

    let anonymous = Proxy::start(
        Path::new(BIN),
        &work.path().join("anon"),
        &ConfigBuilder::pull_through(&upstream.host(), &upstream.url()),
    );
    let resp = http::get(&format!("{}/v2/test/small/manifests/v1", anonymous.url())).await;
    assert_eq!((resp.status, code(&resp).as_str()), (403, "DENIED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_upstream_trusted_through_ca_file() {
    require_tools();
    let work = tempdir();
    let dir = work.path();
    let mut upstream = Registry::start(dir);
    push(Image::Small, &upstream, "test/small:v1");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509"])
        .args(ec)
        .args([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=portcullis test CA",
        ]));
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req"])
        .args(ec)
        .args([
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]));
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]));
    upstream.secure(None, Some((&dir.join("srv.pem"), &dir.join("srv.key"))));
    assert!(upstream.url().starts_with("https://"));

    let with_ca = ConfigBuilder::pull_through(&upstream.host(), &upstream.url())
        .with_upstream(&upstream.host(), |u| u.ca_file = Some(dir.join("ca.pem")));
    let p = Proxy::start(Path::new(BIN), &dir.join("p"), &with_ca);
    let m = http::get(&format!("{}/v2/test/small/manifests/v1", p.url())).await;
    assert_eq!(m.status, 200, "{}", p.log_contents());

    let without = Proxy::start(
        Path::new(BIN),
        &dir.join("untrusted"),
        &ConfigBuilder::pull_through(&upstream.host(), &upstream.url()),
    );
    let resp = http::get(&format!("{}/v2/test/small/manifests/v1", without.url())).await;
    assert_eq!((resp.status, code(&resp).as_str()), (503, "UNAVAILABLE"));
    assert!(
        without
            .log_contents()
            .to_lowercase()
            .contains("certificate"),
        "{}",
        without.log_contents()
    );
}
