//! 4. A layout written by a third-party tool.

use portcullis_testkit::cosign::signature_tag;
use portcullis_testkit::{skopeo_copy, Fault, FaultServer, Image};

use super::layout::{entry, files, skopeo_oci};
use super::support::World;

#[test]
fn a_layout_written_by_skopeo_imports_with_name_and_serves_offline() {
    let w = World::new();
    let app = w.push_signed(Image::Small, "keyed/app", "v1");
    let oci = w.work.join("skopeo-oci");
    let sig = signature_tag(&app);
    for tag in ["v1", sig.as_str()] {
        skopeo_oci(&w.name(&format!("keyed/app:{tag}")), &oci, tag);
    }
    assert_eq!(
        entry(&oci, "v1")["digest"],
        app.as_str(),
        "skopeo kept the manifest"
    );

    let fault = FaultServer::start(Fault::Status(500));
    let b = w.offline("b", &fault);
    let run = b.import(&oci, Some(&w.name("keyed/app")));
    run.expect_code(0)
        .expect_line("imported", &w.name("keyed/app:v1"), &app);
    assert!(run.lines_starting("rejected").is_empty(), "{run}");

    let direct = w.work.join("direct");
    skopeo_copy(&w.name("keyed/app:v1"), &direct).unwrap();
    let p = b.serve();
    let through = w.work.join("through");
    skopeo_copy(&format!("{}/keyed/app:v1", p.host()), &through)
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    assert_eq!(files(&direct), files(&through));
    assert_eq!(fault.connections(), 0);
}
