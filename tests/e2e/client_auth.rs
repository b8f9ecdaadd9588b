//! Client authentication: a users file of hashed secrets, per-user grants, a Basic challenge
//! that real clients answer, and nothing forwarded upstream for an unauthenticated request.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use portcullis_testkit::http::{self, Response};
use portcullis_testkit::{
    push, require_tools, skopeo_copy, tempdir, ConfigBuilder, Image, Proxy, Registry,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const TOKEN: &str = "tok-2f1c9a7e5d3b4c8a9e0f1a2b3c4d5e6f";

fn code(resp: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}

fn hash_secret(secret: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn only_granted_users_pull_and_strangers_never_reach_the_upstream() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    push(Image::Small, &upstream, "other/img:v1");
    let token_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(TOKEN.as_bytes()));
    let users = work.path().join("users");
    std::fs::write(
        &users,
        format!(
            "# name:hash\npuller:{}\nci:sha256:{token_hash}\n",
            hash_secret("correct horse")
        ),
    )
    .unwrap();
    let host = upstream.host();
    let config = ConfigBuilder::pull_through(&host, &upstream.url()).auth(
        &users,
        &[(&["puller", "ci"], &[&format!("{host}/test/**")])],
    );
    let p = Proxy::start(Path::new(BIN), &work.path().join("p"), &config);
    let url = |path: &str| format!("{}{path}", p.url());

    // No credentials: a challenge, and nothing goes upstream.
    let before = upstream.count_requests("GET", "/v2/test/small");
    for path in ["/v2/", "/v2/test/small/manifests/v1"] {
        let resp = http::get(&url(path)).await;
        assert_eq!(
            (resp.status, code(&resp).as_str()),
            (401, "UNAUTHORIZED"),
            "{path}"
        );
        assert_eq!(
            resp.header("www-authenticate"),
            Some("Basic realm=\"portcullis\"")
        );
    }
    let wrong = basic("puller", "wrong");
    let resp = http::request(
        "GET",
        &url("/v2/test/small/manifests/v1"),
        &[("authorization", wrong.as_str())],
    )
    .await;
    assert_eq!(resp.status, 401);
    assert_eq!(upstream.count_requests("GET", "/v2/test/small"), before);

    // A password, a bearer token, and a real client.
    let good = basic("puller", "correct horse");
    let resp = http::request(
        "GET",
        &url("/v2/test/small/manifests/v1"),
        &[("authorization", good.as_str())],
    )
    .await;
    assert_eq!(resp.status, 200);
    let bearer = format!("Bearer {TOKEN}");
    let resp = http::request(
        "GET",
        &url("/v2/test/small/manifests/v1"),
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(resp.status, 200);
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--insecure-policy",
            "--src-tls-verify=false",
            "--src-creds",
            "puller:correct horse",
        ])
        .arg(format!("docker://{}/test/small:v1", p.host()))
        .arg(format!("dir:{}", work.path().join("out").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(skopeo_copy(
        &format!("{}/test/small:v1", p.host()),
        &work.path().join("anon")
    )
    .is_err());

    // Authenticated but not granted.
    let resp = http::request(
        "GET",
        &url("/v2/other/img/manifests/v1"),
        &[("authorization", good.as_str())],
    )
    .await;
    assert_eq!((resp.status, code(&resp).as_str()), (403, "DENIED"));
    let log = p.log_contents();
    assert!(
        !log.contains("correct horse") && !log.contains(TOKEN),
        "no secret in logs"
    );

    // A user removed from the users file loses access without a signal: the file is watched
    // like the configuration (and the credentials verified earlier are forgotten with it).
    std::fs::write(&users, format!("ci:sha256:{token_hash}\n")).unwrap();
    let removed = async {
        for _ in 0..100 {
            let resp = http::request(
                "GET",
                &url("/v2/test/small/manifests/v1"),
                &[("authorization", good.as_str())],
            )
            .await;
            if resp.status == 401 {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        false
    };
    assert!(removed.await, "puller still pulls: {}", p.log_contents());
    let resp = http::request(
        "GET",
        &url("/v2/test/small/manifests/v1"),
        &[("authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(resp.status, 200, "the user left in the file still pulls");
}

#[test]
fn a_malformed_users_file_is_refused_at_load() {
    let work = tempdir();
    let users = work.path().join("users");
    std::fs::write(&users, "nocolon\n").unwrap();
    let text = format!("[auth]\nusers_file = \"{}\"\n", users.display());
    let err = portcullis::Config::from_toml(&text, "t.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 1"), "{err}");
}
