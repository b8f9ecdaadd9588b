//! Micro-benchmarks of the content store: writing a blob (hash + write + fsync + rename +
//! record), reading a hot small blob, and a manifest hit.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_cache::{Digest, Store, StoreConfig};

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig {
        dir: dir.path().to_owned(),
        max_size: 1 << 40,
        hot_bytes: 64 << 20,
    })
    .unwrap();

    let big: Vec<u8> = (0..32u32 << 20)
        .map(|i| i.wrapping_mul(2_654_435_761) as u8)
        .collect();
    let mut g = c.benchmark_group("blob write");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.sample_size(10);
    let mut n = 0u32;
    g.bench_function("32MiB, 256KiB writes, commit", |b| {
        b.iter(|| {
            // A different blob each time, so every iteration really writes.
            n += 1;
            let mut data = big.clone();
            data[..4].copy_from_slice(&n.to_le_bytes());
            let d = Digest::of(&data);
            let mut w = store.blob_writer(&d, Some(data.len() as u64)).unwrap();
            for chunk in data.chunks(256 * 1024) {
                w.write_slice(chunk).unwrap();
            }
            w.commit().unwrap()
        })
    });
    g.finish();

    let small = vec![9u8; 64 * 1024];
    let d = Digest::of(&small);
    let mut w = store.blob_writer(&d, None).unwrap();
    w.write_slice(&small).unwrap();
    w.commit().unwrap();
    c.bench_function("hot 64KiB blob", |b| {
        b.iter(|| store.blob(&d).unwrap().unwrap())
    });

    let manifest = Bytes::from(vec![b' '; 1500]);
    let md = Digest::of(&manifest);
    store
        .put_manifest(
            &md,
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
            &[],
        )
        .unwrap();
    c.bench_function("manifest hit", |b| {
        b.iter(|| store.manifest(&md).unwrap().unwrap())
    });
}

criterion_group!(benches, store);
criterion_main!(benches);
