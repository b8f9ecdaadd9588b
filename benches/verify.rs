//! Micro-benchmarks of the request path's pure parts: hashing (against the 1.8 GB/s per-core
//! SHA-256 limit), path parsing and routing, `Accept` parsing, and `WWW-Authenticate` parsing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{header, HeaderMap, HeaderValue};
use portcullis::content::Accept;
use portcullis::route::{parse_path, validate_repo};
use portcullis::upstream::Challenge;
use portcullis_cache::{Digest, Hasher};

fn hashing(c: &mut Criterion) {
    let data = vec![7u8; 4 << 20];
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("4MiB in 64KiB frames", |b| {
        b.iter(|| {
            let mut h = Hasher::new();
            for frame in data.chunks(64 * 1024) {
                h.update(frame);
            }
            h.finish()
        })
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let path = format!("/v2/library/alpine/blobs/{digest}");
    c.bench_function("parse blob path", |b| b.iter(|| parse_path(&path).unwrap()));
    c.bench_function("parse digest", |b| {
        b.iter(|| digest.parse::<Digest>().unwrap())
    });
    c.bench_function("validate name", |b| {
        b.iter(|| validate_repo("ghcr.io-mirror/acme/team/service-name").unwrap())
    });
    let mut headers = HeaderMap::new();
    for t in [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ] {
        headers.append(header::ACCEPT, HeaderValue::from_static(t));
    }
    c.bench_function("parse Docker Accept lines", |b| {
        b.iter(|| Accept::from_headers(&headers).tag_key("latest"))
    });
    let challenge = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#;
    c.bench_function("parse WWW-Authenticate", |b| {
        b.iter(|| Challenge::parse(challenge).unwrap())
    });
}

criterion_group!(benches, hashing, parsing);
criterion_main!(benches);
