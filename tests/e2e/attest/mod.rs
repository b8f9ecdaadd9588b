//! Signed verification summaries (`[attest]`, issue #14), end to end: an image that passed is
//! given a SLSA verification summary, served in its referrers as a Sigstore bundle that
//! sigstore-js verifies with the one public key, and under its `sha256-<hex>.att` tag as a
//! DSSE layer that verifies as cosign checks a keyed attestation (Python's `cryptography`,
//! signature over the PAE); both name the exact digest and the policy's fingerprint. The
//! upstream's own `.att` layers stay beside it (if admitted as evidence), skopeo copies it,
//! and nothing of the kind exists for denied, warned or audit-failed images, or without
//! `[attest]`. The key is made by the OpenSSL CLI, never by portcullis' own code.
//!
//! - [`examples`]: the Kyverno and policy-controller examples in `config/kubernetes/`.

//! - `support`: the world, requests and checks the tests share.

use std::path::PathBuf;

use portcullis::config::AttestConfig;
use portcullis_testkit::cosign::signature_tag;
use portcullis_testkit::http;
use portcullis_testkit::intoto::{slsa_v1_predicate, statement, SLSA_PROVENANCE_V1};
use portcullis_testkit::vsa::{openssl_key, python_dsse_verify, sigstore_js_verify};
use portcullis_testkit::{
    manifest_digest_in_registry, push_attestation, sha256_hex, skopeo_copy, AttLayer, CosignKey,
    Image, Signer,
};
use serde_json::Value;

mod examples;
mod support;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_image_gets_a_summary_that_other_verifiers_accept() {
    let w = World::new(Some("correct horse battery staple"));
    let digest = w.push_signed("keyed/app:v1");
    let mut proxy = w.proxy("p", true);
    let base = proxy.url();
    let name = format!("{}/keyed/app", w.host());
    get_ok(&format!("{base}/v2/keyed/app/manifests/v1")).await;
    let fingerprint = fingerprint(&proxy);
    let sig = manifest_digest_in_registry(&w.upstream, "keyed/app", &signature_tag(&digest));

    // (a) In the referrers: an artifact manifest whose subject is the image, its config the
    // empty descriptor and its one layer the bundle, fetchable through portcullis.
    let found = summaries(&base, "keyed/app", &digest).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let artifact = found[0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(found[0]["mediaType"], OCI_MANIFEST);
    let resp = fetch(&base, "keyed/app", "manifests", &artifact).await;
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(artifact.as_str())
    );
    assert_eq!(found[0]["size"], resp.body.len());
    let m = json(&resp);
    assert_eq!(m["artifactType"], BUNDLE_V03);
    assert_eq!(m["subject"]["digest"], digest.as_str());
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    let config = fetch(
        &base,
        "keyed/app",
        "blobs",
        m["config"]["digest"].as_str().unwrap(),
    )
    .await;
    assert_eq!(&config.body[..], b"{}");
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["layers"][0]["mediaType"], BUNDLE_V03);
    let bundle = fetch(
        &base,
        "keyed/app",
        "blobs",
        m["layers"][0]["digest"].as_str().unwrap(),
    )
    .await
    .body;
    let filtered = http::get(&format!(
        "{base}/v2/keyed/app/referrers/{digest}?artifactType={}",
        BUNDLE_V03.replace('+', "%2B")
    ))
    .await;
    assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
    assert!(json(&filtered)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["digest"] == artifact.as_str()));

    // sigstore-js verifies the bundle with the one key (found by its hint), and only with it.
    let from_bundle = sigstore_js_verify(&bundle, &w.attest_pub)
        .unwrap_or_else(|e| panic!("sigstore-js refused the bundle: {e}"));
    let stranger = CosignKey::generate().public_pem();
    assert!(sigstore_js_verify(&bundle, &stranger).is_err());
    let mut forged: Value = serde_json::from_slice(&bundle).unwrap();
    let other = check_statement(&from_bundle, &name, &digest, &fingerprint);
    let mut lie = other.clone();
    lie["subject"][0]["digest"]["sha256"] = "00".repeat(32).into();
    use base64::Engine as _;
    forged["dsseEnvelope"]["payload"] = base64::engine::general_purpose::STANDARD
        .encode(lie.to_string())
        .into();
    let forged = serde_json::to_vec(&forged).unwrap();
    let refused = sigstore_js_verify(&forged, &w.attest_pub).unwrap_err();
    assert!(refused.contains("signature"), "{refused}");

    // (b) Under the .att tag: cosign's attestation manifest, one DSSE layer annotated with the
    // predicate type, verified as cosign verifies a keyed attestation.
    let resp = att(&base, "keyed/app", &digest).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("content-type"), Some(OCI_MANIFEST));
    let att_digest = sha256_hex(&resp.body);
    assert_eq!(
        resp.header("docker-content-digest"),
        Some(att_digest.as_str())
    );
    let att_manifest = json(&resp);
    let layers = att_manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{att_manifest}");
    assert_eq!(layers[0]["mediaType"], DSSE);
    assert_eq!(layers[0]["annotations"]["predicateType"], VSA);
    let envelope_digest = layers[0]["digest"].as_str().unwrap();
    let envelope = fetch(&base, "keyed/app", "blobs", envelope_digest)
        .await
        .body;
    let from_att = python_dsse_verify(&envelope, &w.attest_pub)
        .unwrap_or_else(|e| panic!("the .att layer does not verify: {e}"));
    assert!(python_dsse_verify(&envelope, &stranger).is_err());
    let cfg = att_manifest["config"]["digest"].as_str().unwrap();
    let cfg = json(&fetch(&base, "keyed/app", "blobs", cfg).await);
    assert_eq!(
        cfg["rootfs"]["diff_ids"],
        serde_json::json!([envelope_digest])
    );
    let by_digest = fetch(&base, "keyed/app", "manifests", &att_digest).await;
    assert_eq!(by_digest.body, resp.body);

    // (c) One summary in both forms: the exact digest, the policy in force, the evidence read.
    assert_eq!(from_att, from_bundle);
    let s = check_statement(&from_att, &name, &digest, &fingerprint);
    let hex = sig.strip_prefix("sha256:").unwrap();
    assert_eq!(
        s["predicate"]["inputAttestations"],
        serde_json::json!([{ "uri": format!("oci://{name}@{sig}"), "digest": { "sha256": hex } }])
    );

    // Made once per verdict: the same documents on every request, and after a restart.
    let again = att(&base, "keyed/app", &digest).await;
    assert_eq!(again.body, resp.body);
    proxy.restart();
    let base = proxy.url();
    let after = summaries(&base, "keyed/app", &digest).await;
    assert_eq!(after[0]["digest"], artifact.as_str());
    assert_eq!(att(&base, "keyed/app", &digest).await.body, resp.body);
    let log = proxy.log_contents();
    assert_eq!(
        log.matches("verification summary signed").count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("correct horse"),
        "the key's password was logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstreams_own_attestations_stay_beside_the_summary() {
    let w = World::new(None);
    let digest = w.push_signed("keyed/withatt:v1");
    let name = format!("{}/keyed/withatt", w.host());
    let predicate = slsa_v1_predicate(
        "https://github.com/actions/runner",
        "https://github.com/acme/app",
        "refs/heads/main",
        &"a".repeat(40),
        ".github/workflows/release.yml",
    );
    let provenance = statement(&name, &digest, SLSA_PROVENANCE_V1, &predicate);
    let theirs = w
        .sigstore
        .attestation_layer(Signer::Key(&w.release), &provenance, now());
    push_attestation(
        &w.upstream,
        "keyed/withatt",
        &digest,
        std::slice::from_ref(&theirs),
    );
    // An upstream .att whose "envelope" is none: refused as evidence, so left out.
    let bad_digest = w.push_signed("keyed/badatt:v1");
    let bad = AttLayer {
        envelope: b"{\"not\": \"an envelope\"}".to_vec(),
        predicate_type: SLSA_PROVENANCE_V1.into(),
        ..AttLayer::default()
    };
    push_attestation(
        &w.upstream,
        "keyed/badatt",
        &bad_digest,
        std::slice::from_ref(&bad),
    );

    let proxy = w.proxy("p", true);
    let base = proxy.url();
    get_ok(&format!("{base}/v2/keyed/withatt/manifests/v1")).await;
    get_ok(&format!("{base}/v2/keyed/badatt/manifests/v1")).await;

    let resp = att(&base, "keyed/withatt", &digest).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let m = json(&resp);
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{m}");
    let theirs_digest = sha256_hex(&theirs.envelope);
    assert_eq!(layers[0]["digest"], theirs_digest.as_str());
    assert_eq!(
        layers[0]["annotations"]["predicateType"],
        SLSA_PROVENANCE_V1
    );
    assert!(layers[0]["annotations"]["dev.sigstore.cosign/bundle"].is_string());
    assert_eq!(layers[1]["annotations"]["predicateType"], VSA);
    let served = fetch(&base, "keyed/withatt", "blobs", &theirs_digest).await;
    assert_eq!(served.body, theirs.envelope);
    let ours = fetch(
        &base,
        "keyed/withatt",
        "blobs",
        layers[1]["digest"].as_str().unwrap(),
    )
    .await;
    let s = python_dsse_verify(&ours.body, &w.attest_pub).unwrap();
    let s = check_statement(&s, &name, &digest, &fingerprint(&proxy));
    // The summary lists the evidence it was decided on: the .sig and the upstream's .att.
    let inputs: Vec<&str> = s["predicate"]["inputAttestations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["uri"].as_str().unwrap())
        .collect();
    let upstream_att = manifest_digest_in_registry(
        &w.upstream,
        "keyed/withatt",
        &signature_tag(&digest).replace(".sig", ".att"),
    );
    let sig = manifest_digest_in_registry(&w.upstream, "keyed/withatt", &signature_tag(&digest));
    assert_eq!(
        inputs,
        [
            format!("oci://{name}@{sig}"),
            format!("oci://{name}@{upstream_att}")
        ]
    );
    let merged = sha256_hex(&resp.body);
    assert_eq!(
        fetch(&base, "keyed/withatt", "manifests", &merged)
            .await
            .body,
        resp.body
    );

    // skopeo copies the merged artifact through portcullis, every blob of it.
    let out = w.work.join("copied");
    let src = format!(
        "{}/keyed/withatt:{}",
        proxy.host(),
        signature_tag(&digest).replace(".sig", ".att")
    );
    skopeo_copy(&src, &out).unwrap_or_else(|e| panic!("skopeo copy {src}: {e}"));
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();
    assert_eq!(manifest, resp.body.to_vec());
    for layer in layers {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        assert!(out.join(hex).is_file(), "skopeo wrote layer {hex}");
    }

    // The refused .att is left out: the summary alone, and the bad blob stays unservable.
    let resp = att(&base, "keyed/badatt", &bad_digest).await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let m = json(&resp);
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{m}");
    assert_eq!(layers[0]["annotations"]["predicateType"], VSA);
    let ours = fetch(
        &base,
        "keyed/badatt",
        "blobs",
        layers[0]["digest"].as_str().unwrap(),
    )
    .await;
    let s = python_dsse_verify(&ours.body, &w.attest_pub).unwrap();
    let s: Value = serde_json::from_slice(&s).unwrap();
    let sig = manifest_digest_in_registry(&w.upstream, "keyed/badatt", &signature_tag(&bad_digest));
    assert_eq!(
        s["predicate"]["inputAttestations"][0]["uri"],
        format!("oci://{}/keyed/badatt@{sig}", w.host()),
    );
    assert_eq!(
        s["predicate"]["inputAttestations"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the refused .att never reached the policy: {s}"
    );
    let bad_blob = http::get(&format!(
        "{base}/v2/keyed/badatt/blobs/{}",
        sha256_hex(&bad.envelope)
    ))
    .await;
    assert_eq!(
        bad_blob.status,
        403,
        "{}",
        String::from_utf8_lossy(&bad_blob.body)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_summary_for_denied_warned_or_audited_images_nor_without_attest() {
    let w = World::new(None);
    let signed = w.push_signed("keyed/app:v1");
    let unsigned = w.push(Image::Small, "keyed/unsigned:v1");
    let warned = w.push(Image::DockerV2s2, "warned/app:v1");
    let audited = w.push(Image::DockerV2s2, "audited/app:v1");
    let proxy = w.proxy("p", true);
    let base = proxy.url();

    // The control: with [attest], a verified image has its summary.
    get_ok(&format!("{base}/v2/keyed/app/manifests/v1")).await;
    assert_eq!(summaries(&base, "keyed/app", &signed).await.len(), 1);
    assert_eq!(att(&base, "keyed/app", &signed).await.status, 200);

    let denied = http::get(&format!("{base}/v2/keyed/unsigned/manifests/v1")).await;
    assert_eq!(denied.status, 403);
    for (repo, digest) in [
        ("keyed/unsigned", &unsigned),
        ("warned/app", &warned),
        ("audited/app", &audited),
    ] {
        if repo != "keyed/unsigned" {
            // Served (warn, audit), unverified.
            get_ok(&format!("{base}/v2/{repo}/manifests/v1")).await;
        }
        assert!(summaries(&base, repo, digest).await.is_empty(), "{repo}");
        let resp = att(&base, repo, digest).await;
        assert_ne!(
            resp.status,
            200,
            "{repo}: {}",
            String::from_utf8_lossy(&resp.body)
        );
    }
    let log = proxy.log_contents();
    assert_eq!(
        log.matches("verification summary signed").count(),
        1,
        "{log}"
    );

    // Without [attest]: the same verified image has none.
    let plain = w.proxy("plain", false);
    let base = plain.url();
    get_ok(&format!("{base}/v2/keyed/app/manifests/v1")).await;
    assert!(summaries(&base, "keyed/app", &signed).await.is_empty());
    assert_eq!(att(&base, "keyed/app", &signed).await.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_platforms_a_verified_index_vouches_for_get_summaries_of_its_evidence() {
    let w = World::new(None);
    let index = w.push_signed_image(Image::Multi, "keyed/multi:v1");
    let name = format!("{}/keyed/multi", w.host());
    let proxy = w.proxy("p", true);
    let base = proxy.url();
    let resp = get_ok(&format!("{base}/v2/keyed/multi/manifests/v1")).await;
    let child = json(&resp)["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    get_ok(&format!("{base}/v2/keyed/multi/manifests/{child}")).await;
    let sig = manifest_digest_in_registry(&w.upstream, "keyed/multi", &signature_tag(&index));
    for digest in [&index, &child] {
        assert_eq!(
            summaries(&base, "keyed/multi", digest).await.len(),
            1,
            "{digest}"
        );
        let m = att(&base, "keyed/multi", digest).await;
        assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
        let layer = json(&m)["layers"][0]["digest"].as_str().unwrap().to_owned();
        let envelope = fetch(&base, "keyed/multi", "blobs", &layer).await.body;
        let s = python_dsse_verify(&envelope, &w.attest_pub).unwrap();
        let s = check_statement(&s, &name, digest, &fingerprint(&proxy));
        // The platform manifest has no signature of its own: its summary lists the index's.
        assert_eq!(
            s["predicate"]["inputAttestations"][0]["uri"],
            format!("oci://{name}@{sig}"),
            "{digest}"
        );
    }
}

#[test]
fn attest_keys_are_checked_when_the_config_loads() {
    let password = "hunter2-but-longer";
    let w = World::new(Some(password));
    let (ok, err) = check_config(&w, w.attest.clone());
    assert!(ok, "{err}");

    let with_key = |key: PathBuf| AttestConfig {
        key,
        password_file: None,
        ..w.attest.clone()
    };
    let p384 = w.work.join("p384.key");
    openssl_key(&p384, "EC", &["ec_paramgen_curve:P-384"]);
    let (ok, err) = check_config(&w, with_key(p384));
    assert!(!ok && err.contains("an EC key on another curve"), "{err}");
    let ed = w.work.join("ed25519.key");
    openssl_key(&ed, "ED25519", &[]);
    let (ok, err) = check_config(&w, with_key(ed));
    assert!(!ok && err.contains("an Ed25519 key"), "{err}");

    // Encrypted: no password, or the wrong one, is a clear error that never shows it.
    let (ok, err) = check_config(&w, with_key(w.attest.key.clone()));
    assert!(
        !ok && err.contains("password_env or password_file"),
        "{err}"
    );
    let wrong = w.work.join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let (ok, err) = check_config(
        &w,
        AttestConfig {
            password_file: Some(wrong),
            ..w.attest.clone()
        },
    );
    assert!(!ok && err.contains("cannot decrypt"), "{err}");
    assert!(
        !err.contains("not-the-password") && !err.contains(password),
        "{err}"
    );

    let (ok, err) = check_config(
        &w,
        AttestConfig {
            verifier_id: "portcullis".into(),
            ..w.attest.clone()
        },
    );
    assert!(!ok && err.contains("verifier_id"), "{err}");
}
