//! The world the summary tests run in: an upstream with a release key, portcullis' own summary
//! key made by the OpenSSL CLI, and the requests and checks every test repeats.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis::config::AttestConfig;
use portcullis_policy::Mode;
use portcullis_testkit::cosign::signature_tag;
use portcullis_testkit::http::{self, Response};
use portcullis_testkit::vsa::openssl_p256_key;
use portcullis_testkit::{
    manifest_digest_in_registry, push, push_signature, require_tools, sha256_hex,
    simple_signing_payload, tempdir, write_cli_config, ConfigBuilder, CosignKey, Image, Proxy,
    Registry, Rule, SigLayer, TestSigstore,
};
use serde_json::Value;

pub(super) const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
pub(super) const VERIFIER: &str = "https://portcullis.example.test/verifier";
pub(super) const VSA: &str = "https://slsa.dev/verification_summary/v1";
pub(super) const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub(super) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const DSSE: &str = "application/vnd.dsse.envelope.v1+json";

pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An upstream, a release key that signs images, and portcullis' own summary key.
pub(super) struct World {
    _dir: tempfile::TempDir,
    pub(super) work: PathBuf,
    pub(super) upstream: Registry,
    pub(super) release: CosignKey,
    pub(super) sigstore: TestSigstore,
    pub(super) attest: AttestConfig,
    /// The summary key's public half, as `openssl pkey -pubout` wrote it.
    pub(super) attest_pub: String,
}

impl World {
    /// With the summary key encrypted under `password` (read from a file), or not.
    pub(super) fn new(password: Option<&str>) -> World {
        require_tools();
        let dir = tempdir();
        let work = dir.path().to_owned();
        let upstream = Registry::start(&work);
        let release = CosignKey::generate();
        release.write_public(&work.join("release.pub"));
        let (key, public) = openssl_p256_key(&work, "portcullis", password);
        let password_file = password.map(|pw| {
            let file = work.join("portcullis.password");
            std::fs::write(&file, format!("{pw}\n")).unwrap();
            file
        });
        World {
            attest: AttestConfig {
                key,
                verifier_id: VERIFIER.into(),
                password_env: None,
                password_file,
            },
            attest_pub: std::fs::read_to_string(public).unwrap(),
            _dir: dir,
            work,
            upstream,
            release,
            sigstore: TestSigstore::new(),
        }
    }

    pub(super) fn host(&self) -> String {
        self.upstream.host()
    }

    pub(super) fn push(&self, image: Image, repo_tag: &str) -> String {
        push(image, &self.upstream, repo_tag);
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        manifest_digest_in_registry(&self.upstream, repo, tag)
    }

    /// Pushes `repo_tag` with a `.sig` by the release key; its digest.
    pub(super) fn push_signed(&self, repo_tag: &str) -> String {
        self.push_signed_image(Image::Small, repo_tag)
    }

    pub(super) fn push_signed_image(&self, image: Image, repo_tag: &str) -> String {
        let digest = self.push(image, repo_tag);
        let repo = repo_tag.split_once(':').unwrap().0;
        let payload = simple_signing_payload(&format!("{}/{repo}", self.host()), &digest);
        let layer = SigLayer {
            signature_b64: self.release.sign(&payload),
            payload,
            ..SigLayer::default()
        };
        push_signature(&self.upstream, repo, &digest, &[layer]);
        digest
    }

    pub(super) fn config(&self, attest: bool) -> ConfigBuilder {
        let host = self.host();
        let rule = |name: &str| Rule::new(name, &[&format!("{host}/{name}/**")]);
        let attest = attest.then(|| self.attest.clone());
        ConfigBuilder::new()
            .default_upstream(&host, &self.upstream.url())
            .trust_key("release", &self.work.join("release.pub"))
            .rule(rule("keyed").key("release"))
            .rule(rule("warned").mode(Mode::Warn).key("release"))
            .rule(rule("audited").mode(Mode::Audit).key("release"))
            .edit(|c| c.attest = attest)
    }

    pub(super) fn proxy(&self, sub: &str, attest: bool) -> Proxy {
        Proxy::start(Path::new(BIN), &self.work.join(sub), &self.config(attest))
    }
}

/// The fingerprint of the policy `proxy` runs, read from its own config file by portcullis'
/// config loader (what verdicts are keyed by).
pub(super) fn fingerprint(proxy: &Proxy) -> String {
    let config = portcullis::Config::from_file(&proxy.config).unwrap();
    config.policy_engine().unwrap().fingerprint().to_owned()
}

pub(super) fn json(resp: &Response) -> Value {
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&resp.body)))
}

pub(super) async fn get_ok(url: &str) -> Response {
    let resp = http::get(url).await;
    assert_eq!(
        resp.status,
        200,
        "GET {url}: {}",
        String::from_utf8_lossy(&resp.body)
    );
    resp
}

/// A manifest or blob as a client checks it: 200, and the bytes hash to `digest`.
pub(super) async fn fetch(base: &str, repo: &str, kind: &str, digest: &str) -> Response {
    let resp = get_ok(&format!("{base}/v2/{repo}/{kind}/{digest}")).await;
    assert_eq!(sha256_hex(&resp.body), digest, "{kind} {digest}");
    resp
}

/// The referrers of `digest` that are portcullis summaries (bundle artifacts of the VSA type).
pub(super) async fn summaries(base: &str, repo: &str, digest: &str) -> Vec<Value> {
    let index = json(&get_ok(&format!("{base}/v2/{repo}/referrers/{digest}")).await);
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["artifactType"] == BUNDLE_V03
                && r["annotations"]["dev.sigstore.bundle.predicateType"] == VSA
        })
        .cloned()
        .collect()
}

/// `GET …/manifests/sha256-<hex>.att`.
pub(super) async fn att(base: &str, repo: &str, digest: &str) -> Response {
    let tag = signature_tag(digest).replace(".sig", ".att");
    http::request(
        "GET",
        &format!("{base}/v2/{repo}/manifests/{tag}"),
        &[("Accept", OCI_MANIFEST)],
    )
    .await
}

/// What every summary of `name@digest` must say.
pub(super) fn check_statement(
    statement: &[u8],
    name: &str,
    digest: &str,
    fingerprint: &str,
) -> Value {
    let s: Value = serde_json::from_slice(statement).unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert_eq!(s["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(s["subject"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["subject"][0]["name"], name);
    assert_eq!(s["subject"][0]["digest"]["sha256"], hex);
    assert_eq!(s["predicateType"], VSA);
    let p = &s["predicate"];
    assert_eq!(p["verifier"]["id"], VERIFIER);
    assert!(p["verifier"]["version"]["portcullis"].is_string(), "{p}");
    assert_eq!(p["resourceUri"], format!("oci://{name}@{digest}"));
    assert_eq!(p["policy"]["uri"], "portcullis:policy");
    assert_eq!(p["policy"]["digest"]["sha256"], fingerprint);
    assert_eq!(p["verificationResult"], "PASSED");
    assert_eq!(
        p["verifiedLevels"],
        serde_json::json!(["SLSA_BUILD_LEVEL_0"])
    );
    assert_eq!(p["slsaVersion"], "1.0");
    let verified = p["timeVerified"].as_str().unwrap();
    let at = humantime::parse_rfc3339(verified).unwrap();
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    assert!(age < Duration::from_secs(3600), "timeVerified {verified}");
    s
}

/// `check-config` on a config whose `[attest]` is `attest`: its exit status and stderr.
pub(super) fn check_config(w: &World, attest: AttestConfig) -> (bool, String) {
    let path = w.work.join("check.toml");
    let data = w.work.join("check-data");
    write_cli_config(
        &path,
        &w.config(false).edit(|c| c.attest = Some(attest)),
        &data,
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
