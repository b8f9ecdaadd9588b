//! Air-gapped mirrors carry Sigstore bundles (issue #11). Images signed only by cosign v3
//! bundles in the referrers (keyless, from the test Fulcio CA, Rekor v1/v2 logs and TSA),
//! attestation-gated images (SLSA provenance under CEL conditions), legacy `.sig`/`.att` tags and
//! `verify_base` are mirrored on the connected side, imported with no upstream reachable, served
//! offline, and verified offline. `import` decides as a pull does: a tampered, misplaced or
//! missing bundle rejects its image with the reason, and nothing of that image is served.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use portcullis_policy::AuthorityConfig;
use portcullis_testkit::bundle::BUNDLE_V03_MEDIA_TYPE;
use portcullis_testkit::http;
use portcullis_testkit::intoto::{
    cosign_sign_v1_statement, slsa_v02_predicate, slsa_v1_predicate, statement,
};
use portcullis_testkit::referrers::{referrers_tag, OCI_INDEX, OCI_MANIFEST};
use portcullis_testkit::{
    keyless_authority, push_attestation, push_referrer, sha256_hex, skopeo_copy, Fault,
    FaultServer, Image, Leaf, LogEntry, Proxy, Rule, Signer, TestSigstore,
};
use serde_json::{json, Value};

use super::layout::{blob_path, copy_dir, entry, index_of, read_json, ref_names, write_index};
use super::layout::{sig_name, REF_NAME};
use super::run::Run;
use super::support::{Instance, World};

const ISSUER: &str = "https://issuer.test";
const BUILDER: &str = "builder@example.test";
const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
const SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";
const GH_BUILDER: &str =
    "https://github.com/acme/builder/.github/workflows/build.yml@refs/heads/main";
const EVIL_BUILDER: &str =
    "https://github.com/evil/builder/.github/workflows/x.yml@refs/heads/main";
const TEKTON: &str = "https://tekton.dev/chains/v2";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const BASE_NAME: &str = "org.opencontainers.image.base.name";
const BASE_DIGEST: &str = "org.opencontainers.image.base.digest";
/// What a client accepts when it asks for a manifest by digest.
const ACCEPT: &[(&str, &str)] = &[("Accept", OCI_MANIFEST), ("Accept", OCI_INDEX)];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A bundle pushed as a referrer: the artifact manifest's digest and the bundle itself.
struct Referred {
    artifact: String,
    bundle: String,
}

impl Referred {
    /// The digest of the bundle blob (the artifact's one layer).
    fn blob(&self) -> String {
        sha256_hex(self.bundle.as_bytes())
    }
}

/// A [`World`] with a test Sigstore too, its trusted root named `test` in the policy, a
/// keyless leaf for `BUILDER` (issuer `ISSUER`), and these rules on top of the world's:
/// - `bundled`: `<host>/bundled/**`, signed keyless;
/// - `attested`: `<host>/attested/**`, signed keyless by `ci`, with a SLSA v1 provenance
///   attestation by `ci` whose builder is `GH_BUILDER` and source under `github.com/acme/`;
/// - `tekton`: `<host>/tekton/**`, signed by `release`, with a SLSA v0.2 attestation from Tekton
///   (legacy `.sig` and `.att`);
/// - `app`: `<host>/app/**`, signed by `release`, `verify_base = true`;
/// - `base`: `<host>/base/**`, signed keyless.
struct Signed {
    w: World,
    sigstore: TestSigstore,
    leaf: Leaf,
}

impl Signed {
    fn new() -> Signed {
        let mut w = World::new();
        let sigstore = TestSigstore::new();
        let root = w.work.join("trusted_root.json");
        std::fs::write(&root, sigstore.trusted_root_json()).unwrap();
        let leaf = sigstore.issue_leaf(BUILDER, ISSUER, now() - 600, now() + 600);
        let host = w.host();
        w.extend_policy(|policy| {
            let rule = |name: &str| Rule::new(name, &[&format!("{host}/{name}/**")]);
            let ci = AuthorityConfig {
                name: Some("ci".into()),
                ..keyless_authority("test", ISSUER, BUILDER)
            };
            let gh_builder = format!("predicate.runDetails.builder.id == \"{GH_BUILDER}\"");
            let tekton = format!("predicate.builder.id == \"{TEKTON}\"");
            policy
                .trust_root("test", &root)
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
                .rule(rule("app").verify_base().key("release"))
                .rule(rule("base").keyless("test", ISSUER, BUILDER))
        });
        Signed { w, sigstore, leaf }
    }

    /// Pushes `bundle` as a referrer of `repo@digest`, as cosign v3 does.
    fn refer(&self, repo: &str, digest: &str, bundle: String) -> Referred {
        let artifact = push_referrer(
            &self.w.upstream,
            repo,
            digest,
            BUNDLE_V03_MEDIA_TYPE,
            BUNDLE_V03_MEDIA_TYPE,
            bundle.as_bytes(),
            &[],
        );
        Referred { artifact, bundle }
    }

    /// cosign v3 `sign`, keyless: a DSSE sign/v1 bundle with a Rekor v1 entry.
    fn sign_v3(&self, repo: &str, digest: &str) -> Referred {
        let bundle = self
            .sigstore
            .dsse_bundle(
                Signer::Keyless(&self.leaf),
                &cosign_sign_v1_statement(digest),
            )
            .build();
        self.refer(repo, digest, bundle)
    }

    /// A keyless message signature over the manifest, with a Rekor v2 entry and a TSA timestamp.
    fn sign_message_v2(&self, repo: &str, digest: &str) -> Referred {
        let bundle = self
            .sigstore
            .message_bundle(Signer::Keyless(&self.leaf), digest)
            .log_entry(LogEntry::RekorV2)
            .with_timestamp()
            .build();
        self.refer(repo, digest, bundle)
    }

    /// cosign v3 `attest`, keyless: a SLSA v1 provenance statement built by `builder`.
    fn attest_slsa(&self, repo: &str, digest: &str, builder: &str) -> Referred {
        let predicate = slsa_v1_predicate(
            builder,
            "https://github.com/acme/app",
            "refs/heads/main",
            COMMIT,
            ".github/workflows/build.yml",
        );
        let stmt = statement(&self.w.name(repo), digest, SLSA_V1, &predicate);
        let bundle = self
            .sigstore
            .dsse_bundle(Signer::Keyless(&self.leaf), &stmt)
            .build();
        self.refer(repo, digest, bundle)
    }

    /// Legacy cosign, keyed by `release`: a `.sig` and a `.att` holding Tekton's SLSA v0.2.
    fn sign_and_attest_legacy(&self, repo: &str, digest: &str) {
        self.w.sign(repo, &self.w.name(repo), digest);
        let predicate = slsa_v02_predicate(
            TEKTON,
            "tekton.dev/v1/PipelineRun",
            "git+https://github.com/acme/app",
            COMMIT,
            "build",
        );
        let att = self.sigstore.attestation_layer(
            Signer::Key(self.w.release()),
            &statement(repo, digest, SLSA_V02, &predicate),
            now(),
        );
        push_attestation(&self.w.upstream, repo, digest, &[att]);
    }

    /// Pushes `repo:tag`, the small OCI image with `annotations` and one naming `repo` (so that
    /// no other image here shares its digest); returns its digest.
    fn push_annotated(&self, repo: &str, tag: &str, annotations: &[(&str, &str)]) -> String {
        let plain = self.w.push(Image::Small, repo, "plain");
        let path = self.w.upstream.blob_path(&plain);
        let mut m = read_json(&path);
        let mut a = serde_json::Map::new();
        a.insert("org.example.fixture".into(), repo.into());
        for (k, v) in annotations {
            a.insert((*k).into(), (*v).into());
        }
        m["annotations"] = Value::Object(a);
        let bytes = serde_json::to_vec(&m).unwrap();
        self.w
            .upstream
            .put_manifest(repo, tag, OCI_MANIFEST, &bytes)
    }
}

// --- The layout -------------------------------------------------------------------------------

/// `<name>:sha256-<hex>`: the entry of `digest`'s referrers index (the referrers tag schema).
fn referrers_name(name: &str, digest: &str) -> String {
    format!("{name}:{}", referrers_tag(digest))
}

/// `<name>:sha256-<hex>.att`: the entry of `digest`'s legacy attestation manifest.
fn att_name(name: &str, digest: &str) -> String {
    format!("{name}:{}.att", referrers_tag(digest))
}

/// The descriptors that `layout`'s referrers index of `name@digest` lists.
fn layout_referrers(layout: &Path, name: &str, digest: &str) -> Vec<Value> {
    let e = entry(layout, &referrers_name(name, digest));
    assert_eq!(e["mediaType"], OCI_INDEX, "the referrers entry: {e}");
    let index = read_json(&blob_path(layout, e["digest"].as_str().unwrap()));
    assert_eq!(
        index["mediaType"], OCI_INDEX,
        "the referrers index: {index}"
    );
    index["manifests"].as_array().cloned().unwrap_or_default()
}

/// Asserts that `layout` lists exactly `referred` as the referrers of `name@digest`, all
/// bundles, and holds each artifact manifest (whose subject is `digest`), its empty config and
/// its bundle, byte for byte.
fn assert_carries_bundles(layout: &Path, name: &str, digest: &str, referred: &[&Referred]) {
    let listed = layout_referrers(layout, name, digest);
    let mut got: Vec<&str> = listed
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = referred.iter().map(|r| r.artifact.as_str()).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "the referrers of {name}@{digest} in the layout");
    for d in &listed {
        assert_eq!(d["artifactType"], BUNDLE_V03_MEDIA_TYPE, "{d}");
    }
    for r in referred {
        let m = read_json(&blob_path(layout, &r.artifact));
        assert_eq!(m["subject"]["digest"], digest, "artifact {}", r.artifact);
        let config = std::fs::read(blob_path(layout, m["config"]["digest"].as_str().unwrap()));
        assert_eq!(config.unwrap(), b"{}", "artifact {}'s config", r.artifact);
        assert_eq!(m["layers"][0]["digest"], r.blob().as_str());
        let bundle = std::fs::read(blob_path(layout, &r.blob())).unwrap();
        assert_eq!(bundle, r.bundle.as_bytes(), "the bundle of {}", r.artifact);
    }
}

/// Asserts that every blob of `layout` hashes to its file name.
fn assert_blobs_hash_to_names(layout: &Path) {
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let actual = sha256_hex(&std::fs::read(e.path()).unwrap());
        assert_eq!(actual, format!("sha256:{name}"), "blob file {name}");
    }
}

/// Writes `bytes` into `layout` as a blob; returns its digest.
fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256_hex(bytes);
    std::fs::write(blob_path(layout, &digest), bytes).unwrap();
    digest
}

/// Points `layout`'s entry `name` at `manifest` (of `media_type`), written as a blob: a
/// change made as an attacker would, every digest and size consistent.
fn repoint(layout: &Path, name: &str, media_type: &str, manifest: &Value) {
    let bytes = serde_json::to_vec(manifest).unwrap();
    let digest = put_blob(layout, &bytes);
    let mut index = index_of(layout);
    let mut found = false;
    for d in index["manifests"].as_array_mut().unwrap() {
        if d["annotations"][REF_NAME] == name {
            d["mediaType"] = media_type.into();
            d["digest"] = digest.clone().into();
            d["size"] = bytes.len().into();
            found = true;
        }
    }
    assert!(found, "no entry {name} in {}", layout.display());
    write_index(layout, &index);
}

/// Removes `layout`'s entry `name` (its blobs stay, unreachable).
fn drop_entry(layout: &Path, name: &str) {
    let mut index = index_of(layout);
    let manifests = index["manifests"].as_array_mut().unwrap();
    let before = manifests.len();
    manifests.retain(|d| d["annotations"][REF_NAME] != name);
    assert_eq!(manifests.len() + 1, before, "no entry {name}");
    write_index(layout, &index);
}

fn untar(tar: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -xf {}: {}",
        tar.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- What an offline instance serves ----------------------------------------------------------

/// Asserts that `p` lists exactly `referred` as the referrers of `repo@digest`, all bundles,
/// and serves each artifact manifest and its blobs, the bundle byte for byte.
async fn assert_serves_bundles(p: &Proxy, repo: &str, digest: &str, referred: &[&Referred]) {
    let base = format!("{}/v2/{repo}", p.url());
    let resp = http::get(&format!("{base}/referrers/{digest}")).await;
    assert_eq!(
        resp.status,
        200,
        "GET /v2/{repo}/referrers/{digest}: {}\n{}",
        String::from_utf8_lossy(&resp.body),
        p.log_contents()
    );
    let index: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(index["mediaType"], OCI_INDEX, "{index}");
    let listed = index["manifests"].as_array().cloned().unwrap_or_default();
    let mut got: Vec<&str> = listed
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = referred.iter().map(|r| r.artifact.as_str()).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(
        got, want,
        "the referrers of {repo}@{digest} offline: {index}"
    );
    for d in &listed {
        assert_eq!(d["artifactType"], BUNDLE_V03_MEDIA_TYPE, "{d}");
    }
    for r in referred {
        let resp = http::request("GET", &format!("{base}/manifests/{}", r.artifact), ACCEPT).await;
        assert_eq!(
            resp.status,
            200,
            "GET the artifact {repo}@{}: {}\n{}",
            r.artifact,
            String::from_utf8_lossy(&resp.body),
            p.log_contents()
        );
        assert_eq!(sha256_hex(&resp.body), r.artifact);
        let m: Value = serde_json::from_slice(&resp.body).unwrap();
        for blob in [&m["config"]["digest"], &m["layers"][0]["digest"]] {
            let blob = blob.as_str().unwrap();
            let resp = http::get(&format!("{base}/blobs/{blob}")).await;
            assert_eq!(
                resp.status,
                200,
                "GET /v2/{repo}/blobs/{blob} (of {})\n{}",
                r.artifact,
                p.log_contents()
            );
            assert_eq!(sha256_hex(&resp.body), blob);
        }
        let resp = http::get(&format!("{base}/blobs/{}", r.blob())).await;
        assert_eq!(resp.body.as_ref(), r.bundle.as_bytes());
    }
}

/// Asserts that `GET` and `HEAD` of `/v2/<path>` (a manifest accepted as OCI) do not answer 200.
async fn assert_withheld(p: &Proxy, path: &str) {
    for method in ["GET", "HEAD"] {
        let resp = http::request(method, &format!("{}/v2/{path}", p.url()), ACCEPT).await;
        assert_ne!(
            resp.status,
            200,
            "{method} /v2/{path} must not be served\n{}",
            p.log_contents()
        );
    }
}

/// Asserts that nothing of the rejected `repo@digest` is served: not its tag `v1`, its
/// manifest, its referrers tag, the `artifacts` that referred to it or the bundle `blobs`; and
/// that its referrers list, if answered, is empty.
async fn assert_nothing_served(
    p: &Proxy,
    repo: &str,
    digest: &str,
    artifacts: &[&str],
    blobs: &[&str],
) {
    assert_withheld(p, &format!("{repo}/manifests/v1")).await;
    assert_withheld(p, &format!("{repo}/manifests/{digest}")).await;
    assert_withheld(p, &format!("{repo}/manifests/{}", referrers_tag(digest))).await;
    for a in artifacts {
        assert_withheld(p, &format!("{repo}/manifests/{a}")).await;
    }
    for b in blobs {
        assert_withheld(p, &format!("{repo}/blobs/{b}")).await;
    }
    let resp = http::get(&format!("{}/v2/{repo}/referrers/{digest}", p.url())).await;
    if resp.status == 200 {
        let index: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(
            index["manifests"].as_array().map_or(0, Vec::len),
            0,
            "the rejected {repo}@{digest} has referrers offline: {index}"
        );
    }
}

/// Skopeo pulls `repo:v1` through `p` into `dir`; asserts the manifest it got hashes to `digest`.
fn pull_through(p: &Proxy, repo: &str, dir: &Path, digest: &str) {
    skopeo_copy(&format!("{}/{repo}:v1", p.host()), dir)
        .unwrap_or_else(|e| panic!("skopeo {repo} offline: {e}\n{}", p.log_contents()));
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    assert_eq!(sha256_hex(&manifest), digest, "{repo}:v1 pulled offline");
}

// --- Tests ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bundle_signed_and_attested_images_cross_the_gap_and_are_served_and_verified_offline() {
    let mut s = Signed::new();
    // Signed only by bundles: a DSSE sign/v1 (Rekor v1) and a message signature (Rekor v2, TSA).
    let bundled = s.w.push(Image::Small, "bundled/app", "v1");
    let bundled_dsse = s.sign_v3("bundled/app", &bundled);
    let bundled_message = s.sign_message_v2("bundled/app", &bundled);
    // Signed by a bundle, attested by another whose SLSA provenance meets the CEL conditions.
    let attested = s.w.push(Image::DockerV2s2, "attested/app", "v1");
    let attested_sig = s.sign_v3("attested/app", &attested);
    let attested_slsa = s.attest_slsa("attested/app", &attested, GH_BUILDER);
    // Legacy and keyed: a `.sig` and a `.att`.
    let tekton = s.push_annotated("tekton/app", "v1", &[]);
    s.sign_and_attest_legacy("tekton/app", &tekton);

    let w = &s.w;
    let (bundled_name, attested_name, tekton_name) = (
        w.name("bundled/app"),
        w.name("attested/app"),
        w.name("tekton/app"),
    );
    let refs = [
        format!("{bundled_name}:v1"),
        format!("{attested_name}:v1"),
        format!("{tekton_name}:v1"),
    ];
    let a = w.connected("a", &refs);
    let tar = w.work.join("transfer/images.tar");
    std::fs::create_dir_all(tar.parent().unwrap()).unwrap();
    let run = a.mirror(&tar);
    run.expect_code(0);
    for r in &refs {
        assert!(run.stdout.contains(&format!("verified {r}")), "{run}");
    }

    // What crossed: each image, its legacy tags, and its referrers tag with every artifact.
    let layout = w.work.join("unpacked");
    untar(&tar, &layout);
    assert_blobs_hash_to_names(&layout);
    for (r, digest) in refs.iter().zip([&bundled, &attested, &tekton]) {
        assert_eq!(entry(&layout, r)["digest"], digest.as_str(), "{r}");
    }
    assert_carries_bundles(
        &layout,
        &bundled_name,
        &bundled,
        &[&bundled_dsse, &bundled_message],
    );
    assert_carries_bundles(
        &layout,
        &attested_name,
        &attested,
        &[&attested_sig, &attested_slsa],
    );
    let mut want = vec![
        refs[0].clone(),
        refs[1].clone(),
        refs[2].clone(),
        referrers_name(&bundled_name, &bundled),
        referrers_name(&attested_name, &attested),
        sig_name(&tekton_name, &tekton),
        att_name(&tekton_name, &tekton),
    ];
    want.sort();
    assert_eq!(ref_names(&layout), want, "the entries `mirror` wrote");
    // `export` from the connected cache writes the same.
    let exported = w.work.join("export");
    a.export(&refs, &exported).expect_code(0);
    assert_eq!(ref_names(&exported), want, "the entries `export` wrote");
    assert_carries_bundles(
        &exported,
        &bundled_name,
        &bundled,
        &[&bundled_dsse, &bundled_message],
    );
    s.w.upstream.stop();

    let w = &s.w;
    let fault = FaultServer::start(Fault::Status(500));
    let b = w.offline("b", &fault);
    b.import(&tar, None)
        .expect_code(0)
        .expect_line("imported", &refs[0], &bundled)
        .expect_line("imported", &refs[1], &attested)
        .expect_line("imported", &refs[2], &tekton);

    let mut p = b.serve();
    let through = w.work.join("through");
    pull_through(&p, "bundled/app", &through.join("bundled"), &bundled);
    pull_through(&p, "attested/app", &through.join("attested"), &attested);
    pull_through(&p, "tekton/app", &through.join("tekton"), &tekton);
    assert_serves_bundles(
        &p,
        "bundled/app",
        &bundled,
        &[&bundled_dsse, &bundled_message],
    )
    .await;
    assert_serves_bundles(
        &p,
        "attested/app",
        &attested,
        &[&attested_sig, &attested_slsa],
    )
    .await;
    assert_eq!(
        fault.connections(),
        0,
        "an offline instance connected to its upstream\n{}",
        p.log_contents()
    );
    p.terminate();
    drop(p);

    // `verify` answers from what was imported (the server is stopped: RocksDB is one process's).
    let run = b.run(&[&"verify", &refs[0]]);
    run.expect_code(0);
    for needle in ["ALLOW: ", "signed by:", BUILDER] {
        assert!(run.stdout.contains(needle), "lacks {needle:?}: {run}");
    }
    let run = b.run(&[&"verify", &refs[1]]);
    run.expect_code(0);
    for needle in [
        "ALLOW: ",
        "SLSA provenance (https://slsa.dev/provenance/v1)",
        &format!("builder: {GH_BUILDER}"),
        &format!("commit: {COMMIT}"),
    ] {
        assert!(run.stdout.contains(needle), "lacks {needle:?}: {run}");
    }
    let run = b.run(&[&"verify", &refs[2]]);
    run.expect_code(0);
    assert!(run.stdout.contains(&format!("builder: {TEKTON}")), "{run}");
    // Under a condition that the held provenance does not meet, the same cache answers DENY.
    let stricter = b.variant(|c| {
        let attested = c.rules.iter_mut().find(|r| r.name == "attested").unwrap();
        let condition = &mut attested.attestations[0].conditions[0];
        assert!(condition.contains(GH_BUILDER), "{condition}");
        *condition = condition.replace(GH_BUILDER, EVIL_BUILDER);
    });
    let run = stricter.run(&[&"verify", &refs[1]]);
    run.expect_code(1);
    for needle in ["DENY: ", "runDetails.builder.id"] {
        assert!(run.stdout.contains(needle), "lacks {needle:?}: {run}");
    }
    assert_eq!(fault.connections(), 0, "verify connected to the upstream");
}

/// Three images mirrored into a layout directory: `bundled/app` (the small OCI image) and
/// `bundled/other` (Docker v2s2), each signed only by a bundle, and `attested/app` (the small
/// image, annotated), signed and attested by bundles.
struct Transfer {
    s: Signed,
    layout: PathBuf,
    app: String,
    other: String,
    attested: String,
    app_sig: Referred,
    other_sig: Referred,
    attested_sig: Referred,
    attested_slsa: Referred,
}

impl Transfer {
    fn new() -> Transfer {
        let s = Signed::new();
        let app = s.w.push(Image::Small, "bundled/app", "v1");
        let app_sig = s.sign_v3("bundled/app", &app);
        let other = s.w.push(Image::DockerV2s2, "bundled/other", "v1");
        let other_sig = s.sign_v3("bundled/other", &other);
        let attested = s.push_annotated("attested/app", "v1", &[]);
        let attested_sig = s.sign_v3("attested/app", &attested);
        let attested_slsa = s.attest_slsa("attested/app", &attested, GH_BUILDER);
        let refs = ["bundled/app:v1", "bundled/other:v1", "attested/app:v1"].map(|r| s.w.name(r));
        let a = s.w.connected("a", &refs);
        let layout = s.w.work.join("mirror-out");
        let run = a.mirror(&layout);
        run.expect_code(0);
        for r in &refs {
            assert!(run.stdout.contains(&format!("verified {r}")), "{run}");
        }
        Transfer {
            s,
            layout,
            app,
            other,
            attested,
            app_sig,
            other_sig,
            attested_sig,
            attested_slsa,
        }
    }

    fn name(&self, repo: &str) -> String {
        self.s.w.name(repo)
    }

    fn reference(&self, repo: &str) -> String {
        self.s.w.name(&format!("{repo}:v1"))
    }

    /// A fresh copy of the mirrored layout, to tamper with.
    fn copy(&self, sub: &str) -> PathBuf {
        let to = self.s.w.work.join(sub);
        copy_dir(&self.layout, &to);
        to
    }

    /// Imports `layout` into a fresh offline instance; the run, the instance and its fault.
    fn import_fresh(&self, sub: &str, layout: &Path) -> (Run, Instance, FaultServer) {
        let fault = FaultServer::start(Fault::Status(500));
        let b = self.s.w.offline(sub, &fault);
        let run = b.import(layout, None);
        eprintln!("{run}");
        (run, b, fault)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_in_a_bundle_rejects_that_image_and_nothing_of_it_is_served() {
    let t = Transfer::new();
    let layout = t.copy("flipped");
    let blob = t.app_sig.blob();
    let file = blob_path(&layout, &blob);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, &bytes).unwrap();

    let (run, b, fault) = t.import_fresh("b", &layout);
    let app_ref = t.reference("bundled/app");
    run.expect_code(1)
        .expect_rejected(&app_ref, &t.app, &[&blob, "digest"])
        .expect_line("imported", &t.reference("bundled/other"), &t.other)
        .expect_line("imported", &t.reference("attested/app"), &t.attested);
    assert!(run.line("imported", &app_ref).is_none(), "{run}");

    let p = b.serve();
    assert_nothing_served(&p, "bundled/app", &t.app, &[&t.app_sig.artifact], &[&blob]).await;
    assert_serves_bundles(&p, "bundled/other", &t.other, &[&t.other_sig]).await;
    assert_eq!(fault.connections(), 0, "{}", p.log_contents());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validly_hashed_bundle_of_another_image_placed_as_the_referrer_is_rejected() {
    let t = Transfer::new();
    let layout = t.copy("misplaced");
    // bundled/app's one referrer is now an artifact whose subject is bundled/app but whose
    // bundle, intact, signs bundled/other; every digest and size in the layout is consistent.
    let app_name = t.name("bundled/app");
    let subject = entry(&layout, &t.reference("bundled/app"));
    let theirs = read_json(&blob_path(&layout, &t.other_sig.artifact));
    let artifact = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_V03_MEDIA_TYPE,
        "config": theirs["config"],
        "layers": theirs["layers"],
        "subject": {
            "mediaType": subject["mediaType"],
            "digest": subject["digest"],
            "size": subject["size"],
        },
    });
    let bytes = serde_json::to_vec(&artifact).unwrap();
    let misplaced = put_blob(&layout, &bytes);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE_V03_MEDIA_TYPE,
            "digest": misplaced,
            "size": bytes.len(),
        }],
    });
    repoint(
        &layout,
        &referrers_name(&app_name, &t.app),
        OCI_INDEX,
        &index,
    );
    assert_eq!(
        layout_referrers(&layout, &app_name, &t.app)[0]["digest"],
        misplaced.as_str()
    );

    let (run, b, fault) = t.import_fresh("b", &layout);
    let app_ref = t.reference("bundled/app");
    run.expect_code(1)
        .expect_rejected(&app_ref, &t.app, &["does not match any subject"])
        .expect_line("imported", &t.reference("bundled/other"), &t.other)
        .expect_line("imported", &t.reference("attested/app"), &t.attested);
    assert!(run.line("imported", &app_ref).is_none(), "{run}");

    let p = b.serve();
    assert_nothing_served(
        &p,
        "bundled/app",
        &t.app,
        &[&misplaced, &t.app_sig.artifact],
        &[&t.app_sig.blob()],
    )
    .await;
    assert_serves_bundles(&p, "bundled/other", &t.other, &[&t.other_sig]).await;
    assert_eq!(fault.connections(), 0, "{}", p.log_contents());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_whose_bundle_or_attestation_was_dropped_is_rejected_and_verify_says_so() {
    let t = Transfer::new();
    let layout = t.copy("dropped");
    // bundled/app crosses unsigned: its referrers tag is gone.
    let (app_name, attested_name) = (t.name("bundled/app"), t.name("attested/app"));
    drop_entry(&layout, &referrers_name(&app_name, &t.app));
    // attested/app crosses signed but without its provenance: its referrers index, re-hashed,
    // lists the signature only.
    let e = entry(&layout, &referrers_name(&attested_name, &t.attested));
    let mut index = read_json(&blob_path(&layout, e["digest"].as_str().unwrap()));
    let manifests = index["manifests"].as_array_mut().unwrap();
    manifests.retain(|d| d["digest"] != t.attested_slsa.artifact.as_str());
    assert_eq!(manifests.len(), 1, "{index}");
    repoint(
        &layout,
        &referrers_name(&attested_name, &t.attested),
        OCI_INDEX,
        &index,
    );

    let (run, b, fault) = t.import_fresh("b", &layout);
    let (app_ref, attested_ref) = (t.reference("bundled/app"), t.reference("attested/app"));
    run.expect_code(1)
        .expect_rejected(&app_ref, &t.app, &["no signature found"])
        .expect_rejected(
            &attested_ref,
            &t.attested,
            &["no https://slsa.dev/provenance/v1 attestation"],
        )
        .expect_line("imported", &t.reference("bundled/other"), &t.other);
    assert!(run.line("imported", &app_ref).is_none(), "{run}");
    assert!(run.line("imported", &attested_ref).is_none(), "{run}");

    let mut p = b.serve();
    assert_nothing_served(
        &p,
        "bundled/app",
        &t.app,
        &[&t.app_sig.artifact],
        &[&t.app_sig.blob()],
    )
    .await;
    assert_nothing_served(
        &p,
        "attested/app",
        &t.attested,
        &[&t.attested_sig.artifact, &t.attested_slsa.artifact],
        &[&t.attested_sig.blob(), &t.attested_slsa.blob()],
    )
    .await;
    pull_through(
        &p,
        "bundled/other",
        &t.s.w.work.join("through/other"),
        &t.other,
    );
    assert_serves_bundles(&p, "bundled/other", &t.other, &[&t.other_sig]).await;
    assert_eq!(fault.connections(), 0, "{}", p.log_contents());
    p.terminate();
    drop(p);
    // Offline, `verify` says what would be served: the rejected images are denied.
    b.run(&[&"verify", &t.reference("bundled/other")])
        .expect_code(0);
    for r in [&app_ref, &attested_ref] {
        let run = b.run(&[&"verify", r]);
        run.expect_code(1);
        assert!(run.stdout.contains("DENY: "), "{run}");
    }
    assert_eq!(fault.connections(), 0, "verify connected to the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_base_crosses_the_gap_and_a_base_without_its_bundle_rejects_the_child() {
    let s = Signed::new();
    let w = &s.w;
    // Bases signed only by bundles; children signed by `release` (`.sig`), each naming its base.
    let signed_base = s.push_annotated("base/signed", "v1", &[]);
    let signed_base_sig = s.sign_v3("base/signed", &signed_base);
    let dropped_base = w.push(Image::DockerV2s2, "base/dropped", "v1");
    let dropped_base_sig = s.sign_v3("base/dropped", &dropped_base);
    let child = |repo: &str, base: &str, base_digest: &str| {
        let base_ref = w.name(&format!("{base}:v1"));
        let d = s.push_annotated(
            repo,
            "v1",
            &[(BASE_NAME, &base_ref), (BASE_DIGEST, base_digest)],
        );
        w.sign(repo, &w.name(repo), &d);
        d
    };
    let on_signed = child("app/on-signed", "base/signed", &signed_base);
    let on_dropped = child("app/on-dropped", "base/dropped", &dropped_base);
    let reference = |repo: &str| w.name(&format!("{repo}:v1"));
    let refs = [
        reference("app/on-signed"),
        reference("app/on-dropped"),
        reference("base/signed"),
        reference("base/dropped"),
    ];
    let digests = [&on_signed, &on_dropped, &signed_base, &dropped_base];
    let a = w.connected("a", &refs);
    let layout = w.work.join("mirror-out");
    let run = a.mirror(&layout);
    run.expect_code(0);
    for r in &refs {
        assert!(run.stdout.contains(&format!("verified {r}")), "{run}");
    }
    assert_carries_bundles(
        &layout,
        &w.name("base/signed"),
        &signed_base,
        &[&signed_base_sig],
    );
    assert_carries_bundles(
        &layout,
        &w.name("base/dropped"),
        &dropped_base,
        &[&dropped_base_sig],
    );
    let names = ref_names(&layout);
    for (repo, d) in [
        ("app/on-signed", &on_signed),
        ("app/on-dropped", &on_dropped),
    ] {
        assert!(names.contains(&sig_name(&w.name(repo), d)), "{names:?}");
    }

    // Both bases crossed signed: all four import, the child is served and verified offline.
    let fault = FaultServer::start(Fault::Status(500));
    let b = w.offline("b", &fault);
    let run = b.import(&layout, None);
    run.expect_code(0);
    for (r, d) in refs.iter().zip(digests) {
        run.expect_line("imported", r, d);
    }
    let mut p = b.serve();
    pull_through(
        &p,
        "app/on-signed",
        &w.work.join("through/on-signed"),
        &on_signed,
    );
    pull_through(
        &p,
        "base/signed",
        &w.work.join("through/base"),
        &signed_base,
    );
    assert_serves_bundles(&p, "base/signed", &signed_base, &[&signed_base_sig]).await;
    p.terminate();
    drop(p);
    let run = b.run(&[&"verify", &refs[0]]);
    run.expect_code(0);
    for needle in [
        "base image:".to_owned(),
        format!("ALLOW: {}@{signed_base}", w.name("base/signed")),
    ] {
        assert!(run.stdout.contains(&needle), "lacks {needle:?}: {run}");
    }

    // base/dropped crosses without its bundle: it is rejected, and so is the child built on it.
    let stripped = w.work.join("stripped");
    copy_dir(&layout, &stripped);
    drop_entry(
        &stripped,
        &referrers_name(&w.name("base/dropped"), &dropped_base),
    );
    let c = w.offline("c", &fault);
    let run = c.import(&stripped, None);
    eprintln!("{run}");
    run.expect_code(1)
        .expect_rejected(&refs[3], &dropped_base, &["no signature found"])
        .expect_rejected(
            &refs[1],
            &on_dropped,
            // The base was rejected (its own line says why), so it is not held for the child.
            &["base image", "base/dropped", "verify_base", "is not held"],
        )
        .expect_line("imported", &refs[0], &on_signed)
        .expect_line("imported", &refs[2], &signed_base);
    let p = c.serve();
    assert_nothing_served(&p, "app/on-dropped", &on_dropped, &[], &[]).await;
    assert_nothing_served(
        &p,
        "base/dropped",
        &dropped_base,
        &[&dropped_base_sig.artifact],
        &[&dropped_base_sig.blob()],
    )
    .await;
    pull_through(
        &p,
        "app/on-signed",
        &w.work.join("through-c/on-signed"),
        &on_signed,
    );
    assert_eq!(fault.connections(), 0, "{}", p.log_contents());
}
