//! The whole manifest path, in process, against the real upstream registry: a warm manifest
//! request for an image whose verdict is cached (a keyed rule) next to one that no rule covers
//! (`[policy] default = "allow"`). The difference is what a warm verdict costs a request.
//! Needs `docker-registry`, `skopeo` and `umoci` (scripts/setup --test).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portcullis::{App, Config};
use portcullis_testkit::cosign::{push_signature, simple_signing_payload, CosignKey, SigLayer};
use portcullis_testkit::{http, manifest_digest_in_registry, push, Image, Registry};

fn manifest_path(c: &mut Criterion) {
    let work = portcullis_testkit::tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "signed/app:v1");
    push(Image::Small, &upstream, "plain/app:v1");
    let digest = manifest_digest_in_registry(&upstream, "signed/app", "v1");
    let key = CosignKey::generate();
    key.write_public(&work.path().join("k.pub"));
    let payload = simple_signing_payload("signed/app", &digest);
    let layer = SigLayer {
        signature_b64: key.sign(&payload),
        payload,
        ..SigLayer::default()
    };
    push_signature(&upstream, "signed/app", &digest, &[layer]);
    let host = upstream.host();
    let toml = format!(
        r#"[cache]
dir = "{data}"
[[upstream]]
name = "{host}"
url = "{url}"
default = true
[policy]
default = "allow"
[[trust.key]]
name = "k"
path = "{key}"
[[rule]]
name = "signed"
images = ["{host}/signed/**"]
[[rule.authority]]
key = "k"
"#,
        data = work.path().join("data").display(),
        url = upstream.url(),
        key = work.path().join("k.pub").display(),
    );
    let config = Config::from_toml(&toml, "bench").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Arc::new(App::new(config).unwrap());
    rt.spawn(portcullis::server::serve(
        app,
        listener,
        std::future::pending(),
        std::time::Duration::from_secs(1),
    ));
    let signed = format!("http://{addr}/v2/signed/app/manifests/{digest}");
    let plain = format!("http://{addr}/v2/plain/app/manifests/v1");
    for url in [&signed, &plain] {
        assert_eq!(rt.block_on(http::get(url)).status, 200, "{url}");
    }
    let mut g = c.benchmark_group("warm manifest request");
    g.bench_function("verified (cached verdict)", |b| {
        b.iter(|| rt.block_on(http::get(&signed)))
    });
    g.bench_function("no rule (default allow)", |b| {
        b.iter(|| rt.block_on(http::get(&plain)))
    });
    g.finish();
}

criterion_group!(benches, manifest_path);
criterion_main!(benches);
