//! Cosign v3 bundles, attestations, provenance and base images, end to end and offline: Sigstore
//! bundles (test Fulcio CA, test Rekor v1 and v2 logs with inclusion proofs and checkpoints, a
//! test TSA) pushed to the real registry as referrers (distribution 2.8: the `sha256-<hex>` tag
//! schema), legacy `.att` DSSE attestations, and images pulled through portcullis by skopeo.
//! Every denial's message is checked for the reason.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_policy::AuthorityConfig;
use portcullis_testkit::bundle::BUNDLE_V03_MEDIA_TYPE;
use portcullis_testkit::http::{self, Response};
use portcullis_testkit::intoto::{
    cosign_sign_v1_statement, slsa_v02_predicate, slsa_v1_predicate, statement,
};
use portcullis_testkit::{
    keyless_authority, manifest_digest_in_registry, push, push_attestation, push_referrer,
    push_signature, require_tools, simple_signing_payload, skopeo_copy, tempdir, write_cli_config,
    ConfigBuilder, CosignKey, Image, Leaf, LogEntry, Proxy, Registry, Rule, SigLayer, Signer,
    Tamper, TestSigstore,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const ISSUER: &str = "https://issuer.test";
const BUILDER: &str = "builder@example.test";
const SPIFFE: &str = "spiffe://acme.test/ns/ci/sa/builder";
const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
const SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";
const GH_BUILDER: &str =
    "https://github.com/acme/builder/.github/workflows/build.yml@refs/heads/main";
const TEKTON: &str = "https://tekton.dev/chains/v2";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct World {
    _dir: tempfile::TempDir,
    work: PathBuf,
    upstream: Registry,
    release: CosignKey,
    sigstore: TestSigstore,
    leaf: Leaf,
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
        let leaf = sigstore.issue_leaf(BUILDER, ISSUER, now() - 600, now() + 600);
        World {
            _dir: dir,
            work,
            upstream,
            release,
            sigstore,
            leaf,
        }
    }

    fn push(&self, image: Image, repo_tag: &str) -> String {
        push(image, &self.upstream, repo_tag);
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        manifest_digest_in_registry(&self.upstream, repo, tag)
    }

    /// Pushes a bundle as a referrer of `digest`, as cosign v3 does.
    fn refer(&self, repo: &str, digest: &str, bundle: &str) {
        push_referrer(
            &self.upstream,
            repo,
            digest,
            BUNDLE_V03_MEDIA_TYPE,
            BUNDLE_V03_MEDIA_TYPE,
            bundle.as_bytes(),
            &[],
        );
    }

    /// cosign v3 `sign`, keyless: a DSSE sign/v1 bundle in the referrers.
    fn sign_v3(&self, repo: &str, digest: &str) {
        let b = self
            .sigstore
            .dsse_bundle(
                Signer::Keyless(&self.leaf),
                &cosign_sign_v1_statement(digest),
            )
            .build();
        self.refer(repo, digest, &b);
    }

    fn slsa_v1(&self, repo: &str, digest: &str, builder: &str) -> Vec<u8> {
        let predicate = slsa_v1_predicate(
            builder,
            "https://github.com/acme/app",
            "refs/heads/main",
            COMMIT,
            ".github/workflows/build.yml",
        );
        statement(repo, digest, SLSA_V1, &predicate)
    }

    fn config(&self) -> ConfigBuilder {
        let host = self.upstream.host();
        let rule = |name: &str| Rule::new(name, &[&format!("{host}/{name}/**")]);
        let ci = AuthorityConfig {
            name: Some("ci".into()),
            ..keyless_authority("test", ISSUER, BUILDER)
        };
        let gh_builder = format!("predicate.runDetails.builder.id == \"{GH_BUILDER}\"");
        let tekton = format!("predicate.builder.id == \"{TEKTON}\"");
        ConfigBuilder::new()
            .default_upstream(&host, &self.upstream.url())
            .trust_key("release", &self.work.join("release.pub"))
            .trust_root("test", &self.work.join("trusted_root.json"))
            .rule(rule("bundled").keyless("test", ISSUER, BUILDER))
            .rule(rule("attested").authority(ci).attestation(
                SLSA_V1,
                &["ci"],
                &[
                    &gh_builder,
                    "predicate.buildDefinition.externalParameters.workflow.repository\
                     .startsWith(\"https://github.com/acme/\")",
                ],
            ))
            .rule(
                rule("tekton")
                    .key("release")
                    .attestation(SLSA_V02, &[], &[&tekton]),
            )
            .rule(rule("workload").keyless("test", ISSUER, SPIFFE))
            .rule(rule("app").verify_base().key("release"))
            .rule(rule("base").key("release"))
    }

    fn proxy(&self) -> Proxy {
        Proxy::start(
            std::path::Path::new(BIN),
            &self.work.join("p"),
            &self.config(),
        )
    }

    /// `portcullis verify`'s report on `image`, and whether it exited 0.
    fn verify(&self, image: &str) -> (bool, String) {
        let config = self.work.join("verify.toml");
        write_cli_config(&config, &self.config(), &self.work.join("verify-data"));
        let out = Command::new(BIN)
            .args(["verify", image, "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

fn denial(resp: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    assert_eq!(
        (resp.status, v["errors"][0]["code"].as_str()),
        (403, Some("DENIED")),
        "{v}"
    );
    v["errors"][0]["message"].as_str().unwrap_or("").to_owned()
}

async fn expect_denied(p: &Proxy, repo: &str, needles: &[&str]) {
    let resp = http::get(&format!("{}/v2/{repo}/manifests/v1", p.url())).await;
    let message = denial(&resp);
    for n in needles {
        assert!(message.contains(n), "{repo}: {message:?} lacks {n:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cosign_v3_bundles_in_the_referrers_are_verified() {
    let w = World::new();
    let leaf = Signer::Keyless(&w.leaf);
    // cosign v3 sign: DSSE sign/v1 with a Rekor v1 entry (SET, inclusion proof, checkpoint).
    let dsse = w.push(Image::Small, "bundled/dsse:v1");
    w.sign_v3("bundled/dsse", &dsse);
    // A message signature over the manifest, Rekor v2 (no SET) with a TSA timestamp.
    let v2 = w.push(Image::DockerV2s2, "bundled/rekor-v2:v1");
    let b = w
        .sigstore
        .message_bundle(leaf, &v2)
        .log_entry(LogEntry::RekorV2)
        .with_timestamp()
        .build();
    w.refer("bundled/rekor-v2", &v2, &b);

    // Known-bad bundles, each on its own image.
    let bad = |repo: &str, image: Image, tamper: Option<Tamper>| {
        let d = w.push(image, &format!("{repo}:v1"));
        let mut builder = w.sigstore.dsse_bundle(leaf, &cosign_sign_v1_statement(&d));
        if let Some(t) = tamper {
            builder = builder.tamper(t);
        }
        w.refer(repo, &d, &builder.build());
        d
    };
    bad("bundled/bad-proof", Image::Small, Some(Tamper::ProofHash));
    bad(
        "bundled/bad-checkpoint",
        Image::Small,
        Some(Tamper::ProofRoot),
    );
    bad("bundled/bad-set", Image::Small, Some(Tamper::SetTime));
    bad(
        "bundled/other-entry",
        Image::Small,
        Some(Tamper::OtherEntry),
    );
    bad(
        "bundled/dsse-altered",
        Image::Small,
        Some(Tamper::DssePayload),
    );
    // A certificate that had expired by the TSA's time (Rekor v2: the TSA is the only clock).
    let expired = w.push(Image::Small, "bundled/expired:v1");
    let old = w
        .sigstore
        .issue_leaf(BUILDER, ISSUER, now() - 7200, now() - 3600);
    let b = w
        .sigstore
        .message_bundle(Signer::Keyless(&old), &expired)
        .log_entry(LogEntry::RekorV2)
        .with_timestamp_at(now() - 60)
        .build();
    w.refer("bundled/expired", &expired, &b);
    // A bundle signing another image, referring to this one.
    let copied = w.push(Image::DockerV2s2, "bundled/copied:v1");
    let b = w
        .sigstore
        .dsse_bundle(leaf, &cosign_sign_v1_statement(&dsse))
        .build();
    w.refer("bundled/copied", &copied, &b);

    let p = w.proxy();
    let host = p.host();
    for repo in ["bundled/dsse", "bundled/rekor-v2"] {
        skopeo_copy(&format!("{host}/{repo}:v1"), &w.work.join("out").join(repo))
            .unwrap_or_else(|e| panic!("{repo}: {e}\n{}", p.log_contents()));
    }
    // The referrers API answers from the tag schema, and the bundle artifact is servable.
    let resp = http::get(&format!("{}/v2/bundled/dsse/referrers/{dsse}", p.url())).await;
    assert_eq!(resp.status, 200);
    let index: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(index["manifests"][0]["artifactType"], BUNDLE_V03_MEDIA_TYPE);

    for (repo, needle) in [
        ("bundled/bad-proof", "inclusion proof"),
        ("bundled/bad-checkpoint", "checkpoint"),
        ("bundled/bad-set", "inclusion promise"),
        ("bundled/other-entry", "log entry does not match"),
        ("bundled/dsse-altered", "DSSE signature verification failed"),
        ("bundled/expired", "expired"),
        ("bundled/copied", "does not match any subject"),
    ] {
        expect_denied(&p, repo, &["rule \"bundled\" (enforce) failed", needle]).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attestations_must_meet_their_conditions() {
    let w = World::new();
    let leaf = Signer::Keyless(&w.leaf);
    let attest = |repo: &str, d: &str, stmt: &[u8]| {
        let b = w.sigstore.dsse_bundle(leaf, stmt).build();
        w.refer(repo, d, &b);
    };
    let good = w.push(Image::Small, "attested/good:v1");
    w.sign_v3("attested/good", &good);
    attest(
        "attested/good",
        &good,
        &w.slsa_v1("attested/good", &good, GH_BUILDER),
    );

    let wrong = w.push(Image::Small, "attested/wrong-builder:v1");
    w.sign_v3("attested/wrong-builder", &wrong);
    let evil = "https://github.com/evil/builder/.github/workflows/x.yml@refs/heads/main";
    attest(
        "attested/wrong-builder",
        &wrong,
        &w.slsa_v1("x", &wrong, evil),
    );

    let missing = w.push(Image::Small, "attested/unattested:v1");
    w.sign_v3("attested/unattested", &missing);

    let mismatch = w.push(Image::DockerV2s2, "attested/mismatch:v1");
    w.sign_v3("attested/mismatch", &mismatch);
    attest(
        "attested/mismatch",
        &mismatch,
        &w.slsa_v1("x", &good, GH_BUILDER),
    );

    // Legacy `.att`: a keyed SLSA v0.2 attestation from Tekton Chains.
    let tekton = w.push(Image::Small, "tekton/app:v1");
    let payload = simple_signing_payload(&format!("{}/tekton/app", w.upstream.host()), &tekton);
    let sig = SigLayer {
        signature_b64: w.release.sign(&payload),
        payload,
        ..SigLayer::default()
    };
    push_signature(&w.upstream, "tekton/app", &tekton, &[sig]);
    let v02 = |d: &str| {
        statement(
            "tekton/app",
            d,
            SLSA_V02,
            &slsa_v02_predicate(
                TEKTON,
                "tekton.dev/v1/PipelineRun",
                "git+https://github.com/acme/app",
                COMMIT,
                "build",
            ),
        )
    };
    let att = w
        .sigstore
        .attestation_layer(Signer::Key(&w.release), &v02(&tekton), now());
    push_attestation(&w.upstream, "tekton/app", &tekton, &[att]);
    // The same, signed by a key nobody trusts.
    let rogue_key = CosignKey::generate();
    let rogue = w.push(Image::DockerV2s2, "tekton/rogue:v1");
    let payload = simple_signing_payload(&format!("{}/tekton/rogue", w.upstream.host()), &rogue);
    push_signature(
        &w.upstream,
        "tekton/rogue",
        &rogue,
        &[SigLayer {
            signature_b64: w.release.sign(&payload),
            payload,
            ..SigLayer::default()
        }],
    );
    let att = w
        .sigstore
        .attestation_layer(Signer::Key(&rogue_key), &v02(&rogue), now());
    push_attestation(&w.upstream, "tekton/rogue", &rogue, &[att]);

    let p = w.proxy();
    let host = p.host();
    for repo in ["attested/good", "tekton/app"] {
        skopeo_copy(&format!("{host}/{repo}:v1"), &w.work.join("out").join(repo))
            .unwrap_or_else(|e| panic!("{repo}: {e}\n{}", p.log_contents()));
    }
    expect_denied(
        &p,
        "attested/wrong-builder",
        &[
            "attestation https://slsa.dev/provenance/v1 not met",
            "is false",
            "runDetails.builder.id",
        ],
    )
    .await;
    expect_denied(
        &p,
        "attested/unattested",
        &["no https://slsa.dev/provenance/v1 attestation"],
    )
    .await;
    expect_denied(&p, "attested/mismatch", &["subject"]).await;
    expect_denied(
        &p,
        "tekton/rogue",
        &["attestation signed by an unknown key"],
    )
    .await;

    // `portcullis verify` tells the whole story.
    let (ok, report) = w.verify(&format!("{}/attested/good:v1", w.upstream.host()));
    assert!(ok, "{report}");
    for needle in [
        "ALLOW",
        "signed by:",
        BUILDER,
        "SLSA provenance (https://slsa.dev/provenance/v1)",
        &format!("builder: {GH_BUILDER}"),
        "source: https://github.com/acme/app",
        &format!("commit: {COMMIT}"),
    ] {
        assert!(report.contains(needle), "{report:?} lacks {needle:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn spiffe_identities_and_base_images() {
    let w = World::new();
    // A workload signing with its SPIFFE ID, and one with another ID.
    let workload = w
        .sigstore
        .issue_leaf(SPIFFE, ISSUER, now() - 600, now() + 600);
    let other = w.sigstore.issue_leaf(
        "spiffe://acme.test/ns/dev/sa/laptop",
        ISSUER,
        now() - 600,
        now() + 600,
    );
    for (repo, leaf) in [("workload/ok", &workload), ("workload/other", &other)] {
        let d = w.push(Image::Small, &format!("{repo}:v1"));
        let b = w
            .sigstore
            .dsse_bundle(Signer::Keyless(leaf), &cosign_sign_v1_statement(&d))
            .build();
        w.refer(repo, &d, &b);
    }

    // verify_base: images built on a signed and on an unsigned base.
    let sign = |repo: &str, d: &str| {
        let payload = simple_signing_payload(&format!("{}/{repo}", w.upstream.host()), d);
        let layer = SigLayer {
            signature_b64: w.release.sign(&payload),
            payload,
            ..SigLayer::default()
        };
        push_signature(&w.upstream, repo, d, &[layer]);
    };
    let signed_base = w.push(Image::Small, "base/signed:v1");
    sign("base/signed", &signed_base);
    let unsigned_base = w.push(Image::DockerV2s2, "base/unsigned:v1");
    let host = w.upstream.host();
    for (repo, base, base_digest) in [
        ("app/on-signed", "base/signed", &signed_base),
        ("app/on-unsigned", "base/unsigned", &unsigned_base),
    ] {
        let d = annotate(&w, repo, &format!("{host}/{base}:v1"), base_digest).await;
        sign(repo, &d);
    }

    let p = w.proxy();
    let proxy_host = p.host();
    for repo in ["workload/ok", "app/on-signed"] {
        skopeo_copy(
            &format!("{proxy_host}/{repo}:v1"),
            &w.work.join("out").join(repo),
        )
        .unwrap_or_else(|e| panic!("{repo}: {e}\n{}", p.log_contents()));
    }
    expect_denied(&p, "workload/other", &["identity mismatch", SPIFFE]).await;
    expect_denied(
        &p,
        "app/on-unsigned",
        &[
            "base image",
            "base/unsigned",
            "verify_base",
            "no signature found",
        ],
    )
    .await;

    let (ok, report) = w.verify(&format!("{host}/app/on-signed:v1"));
    assert!(ok, "{report}");
    assert!(report.contains("base image:"), "{report}");
    assert!(
        report.contains(&format!("ALLOW: {host}/base/signed@{signed_base}")),
        "{report}"
    );
    let (ok, report) = w.verify(&format!("{host}/app/on-unsigned:v1"));
    assert!(!ok, "{report}");
    assert!(
        report.contains(&format!("DENY: {host}/base/unsigned@{unsigned_base}")),
        "{report}"
    );
}

/// Pushes `repo:v1`, an image whose manifest names `base@digest` as its base image, and returns
/// its digest.
async fn annotate(w: &World, repo: &str, base: &str, digest: &str) -> String {
    w.push(Image::Small, &format!("{repo}:plain"));
    let resp = http::request(
        "GET",
        &format!("{}/v2/{repo}/manifests/plain", w.upstream.url()),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    )
    .await;
    let mut m: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    m["annotations"] = serde_json::json!({
        "org.opencontainers.image.base.name": base,
        "org.opencontainers.image.base.digest": digest,
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let media_type = m["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_owned();
    w.upstream.put_manifest(repo, "v1", &media_type, &bytes);
    portcullis_testkit::sha256_hex(&bytes)
}
