//! 1. Connected -> air-gapped round trip.

use portcullis_testkit::{
    sha256_hex, skopeo_copy, skopeo_copy_all, write_hosts_toml, Containerd, Fault, FaultServer,
    Image,
};

use super::layout::files;
use super::support::World;

#[test]
fn mirror_to_tar_import_offline_and_serve_skopeo_and_containerd_without_upstream() {
    let mut w = World::new();
    let app = w.push_signed(Image::Small, "keyed/app", "v1");
    let multi = w.push_signed(Image::Multi, "keyed/multi", "v1");
    let (app_ref, multi_ref) = (w.name("keyed/app:v1"), w.name("keyed/multi:v1"));
    let a = w.connected("a", &[app_ref.clone(), multi_ref.clone()]);
    let tar = w.work.join("transfer/images.tar");
    std::fs::create_dir_all(tar.parent().unwrap()).unwrap();
    a.mirror(&tar).expect_code(0);
    assert!(tar.is_file(), "mirror wrote no {}", tar.display());

    // What the upstream itself serves, to compare with what the air-gapped side serves.
    let direct = w.work.join("direct");
    skopeo_copy(&app_ref, &direct.join("app")).unwrap();
    skopeo_copy_all(&multi_ref, &direct.join("multi")).unwrap();
    w.upstream.stop();

    let fault = FaultServer::start(Fault::Status(500));
    let b = w.offline("b", &fault);
    b.import(&tar, None)
        .expect_code(0)
        .expect_line("imported", &app_ref, &app)
        .expect_line("imported", &multi_ref, &multi);

    let p = b.serve();
    let through = w.work.join("through");
    skopeo_copy(&format!("{}/keyed/app:v1", p.host()), &through.join("app"))
        .unwrap_or_else(|e| panic!("skopeo offline: {e}\n{}", p.log_contents()));
    skopeo_copy_all(
        &format!("{}/keyed/multi:v1", p.host()),
        &through.join("multi"),
    )
    .unwrap_or_else(|e| panic!("skopeo offline: {e}\n{}", p.log_contents()));
    for image in ["app", "multi"] {
        assert_eq!(
            files(&direct.join(image)),
            files(&through.join(image)),
            "{image}: offline bytes differ from the upstream's"
        );
    }
    assert_eq!(
        sha256_hex(&std::fs::read(through.join("app/manifest.json")).unwrap()),
        app
    );
    assert_eq!(
        sha256_hex(&std::fs::read(through.join("multi/manifest.json")).unwrap()),
        multi
    );

    // containerd asks with ?ns=<upstream host>; its fallback server is a dead port.
    let ctd = Containerd::start(&w.work.join("ctd"));
    let hosts = write_hosts_toml(
        &w.work.join("certs.d"),
        &w.host(),
        "http://127.0.0.1:9",
        &p.url(),
    );
    for (reference, digest) in [(&app_ref, &app), (&multi_ref, &multi)] {
        ctd.pull(reference, &hosts)
            .unwrap_or_else(|e| panic!("containerd {reference}: {e}\n{}", p.log_contents()));
        assert_eq!(
            ctd.image_digest(reference).as_deref(),
            Some(digest.as_str()),
            "{reference}"
        );
    }
    assert_eq!(
        fault.connections(),
        0,
        "an offline instance connected to its upstream\n{}",
        p.log_contents()
    );
}
