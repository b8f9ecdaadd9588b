//! The store's promises: nothing unverified becomes visible, interrupted writes leave nothing,
//! and eviction is least-recently-used but never takes what a kept manifest references.

use std::sync::Arc;

use bytes::Bytes;
use portcullis_cache::{Blob, Digest, Error, Store, StoreConfig, TagRecord};

fn open(dir: &std::path::Path, max_size: u64) -> Arc<Store> {
    Store::open(&StoreConfig {
        dir: dir.to_owned(),
        max_size,
        hot_bytes: 1 << 20,
    })
    .unwrap()
}

fn put_blob(store: &Arc<Store>, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let mut w = store.blob_writer(&d, Some(data.len() as u64)).unwrap();
    for chunk in data.chunks(7) {
        w.write_slice(chunk).unwrap();
    }
    w.commit().unwrap();
    d
}

fn read(blob: Blob) -> Vec<u8> {
    match blob {
        Blob::Memory(b) => b.to_vec(),
        Blob::File { file, size } => {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0; size as usize];
            file.read_exact_at(&mut buf, 0).unwrap();
            buf
        }
    }
}

#[test]
fn a_committed_blob_reads_back_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let data = vec![42u8; 300_000];
    let d = put_blob(&store, &data);
    assert_eq!(read(store.blob(&d).unwrap().unwrap()), data);
    assert_eq!(store.size(), 300_000);
    drop(store);
    let store = open(dir.path(), 1 << 30);
    assert_eq!(store.has_blob(&d).unwrap(), Some(300_000));
    assert_eq!(store.size(), 300_000);
}

#[test]
fn a_mismatched_or_abandoned_write_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let claimed = Digest::of(b"the real thing");
    let mut w = store.blob_writer(&claimed, None).unwrap();
    w.write_slice(b"a forgery").unwrap();
    let tmp = w.path().to_owned();
    assert!(matches!(w.commit(), Err(Error::DigestMismatch { .. })));
    assert!(!tmp.exists());
    assert!(store.blob(&claimed).unwrap().is_none());

    let mut w = store.blob_writer(&claimed, Some(3)).unwrap();
    assert!(matches!(
        w.write_slice(b"too long"),
        Err(Error::SizeMismatch { .. })
    ));
    let tmp = w.path().to_owned();
    drop(w);
    assert!(!tmp.exists());
    assert_eq!(store.size(), 0);

    let m = Bytes::from_static(b"{}");
    assert!(store.put_manifest(&claimed, "x", &m, &[]).is_err());
    assert!(store.manifest(&claimed).unwrap().is_none());
}

#[test]
fn leftovers_of_a_crash_are_cleared_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let d = Digest::of(b"partial");
    drop(store);
    // What a kill -9 mid-write leaves: a partial file in tmp/, no record.
    let tmp = dir.path().join("tmp").join(format!("{}.1.0", d.hex()));
    std::fs::write(&tmp, b"part").unwrap();
    let store = open(dir.path(), 1 << 30);
    assert!(!tmp.exists());
    assert!(store.blob(&d).unwrap().is_none());
    assert_eq!(store.size(), 0);
}

#[test]
fn tags_and_links_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let rec = TagRecord {
        digest: Digest::of(b"m").to_string(),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        fetched_at_ms: 7,
    };
    store.put_tag("r.io/a", "v1", &rec).unwrap();
    assert_eq!(store.tag("r.io/a", "v1").unwrap(), Some(rec));
    assert_eq!(store.tag("r.io/a", "v2").unwrap(), None);
    let d = Digest::of(b"m");
    assert!(!store.is_linked("r.io/a", &d).unwrap());
    store.link("r.io/a", &d).unwrap();
    assert!(store.is_linked("r.io/a", &d).unwrap());
    assert!(!store.is_linked("r.io/b", &d).unwrap());
}

#[test]
fn eviction_is_lru_and_spares_referenced_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 30);
    let kept_layer = put_blob(&store, &[1u8; 1000]);
    let manifest = Bytes::from(format!(r#"{{"layers":[{{"digest":"{kept_layer}"}}]}}"#));
    let md = Digest::of(&manifest);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let old = put_blob(&store, &[2u8; 1000]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    let recent = put_blob(&store, &[3u8; 1000]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    store
        .put_manifest(
            &md,
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
            std::slice::from_ref(&kept_layer),
        )
        .unwrap();
    let total = store.size();
    // Room for everything but one unreferenced blob: the least recently used one goes, not the
    // older layer that the manifest keeps.
    let done = store.evict_until(total - 1).unwrap();
    assert_eq!(done.items, 1);
    assert!(store.has_blob(&old).unwrap().is_none());
    assert!(store.has_blob(&kept_layer).unwrap().is_some());
    assert!(store.has_blob(&recent).unwrap().is_some());
    // Squeezed to nothing, the manifest goes first, then its layer.
    store.evict_until(0).unwrap();
    assert_eq!(store.size(), 0);
    assert!(store.manifest(&md).unwrap().is_none());
}

#[test]
fn retain_meta_deletes_what_the_caller_refuses_in_one_namespace_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig {
        dir: dir.path().to_owned(),
        max_size: 1 << 30,
        hot_bytes: 1 << 20,
    })
    .unwrap();
    store.put_meta("verdict", "old\0a", b"1").unwrap();
    store.put_meta("verdict", "new\0a", b"2").unwrap();
    store.put_meta("gate", "old\0a", b"3").unwrap();
    let gone = store
        .retain_meta("verdict", |k| k.starts_with("new\0"))
        .unwrap();
    assert_eq!(gone, 1);
    assert_eq!(store.meta("verdict", "old\0a").unwrap(), None);
    assert_eq!(
        store.meta("verdict", "new\0a").unwrap(),
        Some(b"2".to_vec())
    );
    assert_eq!(store.meta("gate", "old\0a").unwrap(), Some(b"3".to_vec()));
}

/// Records count towards `max_size` (clients can make them): what is written, overwritten,
/// deleted and collected moves the size, and a reopened store counts the same.
#[test]
fn records_count_towards_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        dir: dir.path().to_owned(),
        max_size: 1 << 30,
        hot_bytes: 1 << 20,
    };
    let store = Store::open(&cfg).unwrap();
    let empty = store.size();
    let record = |ns: &str, key: &str, len: usize| (format!("x/{ns}/{key}").len() + len) as u64;
    store.put_meta("verdict", "a", &[0; 100]).unwrap();
    store.put_meta("gate", "b", &[0; 10]).unwrap();
    assert_eq!(
        store.size(),
        empty + record("verdict", "a", 100) + record("gate", "b", 10)
    );
    store.put_meta("verdict", "a", &[0; 40]).unwrap(); // an overwrite replaces, not adds
    assert_eq!(
        store.size(),
        empty + record("verdict", "a", 40) + record("gate", "b", 10)
    );
    drop(store);
    let store = Store::open(&cfg).unwrap();
    assert_eq!(
        store.size(),
        empty + record("verdict", "a", 40) + record("gate", "b", 10)
    );
    store.delete_meta("verdict", "a").unwrap();
    store.delete_meta("verdict", "never-written").unwrap();
    assert_eq!(store.retain_meta("gate", |_| false).unwrap(), 1);
    assert_eq!(store.size(), empty);
}
