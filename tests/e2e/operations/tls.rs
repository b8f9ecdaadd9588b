//! 1. TLS on the listener.

use std::net::TcpStream;

use portcullis_testkit::{free_port, manifest_digest_in_registry, skopeo_copy, Containerd};

use super::support::*;

#[test]
fn tls_listener_serves_skopeo_containerd_and_curl_over_h2_and_http1() {
    let w = TlsWorld::new();
    let proxy = TlsProxy::start(
        &w.work.join("proxy"),
        &w.config(&w.upstream.host()),
        &["-k"],
    );
    let root = w.pki.pem("root");
    let cacert = root.to_str().unwrap();

    // curl, trusting only the root: the server must send the intermediate. ALPN picks h2 when
    // offered, HTTP/1.1 when not.
    let v2 = format!("{}/v2/", proxy.url());
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl(&[
            "--cacert",
            cacert,
            flag,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            &v2,
        ]);
        assert!(out.ok, "curl {flag}: {}\n{}", out.stderr, proxy.log());
        assert_eq!(out.stdout.trim(), format!("200 {version}"), "curl {flag}");
    }
    let health = curl(&["--cacert", cacert, &format!("{}/healthz", proxy.url())]);
    assert!(health.ok, "{}", health.stderr);
    assert_eq!(health.stdout.trim(), "ok");
    // A client that connects and never starts its handshake holds up nobody else.
    let idle = TcpStream::connect(proxy.addr).unwrap();
    assert_eq!(curl_status(&v2, &["--cacert", cacert]), Some(200));
    drop(idle);
    // Plain HTTP on the TLS port gets no registry answer.
    assert_ne!(
        curl_status(&format!("http://{}/v2/", proxy.host()), &[]),
        Some(200)
    );

    // skopeo verifying against the root CA in --src-cert-dir; the same pull without the CA
    // fails verification (so the pull above really was over verified TLS).
    let image = format!("{}/test/small:v1", proxy.host());
    let direct = w.work.join("direct");
    skopeo_copy(&format!("{}/test/small:v1", w.upstream.host()), &direct).unwrap();
    let cert_dir = w.cert_dir();
    let through = w.work.join("through");
    let out = skopeo(
        &[
            "--src-tls-verify=true",
            "--src-cert-dir",
            cert_dir.to_str().unwrap(),
        ],
        &image,
        &through,
    );
    assert!(out.ok, "skopeo over TLS: {}\n{}", out.stderr, proxy.log());
    assert_eq!(files(&direct), files(&through));
    let empty = w.work.join("no-ca");
    std::fs::create_dir_all(&empty).unwrap();
    let untrusted = skopeo(
        &[
            "--src-tls-verify=true",
            "--src-cert-dir",
            empty.to_str().unwrap(),
        ],
        &image,
        &w.work.join("untrusted"),
    );
    assert!(!untrusted.ok, "an unknown CA must fail verification");
    assert!(
        untrusted.stderr.contains("certificate") || untrusted.stderr.contains("x509"),
        "{}",
        untrusted.stderr
    );

    // containerd with hosts.toml: the mirror is the TLS proxy with `ca`; the fallback server is
    // a dead port, so only the proxy can have served the pull.
    let certs_d = w.work.join("certs.d");
    let host_dir = certs_d.join(w.upstream.host());
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:{dead}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
            dead = free_port(),
            mirror = proxy.url(),
            ca = root.display()
        ),
    )
    .unwrap();
    let ctd = Containerd::start(&w.work.join("ctd"));
    let reference = format!("{}/test/small:v1", w.upstream.host());
    ctd.pull(&reference, &certs_d)
        .unwrap_or_else(|e| panic!("containerd over TLS: {e}\n{}", proxy.log()));
    assert_eq!(
        ctd.image_digest(&reference).unwrap(),
        manifest_digest_in_registry(&w.upstream, "test/small", "v1")
    );
    assert!(
        proxy.log().contains(&format!("ns={}", w.upstream.host())),
        "containerd's requests reached the proxy: {}",
        proxy.log()
    );
}
