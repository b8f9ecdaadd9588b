//! Cross-checks the test TSA's RFC 3161 responses, in both `genTime` forms (whole seconds and with
//! a fraction of a second), with an independent implementation: OpenSSL's `ts` command (the
//! e2e tests already use the openssl CLI). It reads a bundle's timestamp and signature and the
//! trusted root's TSA chain, as any verifier of the bundle would, and checks the CMS signature,
//! the chain, the ESS signing certificate and the message imprint (`-data`: the signature
//! bytes), then prints the time it read.

mod common;

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use portcullis_testkit::{tempdir, Signer, TestSigstore};
use serde_json::Value;

/// Runs `openssl args...` in `dir`, panicking with its output unless it succeeds.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (the e2e tests need it too)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

/// PEM of a DER certificate.
fn pem(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// Verifies the bundle's first timestamp with `openssl ts -verify` against the TSA chain of
/// `ss`'s trusted root, and returns the `Time stamp:` line `openssl ts -reply -text` reads.
fn openssl_verifies(ss: &TestSigstore, bundle: &str) -> String {
    let dir = tempdir();
    let b: Value = serde_json::from_str(bundle).unwrap();
    let signature = b["messageSignature"]["signature"].as_str().unwrap();
    std::fs::write(dir.path().join("sig.bin"), B64.decode(signature).unwrap()).unwrap();
    std::fs::write(
        dir.path().join("response.der"),
        signed_timestamps(bundle).remove(0),
    )
    .unwrap();
    let root: Value = serde_json::from_str(&ss.trusted_root_json()).unwrap();
    let chain = &root["timestampAuthorities"][0]["certChain"]["certificates"];
    let der = |i: usize| B64.decode(chain[i]["rawBytes"].as_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), pem(&der(0))).unwrap();
    std::fs::write(dir.path().join("root.pem"), pem(&der(1))).unwrap();

    let verified = openssl(
        dir.path(),
        &[
            "ts",
            "-verify",
            "-in",
            "response.der",
            "-data",
            "sig.bin",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "leaf.pem",
        ],
    );
    assert!(verified.contains("Verification: OK"), "{verified}");
    let text = openssl(
        dir.path(),
        &["ts", "-reply", "-in", "response.der", "-text"],
    );
    let line = text.lines().find(|l| l.starts_with("Time stamp:"));
    line.unwrap_or_else(|| panic!("no time in:\n{text}"))
        .to_owned()
}

#[test]
fn openssl_verifies_whole_second_and_fractional_tokens() {
    let ss = TestSigstore::new();
    let leaf = leaf(&ss);
    let digest = digest_of(MANIFEST);
    let bundle = |millis: u16| {
        ss.message_bundle(Signer::Keyless(&leaf), &digest)
            .at(SIGNED_AT)
            .without_set()
            .with_timestamp_millis_at(SIGNED_AT, millis)
            .build()
    };
    // SIGNED_AT is 2023-11-14T22:14:20Z.
    for (millis, time) in [
        (0, "Nov 14 22:14:20 2023 GMT"),
        (345, "Nov 14 22:14:20.345 2023 GMT"),
        (5, "Nov 14 22:14:20.005 2023 GMT"),
    ] {
        let bundle = bundle(millis);
        assert_eq!(
            openssl_verifies(&ss, &bundle),
            format!("Time stamp: {time}")
        );
        // And sigstore-verify (the patched sigstore-tsa) agrees, to the millisecond.
        let result = keyless(&ss, &bundle, &digest).unwrap();
        let times: Vec<i64> = result
            .verified_timestamps()
            .iter()
            .map(|t| t.as_millisecond())
            .collect();
        assert_eq!(times, [SIGNED_AT * 1000 + i64::from(millis)]);
    }
}
