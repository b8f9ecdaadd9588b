//! 3. Tampered transfers.

use std::path::Path;

use portcullis_testkit::http;
use portcullis_testkit::{Fault, FaultServer};

use super::layout::*;
use super::run::Run;
use super::support::{Instance, Mirrored};

/// Imports `layout` into a fresh offline instance; returns the run, the instance and its fault.
fn import_fresh(m: &Mirrored, sub: &str, layout: &Path) -> (Run, Instance, FaultServer) {
    let fault = FaultServer::start(Fault::Status(500));
    let b = m.w.offline(sub, &fault);
    let run = b.import(layout, None);
    eprintln!("{run}");
    (run, b, fault)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_in_a_layer_rejects_that_image_only() {
    let m = Mirrored::new();
    let exported = m.w.work.join("export");
    m.export(&exported);
    let layout = m.w.work.join("flipped");
    copy_dir(&exported, &layout);
    let layer = m.arm64_layer(&layout);
    let file = blob_path(&layout, &layer);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, &bytes).unwrap();

    let (run, b, fault) = import_fresh(&m, "b", &layout);
    run.expect_code(1)
        .expect_rejected(&m.multi_ref(), &m.multi, &[&layer, "digest"])
        .expect_line("imported", &m.app_ref(), &m.app);
    assert!(run.line("imported", &m.multi_ref()).is_none(), "{run}");
    let hex = layer.strip_prefix("sha256:").unwrap();
    assert!(
        !b.data().join("blobs/sha256").join(hex).exists(),
        "the tampered layer was stored under its digest"
    );

    let p = b.serve();
    let log = || p.log_contents();
    assert_not_served(&p.url(), "keyed/multi/manifests/v1", &log).await;
    assert_not_served(
        &p.url(),
        &format!("keyed/multi/manifests/{}", m.multi),
        &log,
    )
    .await;
    assert_not_served(&p.url(), &format!("keyed/multi/blobs/{layer}"), &log).await;
    assert_not_served(&p.url(), &format!("keyed/app/blobs/{layer}"), &log).await;
    let app = http::get(&format!("{}/v2/keyed/app/manifests/v1", p.url())).await;
    assert_eq!(app.status, 200, "the untouched image\n{}", log());
    assert_eq!(fault.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_swapped_for_another_images_is_rejected() {
    let m = Mirrored::new();
    let exported = m.w.work.join("export");
    m.export(&exported);
    let layout = m.w.work.join("swapped");
    copy_dir(&exported, &layout);
    // keyed/app's signature entry now points at keyed/multi's signature manifest.
    let app_sig = sig_name(&m.w.name("keyed/app"), &m.app);
    let multi_sig = entry(&layout, &sig_name(&m.w.name("keyed/multi"), &m.multi));
    let mut index = index_of(&layout);
    for d in index["manifests"].as_array_mut().unwrap() {
        if d["annotations"][REF_NAME] == app_sig.as_str() {
            for k in ["mediaType", "digest", "size"] {
                d[k] = multi_sig[k].clone();
            }
        }
    }
    write_index(&layout, &index);

    let (run, b, fault) = import_fresh(&m, "b", &layout);
    run.expect_code(1)
        .expect_rejected(
            &m.app_ref(),
            &m.app,
            &["digest mismatch in the payload", &m.multi],
        )
        .expect_line("imported", &m.multi_ref(), &m.multi);
    let p = b.serve();
    let log = || p.log_contents();
    assert_not_served(&p.url(), "keyed/app/manifests/v1", &log).await;
    assert_not_served(&p.url(), &format!("keyed/app/manifests/{}", m.app), &log).await;
    let multi = http::get(&format!("{}/v2/keyed/multi/manifests/v1", p.url())).await;
    assert_eq!(
        multi.status,
        200,
        "the image whose signature is intact\n{}",
        log()
    );
    assert_eq!(fault.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_without_its_signature_is_rejected() {
    let m = Mirrored::new();
    let exported = m.w.work.join("export");
    m.export(&exported);
    let layout = m.w.work.join("unsigned");
    copy_dir(&exported, &layout);
    let app_sig = sig_name(&m.w.name("keyed/app"), &m.app);
    let mut index = index_of(&layout);
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|d| d["annotations"][REF_NAME] != app_sig.as_str());
    write_index(&layout, &index);

    let (run, b, fault) = import_fresh(&m, "b", &layout);
    run.expect_code(1)
        .expect_rejected(&m.app_ref(), &m.app, &["no signature found"])
        .expect_line("imported", &m.multi_ref(), &m.multi);
    let p = b.serve();
    let log = || p.log_contents();
    assert_not_served(&p.url(), "keyed/app/manifests/v1", &log).await;
    assert_not_served(&p.url(), &format!("keyed/app/manifests/{}", m.app), &log).await;
    assert_eq!(fault.connections(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_tar_or_a_missing_layout_exits_2_and_imports_nothing() {
    let m = Mirrored::new();
    let tar = m.w.work.join("export.tar");
    m.export(&tar);
    let bytes = std::fs::read(&tar).unwrap();
    let cut = m.w.work.join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();

    let (run, b, fault) = import_fresh(&m, "b", &cut);
    run.expect_code(2);
    assert!(
        !run.stderr.trim().is_empty(),
        "stderr must say what is wrong: {run}"
    );
    assert!(run.lines_starting("imported").is_empty(), "{run}");

    let no_index = m.w.work.join("no-index");
    std::fs::create_dir_all(no_index.join("blobs/sha256")).unwrap();
    let run = b.import(&no_index, None);
    run.expect_code(2);
    assert!(!run.stderr.trim().is_empty(), "{run}");
    let run = b.import(&m.w.work.join("does-not-exist.tar"), None);
    run.expect_code(2);
    assert!(!run.stderr.trim().is_empty(), "{run}");

    let p = b.serve();
    let log = || p.log_contents();
    for repo in ["keyed/app", "keyed/multi"] {
        assert_not_served(&p.url(), &format!("{repo}/manifests/v1"), &log).await;
    }
    assert_eq!(fault.connections(), 0);
}
