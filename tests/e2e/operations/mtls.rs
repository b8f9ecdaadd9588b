//! 2. Client certificates.

use std::time::Duration;

use super::pki::Use;
use super::support::*;

#[test]
fn client_ca_refuses_clients_without_a_certificate_it_signed_and_reloads() {
    let w = TlsWorld::new();
    let pki = &w.pki;
    pki.root("clients");
    pki.issue("clients", "alice", Use::Client, 0x501, false);
    // Signed by another CA (the server's root): must be refused too.
    pki.issue("root", "mallory", Use::Client, 0x502, false);
    let client_ca = w.work.join("client-ca.pem");
    std::fs::copy(pki.pem("clients"), &client_ca).unwrap();
    let abs = |name: &str, ext: &str| pki.dir.join(format!("{name}.{ext}")).display().to_string();
    let (alice_pem, alice_key) = (abs("alice", "pem"), abs("alice", "key"));
    let proxy = TlsProxy::start(
        &w.work.join("proxy"),
        &w.config(&w.upstream.host()).client_ca(&client_ca),
        &["-k", "--cert", &alice_pem, "--key", &alice_key],
    );
    let root = pki.pem("root");
    let cacert = root.to_str().unwrap();
    let v2 = format!("{}/v2/", proxy.url());

    let anonymous = curl(&[
        "--cacert",
        cacert,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &v2,
    ]);
    assert!(
        !anonymous.ok,
        "no client certificate: curl must fail, got {} {}",
        anonymous.stdout, anonymous.stderr
    );
    // With TLS 1.2 the refusal is inside the handshake: curl exits 35 (SSL connect error) or 98
    // (client certificate required alert).
    let anonymous12 = curl(&[
        "--cacert",
        cacert,
        "--tls-max",
        "1.2",
        "-o",
        "/dev/null",
        &v2,
    ]);
    assert!(
        matches!(anonymous12.code, Some(35 | 98)),
        "{:?} {}",
        anonymous12.code,
        anonymous12.stderr
    );
    let (mallory_pem, mallory_key) = (abs("mallory", "pem"), abs("mallory", "key"));
    assert_eq!(
        curl_status(
            &v2,
            &[
                "--cacert",
                cacert,
                "--cert",
                &mallory_pem,
                "--key",
                &mallory_key
            ]
        ),
        None,
        "a client certificate from another CA is refused"
    );
    for flag in ["--http2", "--http1.1"] {
        assert_eq!(
            curl_status(
                &v2,
                &["--cacert", cacert, flag, "--cert", &alice_pem, "--key", &alice_key]
            ),
            Some(200),
            "{flag}: {}",
            proxy.log()
        );
    }

    // skopeo presenting the client pair from its cert dir (`*.cert` + `*.key`).
    let cert_dir = w.cert_dir();
    std::fs::copy(pki.pem("alice"), cert_dir.join("alice.cert")).unwrap();
    std::fs::copy(pki.key("alice"), cert_dir.join("alice.key")).unwrap();
    let out = skopeo(
        &[
            "--src-tls-verify=true",
            "--src-cert-dir",
            cert_dir.to_str().unwrap(),
        ],
        &format!("{}/test/small:v1", proxy.host()),
        &w.work.join("pulled"),
    );
    assert!(
        out.ok,
        "skopeo with a client cert: {}\n{}",
        out.stderr,
        proxy.log()
    );

    // A new client CA file takes effect on SIGHUP: its clients get in, alice no longer does.
    pki.root("clients2");
    pki.issue("clients2", "bob", Use::Client, 0x601, false);
    let (bob_pem, bob_key) = (abs("bob", "pem"), abs("bob", "key"));
    std::fs::copy(pki.pem("clients2"), &client_ca).unwrap();
    proxy
        .reload()
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    let bob = ["--cacert", cacert, "--cert", &bob_pem, "--key", &bob_key];
    assert_eq!(
        curl_status(&v2, &bob),
        Some(200),
        "a client of the new client_ca is let in after SIGHUP:\n{}",
        proxy.log()
    );
    assert_eq!(
        curl_status(
            &v2,
            &["--cacert", cacert, "--cert", &alice_pem, "--key", &alice_key]
        ),
        None,
        "a client of the old client_ca is refused after the reload"
    );

    // Back to the first client CA by a change of the file alone (no signal).
    std::fs::copy(pki.pem("clients"), &client_ca).unwrap();
    let alice = [
        "--cacert", cacert, "--cert", &alice_pem, "--key", &alice_key,
    ];
    assert!(
        eventually(Duration::from_secs(8), || curl_status(&v2, &alice)
            == Some(200)),
        "a change of the client_ca file is picked up without SIGHUP:\n{}",
        proxy.log()
    );
    assert_eq!(curl_status(&v2, &bob), None);
}
