//! The verification gate, end to end and offline: real cosign signature manifests (keys and a
//! test Fulcio CA and Rekor log minted at test time) pushed beside images in the real registry,
//! pulled through portcullis by skopeo and containerd, and every denial's message checked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_policy::Mode;
use portcullis_testkit::cosign::{
    push_signature, simple_signing_payload, CosignKey, SigLayer, TestSigstore,
};
use portcullis_testkit::http::{self, Response};
use portcullis_testkit::{
    manifest_digest_in_registry, push, require_tools, skopeo_copy, skopeo_copy_all, tempdir,
    write_cli_config, write_hosts_toml, ConfigBuilder, Containerd, Image, Proxy, Registry, Rule,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const ISSUER: &str = "https://issuer.test";
const BUILDER: &str = "builder@example.test";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn code_and_message(resp: &Response) -> (u16, String, String) {
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    (
        resp.status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned(),
        v["errors"][0]["message"].as_str().unwrap_or("").to_owned(),
    )
}

/// An upstream with images and signatures in every state the policy must tell apart.
struct World {
    _dir: tempfile::TempDir,
    work: PathBuf,
    upstream: Registry,
    release: CosignKey,
    sigstore: TestSigstore,
}

impl World {
    fn new() -> World {
        require_tools();
        let dir = tempdir();
        let work = dir.path().to_owned();
        let upstream = Registry::start(&work);
        let release = CosignKey::generate();
        release.write_public(&work.join("release.pub"));
        let sigstore = TestSigstore::new();
        std::fs::write(work.join("trusted_root.json"), sigstore.trusted_root_json()).unwrap();
        World {
            _dir: dir,
            work,
            upstream,
            release,
            sigstore,
        }
    }

    fn push(&self, image: Image, repo_tag: &str) -> String {
        push(image, &self.upstream, repo_tag);
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        manifest_digest_in_registry(&self.upstream, repo, tag)
    }

    fn payload(&self, repo: &str, digest: &str) -> Vec<u8> {
        simple_signing_payload(&format!("{}/{repo}", self.upstream.host()), digest)
    }

    fn sign_with(&self, key: &CosignKey, repo: &str, digest: &str) {
        let payload = self.payload(repo, digest);
        let layer = SigLayer {
            signature_b64: key.sign(&payload),
            payload,
            ..SigLayer::default()
        };
        push_signature(&self.upstream, repo, digest, &[layer]);
    }

    /// A keyless signature: a leaf for `identity` valid over `window`, logged at `logged`.
    fn sign_keyless(
        &self,
        repo: &str,
        digest: &str,
        identity: &str,
        window: (i64, i64),
        logged: i64,
    ) -> SigLayer {
        let payload = self.payload(repo, digest);
        let leaf = self
            .sigstore
            .issue_leaf(identity, ISSUER, window.0, window.1);
        let signature_b64 = leaf.sign(&payload);
        let bundle = self
            .sigstore
            .set_bundle(&payload, &signature_b64, &leaf.cert_pem, logged);
        SigLayer {
            payload,
            signature_b64,
            certificate_pem: Some(leaf.cert_pem.clone()),
            chain_pem: Some(self.sigstore.ca_pem()),
            bundle_json: Some(bundle),
        }
    }

    fn config(&self, key_path: &Path) -> ConfigBuilder {
        let host = self.upstream.host();
        let rule = |name: &str| Rule::new(name, &[&format!("{host}/{name}/**")]);
        ConfigBuilder::new()
            .default_upstream(&host, &self.upstream.url())
            .trust_key("release", key_path)
            .trust_root("test", &self.work.join("trusted_root.json"))
            .rule(rule("keyed").key("release"))
            .rule(rule("keyless").keyless("test", ISSUER, BUILDER))
            .rule(rule("warned").mode(Mode::Warn).key("release"))
            .rule(rule("audited").mode(Mode::Audit).key("release"))
    }

    fn proxy(&self, sub: &str) -> Proxy {
        Proxy::start(
            Path::new(BIN),
            &self.work.join(sub),
            &self.config(&self.work.join("release.pub")),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keyed_signatures_decide_what_is_served() {
    let w = World::new();
    let rogue = CosignKey::generate();
    let signed = w.push(Image::Small, "keyed/signed:v1");
    w.sign_with(&w.release, "keyed/signed", &signed);
    w.push(Image::Small, "keyed/unsigned:v1");
    let by_rogue = w.push(Image::DockerV2s2, "keyed/rogue:v1");
    w.sign_with(&rogue, "keyed/rogue", &by_rogue);
    // A valid signature for another image, copied next to this one.
    let copied = w.push(Image::DockerV2s2, "keyed/copied:v1");
    let foreign = w.payload("keyed/signed", &signed);
    push_signature(
        &w.upstream,
        "keyed/copied",
        &copied,
        &[SigLayer {
            signature_b64: w.release.sign(&foreign),
            payload: foreign,
            ..SigLayer::default()
        }],
    );
    w.push(Image::Small, "other/thing:v1");
    let p = w.proxy("p");
    let host = p.host();

    skopeo_copy(
        &format!("{host}/keyed/signed:v1"),
        &w.work.join("out/signed"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let ctd = Containerd::start(&w.work.join("ctd"));
    // containerd falls back to `server` when the mirror refuses: make that fallback a dead end,
    // as a deployment that must not be bypassed does.
    let hosts = write_hosts_toml(
        &w.work.join("certs.d"),
        &w.upstream.host(),
        "http://127.0.0.1:9",
        &p.url(),
    );
    ctd.pull(&format!("{}/keyed/signed:v1", w.upstream.host()), &hosts)
        .unwrap_or_else(|e| panic!("containerd: {e}\n{}", p.log_contents()));
    let err = ctd
        .pull(&format!("{}/keyed/unsigned:v1", w.upstream.host()), &hosts)
        .unwrap_err();
    assert!(
        err.contains("403") || err.to_lowercase().contains("denied") || err.contains("forbidden"),
        "{err}"
    );
    assert!(skopeo_copy(
        &format!("{host}/keyed/unsigned:v1"),
        &w.work.join("out/unsigned")
    )
    .is_err());

    for (repo, needles) in [
        (
            "keyed/unsigned",
            vec![
                "rule \"keyed\" (enforce) failed",
                "key \"release\"",
                "no signature found",
            ],
        ),
        ("keyed/rogue", vec!["signature by an unknown key"]),
        (
            "keyed/copied",
            vec!["digest mismatch in the payload", &signed],
        ),
        (
            "other/thing",
            vec![
                "matches no [[rule]]",
                "[policy] default = \"deny\"",
                "[[rule.authority]]",
            ],
        ),
    ] {
        let resp = http::get(&format!("{}/v2/{repo}/manifests/v1", p.url())).await;
        let (status, code, message) = code_and_message(&resp);
        assert_eq!(
            (status, code.as_str()),
            (403, "DENIED"),
            "{repo}: {message}"
        );
        for n in needles {
            assert!(message.contains(n), "{repo}: {message:?} lacks {n:?}");
        }
    }

    // Blob gating: a layer of the unsigned image, asked for directly.
    let m: serde_json::Value = serde_json::from_slice(
        &http::get(&format!("{}/v2/keyed/signed/manifests/v1", p.url()))
            .await
            .body,
    )
    .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let resp = http::get(&format!("{}/v2/keyed/unsigned/blobs/{layer}", p.url())).await;
    let (status, code, message) = code_and_message(&resp);
    assert_eq!((status, code.as_str()), (403, "DENIED"));
    assert!(
        message.contains("not referenced by any manifest"),
        "{message}"
    );
    assert_eq!(
        http::get(&format!("{}/v2/keyed/signed/blobs/{layer}", p.url()))
            .await
            .status,
        200
    );

    // Signature artifacts are served as verification material (cosign can read them)...
    let sig_tag = format!("sha256-{}.sig", signed.trim_start_matches("sha256:"));
    let sig = http::get(&format!("{}/v2/keyed/signed/manifests/{sig_tag}", p.url())).await;
    assert_eq!(sig.status, 200);
    // ...but an image pushed under a signature-shaped tag is an image, and is gated.
    let disguised = format!("sha256-{}.sig", "e".repeat(64));
    w.push(Image::DockerV2s2, &format!("keyed/signed:{disguised}"));
    let resp = http::get(&format!(
        "{}/v2/keyed/signed/manifests/{disguised}",
        p.url()
    ))
    .await;
    let (status, code, message) = code_and_message(&resp);
    assert_eq!((status, code.as_str()), (403, "DENIED"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keyless_signatures_check_set_chain_time_and_identity() {
    let w = World::new();
    let t = now();
    let window = (t - 600, t + 600);
    let cases = [
        ("keyless/good", BUILDER, window, t, None),
        (
            "keyless/wrongid",
            "mallory@example.test",
            window,
            t,
            Some("identity mismatch"),
        ),
        (
            "keyless/expired",
            BUILDER,
            (t - 7200, t - 3600),
            t,
            Some("certificate outside its validity at log time"),
        ),
    ];
    let mut digests = Vec::new();
    for (i, (repo, identity, win, logged, _)) in cases.iter().enumerate() {
        let image = if i % 2 == 0 {
            Image::Small
        } else {
            Image::DockerV2s2
        };
        let d = w.push(image, &format!("{repo}:v1"));
        let layer = w.sign_keyless(repo, &d, identity, *win, *logged);
        push_signature(&w.upstream, repo, &d, &[layer]);
        digests.push(d);
    }
    let d = w.push(Image::Small, "keyless/tampered:v1");
    let mut layer = w.sign_keyless("keyless/tampered", &d, BUILDER, window, t);
    let bundle = layer.bundle_json.take().unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&bundle).unwrap();
    v["Payload"]["integratedTime"] = (t - 1).into();
    layer.bundle_json = Some(v.to_string());
    push_signature(&w.upstream, "keyless/tampered", &d, &[layer]);
    let d = w.push(Image::Small, "keyless/noset:v1");
    let mut layer = w.sign_keyless("keyless/noset", &d, BUILDER, (t - 7200, t - 3600), t);
    layer.bundle_json = None;
    push_signature(&w.upstream, "keyless/noset", &d, &[layer]);

    let p = w.proxy("p");
    skopeo_copy(
        &format!("{}/keyless/good:v1", p.host()),
        &w.work.join("out/good"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    for (repo, needle) in [
        ("keyless/wrongid", "identity mismatch"),
        (
            "keyless/expired",
            "certificate outside its validity at log time",
        ),
        ("keyless/tampered", "SET invalid"),
        ("keyless/noset", "no Rekor bundle"),
    ] {
        let resp = http::get(&format!("{}/v2/{repo}/manifests/v1", p.url())).await;
        let (status, code, message) = code_and_message(&resp);
        assert_eq!(
            (status, code.as_str()),
            (403, "DENIED"),
            "{repo}: {message}"
        );
        assert!(
            message.contains(needle),
            "{repo}: {message:?} lacks {needle:?}"
        );
        assert!(message.contains("keyless \"test\""), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_index_vouches_for_its_children_only_through_it() {
    let w = World::new();
    let d = w.push(Image::Multi, "keyed/multi:v1");
    w.sign_with(&w.release, "keyed/multi", &d);
    let p = w.proxy("p");
    skopeo_copy_all(
        &format!("{}/keyed/multi:v1", p.host()),
        &w.work.join("out/multi"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));

    let index: serde_json::Value = serde_json::from_slice(
        &http::get(&format!("{}/v2/keyed/multi/manifests/v1", p.url()))
            .await
            .body,
    )
    .unwrap();
    let child = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(
        http::get(&format!("{}/v2/keyed/multi/manifests/{child}", p.url()))
            .await
            .status,
        200
    );
    // A fresh instance has no verified parent: the child needs its own signature.
    let fresh = w.proxy("fresh");
    let resp = http::get(&format!("{}/v2/keyed/multi/manifests/{child}", fresh.url())).await;
    let (status, _, message) = code_and_message(&resp);
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("no signature found"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn warn_and_audit_serve_and_say_so() {
    let w = World::new();
    w.push(Image::Small, "warned/app:v1");
    w.push(Image::Small, "audited/app:v1");
    let p = w.proxy("p");
    for repo in ["warned/app", "audited/app"] {
        let resp = http::get(&format!("{}/v2/{repo}/manifests/v1", p.url())).await;
        assert_eq!(resp.status, 200, "{repo}");
    }
    let log = p.log_contents();
    assert!(
        log.contains("served unverified") && log.contains("warned/app"),
        "{log}"
    );
    assert!(
        log.contains(" audit ") || log.contains("audit name="),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn verdicts_are_cached_and_a_policy_change_invalidates_them() {
    let mut w = World::new();
    let d = w.push(Image::Small, "keyed/app:v1");
    w.sign_with(&w.release, "keyed/app", &d);
    let mut p = w.proxy("p");
    let url = format!("{}/v2/keyed/app/manifests/{d}", p.url());
    assert_eq!(http::get(&url).await.status, 200);
    let sig_gets = w.upstream.count_requests("GET", ".sig");

    // A cached verdict serves without any upstream traffic.
    w.upstream.stop();
    assert_eq!(http::get(&url).await.status, 200, "{}", p.log_contents());
    w.upstream.restart();
    assert_eq!(http::get(&url).await.status, 200);
    assert_eq!(
        w.upstream.count_requests("GET", ".sig"),
        sig_gets,
        "verdict reused"
    );

    // The same data dir under a policy that trusts another key: the old verdict is not reused.
    let other = CosignKey::generate();
    other.write_public(&w.work.join("other.pub"));
    p.terminate();
    p.write_config(&w.config(&w.work.join("other.pub")));
    p.restart();
    let resp = http::get(&url).await;
    let (status, _, message) = code_and_message(&resp);
    assert_eq!(status, 403, "{message}");
    assert!(message.contains("signature by an unknown key"), "{message}");
    // The old policy's verdict and gate records are collected, not kept forever.
    let log = p.wait_for_log("collected the records of policies no longer in force");
    assert!(
        log.contains("collected the records of policies no longer in force"),
        "{log}"
    );
}

#[test]
fn verify_prints_the_verdict_and_exits_by_it() {
    let w = World::new();
    let d = w.push(Image::Small, "keyed/app:v1");
    w.sign_with(&w.release, "keyed/app", &d);
    w.push(Image::Small, "keyed/bare:v1");
    let config = w.work.join("verify.toml");
    write_cli_config(
        &config,
        &w.config(&w.work.join("release.pub")),
        &w.work.join("unused"),
    );
    let run = |image: &str, json: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["verify", image, "--config"]).arg(&config);
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let host = w.upstream.host();
    let ok = run(&format!("{host}/keyed/app:v1"), false);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        text.contains("verified") && text.contains("signed with key \"release\""),
        "{text}"
    );
    let denied = run(&format!("{host}/keyed/bare:v1"), true);
    assert_eq!(denied.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(
        v["rules"][0]["authorities"][0]["detail"],
        "no signature found"
    );
}
