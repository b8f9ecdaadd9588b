//! 3. Certificate reload.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis_testkit::{push, sha256_hex, ConfigBuilder, Image};

use super::pki::{served_serial, Use};
use super::support::*;

#[test]
fn certificates_reload_on_sighup_and_file_change_without_dropping_a_download() {
    let w = TlsWorld::new();
    push(Image::Big, &w.upstream, "test/big:v1");
    let pki = &w.pki;
    // The files the config names, replaced in place below.
    let cert = w.work.join("tls.crt");
    let key = w.work.join("tls.key");
    std::fs::copy(pki.dir.join("srv-chain.pem"), &cert).unwrap();
    std::fs::copy(pki.key("srv"), &key).unwrap();
    let config =
        ConfigBuilder::pull_through(&w.upstream.host(), &w.upstream.url()).tls(&cert, &key);
    let proxy = TlsProxy::start(&w.work.join("proxy"), &config, &["-k"]);
    let root = pki.pem("root");
    let cacert = root.to_str().unwrap();
    let v2 = format!("{}/v2/", proxy.url());
    assert_eq!(served_serial(proxy.addr).as_deref(), Some("1001"));

    // A slow download (about 8 s for the 50 MiB layer) in flight across the reload.
    let manifest = curl(&[
        "--cacert",
        cacert,
        &format!("{}/v2/test/big/manifests/v1", proxy.url()),
    ]);
    assert!(manifest.ok, "{}\n{}", manifest.stderr, proxy.log());
    let m: serde_json::Value = serde_json::from_str(&manifest.stdout).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let downloaded = w.work.join("layer.bin");
    let mut download = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--http1.1",
            "--limit-rate",
            "6M",
            "--cacert",
            cacert,
            "-o",
        ])
        .arg(&downloaded)
        .arg(format!("{}/v2/test/big/blobs/{layer}", proxy.url()))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        download.try_wait().unwrap().is_none(),
        "the download should still be running"
    );

    // New certificate and key (another serial, an RSA key this time), then SIGHUP.
    pki.issue("int", "srv2", Use::Server, 0x2002, true);
    std::fs::write(&key, std::fs::read(pki.key("srv2")).unwrap()).unwrap();
    std::fs::write(&cert, std::fs::read(pki.chain("srv2", &["int"])).unwrap()).unwrap();
    proxy
        .reload()
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_eq!(
        served_serial(proxy.addr).as_deref(),
        Some("2002"),
        "new connections get the new certificate after SIGHUP:\n{}",
        proxy.log()
    );
    assert_eq!(curl_status(&v2, &["--cacert", cacert]), Some(200));
    assert!(
        download.try_wait().unwrap().is_none(),
        "the download should have outlived the reload"
    );
    let status = download.wait().unwrap();
    let mut err = String::new();
    download
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "the download begun before the reload: {err}\n{}",
        proxy.log()
    );
    assert_eq!(sha256_hex(&std::fs::read(&downloaded).unwrap()), layer);

    // A change of the files alone is picked up too.
    pki.issue("int", "srv3", Use::Server, 0x3003, false);
    std::fs::write(&key, std::fs::read(pki.key("srv3")).unwrap()).unwrap();
    std::fs::write(&cert, std::fs::read(pki.chain("srv3", &["int"])).unwrap()).unwrap();
    assert!(
        eventually(Duration::from_secs(8), || served_serial(proxy.addr)
            .as_deref()
            == Some("3003")),
        "new connections get the new certificate after the files change (serving {:?}):\n{}",
        served_serial(proxy.addr),
        proxy.log()
    );
    assert_eq!(curl_status(&v2, &["--cacert", cacert]), Some(200));

    // Not in so many words in the contract, but by analogy with a bad config: a broken
    // certificate file is not taken; the last good certificate stays in force.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot a certificate\n").unwrap();
    let rejected = proxy
        .reload()
        .expect_err("a broken certificate file is not taken");
    assert_eq!(
        served_serial(proxy.addr).as_deref(),
        Some("3003"),
        "{rejected}"
    );
    assert_eq!(
        curl_status(&v2, &["--cacert", cacert]),
        Some(200),
        "{}",
        proxy.log()
    );
}

#[test]
fn a_rejected_reload_leaves_the_certificate_in_force_too() {
    let w = TlsWorld::new();
    let config = w.config(&w.upstream.host());
    let proxy = TlsProxy::start(&w.work.join("proxy"), &config, &["-k"]);
    assert_eq!(served_serial(proxy.addr).as_deref(), Some("1001"));
    w.pki.issue("int", "srv2", Use::Server, 0x2002, false);
    let with_new_cert = config.tls(&w.pki.chain("srv2", &["int"]), &w.pki.key("srv2"));
    // The same new certificate, in a config that cannot be applied: the upstream's credentials
    // come from environment variables that are not set.
    let unusable = with_new_cert
        .clone()
        .with_upstream(&w.upstream.host(), |u| {
            u.username_env = Some("PORTCULLIS_TEST_UNSET_USER".into());
            u.password_env = Some("PORTCULLIS_TEST_UNSET_PASS".into());
        });
    let rejected = proxy.reconfigure(&unusable).unwrap_err();
    assert_eq!(
        served_serial(proxy.addr).as_deref(),
        Some("1001"),
        "a rejected configuration's certificate must not be put in force:\n{rejected}"
    );

    proxy
        .reconfigure(&with_new_cert)
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_eq!(
        served_serial(proxy.addr).as_deref(),
        Some("2002"),
        "new tls_cert/tls_key paths in a reloaded config are put in force:\n{}",
        proxy.log()
    );
}
