//! 5. kill -9 during an import.

use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis_testkit::http;
use portcullis_testkit::{sha256_hex, skopeo_copy, Fault, FaultServer, Image};
use serde_json::Value;

use super::layout::files;
use super::support::{World, BIN};

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_import_leaves_nothing_unverified_and_a_rerun_completes() {
    let w = World::new();
    let big = w.push_signed(Image::Big, "keyed/big", "v1");
    let big_ref = w.name("keyed/big:v1");
    let a = w.connected("a", std::slice::from_ref(&big_ref));
    let layout = w.work.join("big-layout");
    a.mirror(&layout).expect_code(0);
    let direct = w.work.join("direct");
    skopeo_copy(&big_ref, &direct).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(direct.join("manifest.json")).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();

    let fault = FaultServer::start(Fault::Status(500));
    let b = w.offline("b", &fault);
    let config = b.write_cli_config("cli.toml");
    let mut child = Command::new(BIN)
        .arg("import")
        .arg(&layout)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    if let Some(status) = child.try_wait().unwrap() {
        eprintln!("note: the import finished ({status}) before the kill; the kill tests nothing");
    }
    let killed = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    eprintln!("kill -9: {killed}; import ended with {status}");

    // Whatever is served now must be whole and verified.
    {
        let p = b.serve();
        let base = p.url();
        let resp = http::get(&format!("{base}/v2/keyed/big/manifests/v1")).await;
        if resp.status == 200 {
            assert_eq!(sha256_hex(&resp.body), big);
        }
        let resp = http::try_request(
            "GET",
            &format!("{base}/v2/keyed/big/blobs/{layer}"),
            &[],
            Default::default(),
        )
        .await;
        if let Ok(resp) = resp {
            if resp.status == 200 {
                assert_eq!(sha256_hex(&resp.body), layer, "a partial layer was served");
            }
        }
    }

    let run = b.import(&layout, None);
    run.expect_code(0);
    assert!(
        run.line("imported", &big_ref).is_some() || run.line("unchanged", &big_ref).is_some(),
        "{run}"
    );
    assert!(run.stdout.contains(&big), "{run}");
    let p = b.serve();
    let through = w.work.join("through");
    skopeo_copy(&format!("{}/keyed/big:v1", p.host()), &through)
        .unwrap_or_else(|e| panic!("after the rerun: {e}\n{}", p.log_contents()));
    assert!(files(&direct) == files(&through), "the served bytes differ");
    assert_eq!(fault.connections(), 0);
}
