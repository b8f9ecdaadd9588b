//! The export format.

use std::process::Command;

use portcullis_testkit::{sha256_hex, skopeo_copy, Fault, FaultServer, Image};

use super::layout::{entry, read_json, ref_names, sig_name};
use super::support::{Mirrored, World};

#[test]
fn export_names_images_and_signatures_registry_repo_tag_and_blobs_match_their_names() {
    let m = Mirrored::new();
    let layout = m.w.work.join("export");
    m.export(&layout);
    let mut want = vec![
        m.app_ref(),
        sig_name(&m.w.name("keyed/app"), &m.app),
        m.multi_ref(),
        sig_name(&m.w.name("keyed/multi"), &m.multi),
    ];
    want.sort();
    assert_eq!(ref_names(&layout), want);
    assert_eq!(entry(&layout, &m.app_ref())["digest"], m.app.as_str());
    assert_eq!(entry(&layout, &m.multi_ref())["digest"], m.multi.as_str());
    let oci_layout = read_json(&layout.join("oci-layout"));
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0");
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let actual = sha256_hex(&std::fs::read(e.path()).unwrap());
        assert_eq!(actual, format!("sha256:{name}"), "blob file {name}");
    }

    let tar = m.w.work.join("export.tar");
    m.export(&tar);
    let listing = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    assert!(listing.status.success(), "tar -tf {}", tar.display());
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in ["index.json", "oci-layout"] {
        assert!(
            listing.lines().any(|l| l.trim_start_matches("./") == f),
            "{f} not in the tar:\n{listing}"
        );
    }
}

#[test]
fn export_after_an_ordinary_pull_carries_the_signature() {
    let w = World::new();
    let app = w.push_signed(Image::Small, "keyed/app", "v1");
    let a = w.connected("a", &[]);
    let mut p = a.serve();
    skopeo_copy(
        &format!("{}/keyed/app:v1", p.host()),
        &w.work.join("pulled"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    p.terminate();
    drop(p);
    let layout = w.work.join("export");
    a.export(&[w.name("keyed/app:v1")], &layout).expect_code(0);
    let names = ref_names(&layout);
    assert!(
        names.contains(&sig_name(&w.name("keyed/app"), &app)),
        "the signature manifest is missing from the export: {names:?}"
    );
    let fault = FaultServer::start(Fault::Status(500));
    w.offline("b", &fault)
        .import(&layout, None)
        .expect_code(0)
        .expect_line("imported", &w.name("keyed/app:v1"), &app);
}

#[test]
fn mirror_exits_1_when_an_image_is_denied_and_exports_only_what_passed() {
    let w = World::new();
    let app = w.push_signed(Image::Small, "keyed/app", "v1");
    w.push(Image::Small, "keyed/bare", "v1");
    let a = w.connected("a", &[w.name("keyed/app:v1"), w.name("keyed/bare:v1")]);
    let out = w.work.join("mirror-out");
    let run = a.mirror(&out);
    run.expect_code(1);
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains(&w.name("keyed/bare")),
        "the denied image is not named: {run}"
    );
    if out.join("index.json").exists() {
        let names = ref_names(&out);
        assert!(
            !names.iter().any(|n| n.contains("keyed/bare")),
            "a denied image was exported: {names:?}"
        );
        assert!(names.contains(&w.name("keyed/app:v1")), "{names:?}");
        assert_eq!(entry(&out, &w.name("keyed/app:v1"))["digest"], app.as_str());
    }
}

#[test]
fn mirror_expands_tag_globs_from_the_upstream_tag_list() {
    let w = World::new();
    let v1 = w.push_signed(Image::Small, "keyed/app", "v1.0");
    let v2 = w.push_signed(Image::DockerV2s2, "keyed/app", "v1.1");
    w.push_signed(Image::Small, "keyed/app", "v2.0");
    let a = w.connected("a", &[w.name("keyed/app:v1.*")]);
    let out = w.work.join("glob-out");
    let run = a.mirror(&out);
    run.expect_code(0);
    let names = ref_names(&out);
    assert!(names.contains(&w.name("keyed/app:v1.0")), "{names:?}");
    assert!(names.contains(&w.name("keyed/app:v1.1")), "{names:?}");
    assert!(!names.contains(&w.name("keyed/app:v2.0")), "{names:?}");
    assert_eq!(
        entry(&out, &w.name("keyed/app:v1.0"))["digest"],
        v1.as_str()
    );
    assert_eq!(
        entry(&out, &w.name("keyed/app:v1.1"))["digest"],
        v2.as_str()
    );
}
