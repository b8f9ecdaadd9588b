//! A full disk under the cache (a tmpfs this test mounts, so it needs root as the client tests
//! do): a blob write that runs out of space aborts that fetch cleanly, leaves nothing partial,
//! what is cached keeps being served, a store that cannot write answers 503 rather than
//! crashing, and everything works again once there is room.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_policy::DefaultAction;
use portcullis_testkit::http;
use portcullis_testkit::{
    manifest_digest_in_registry, push, require_tools, skopeo_copy, tempdir, ConfigBuilder, Image,
    Proxy, Registry,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A tmpfs of `size` on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount a tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries.flatten().map(|e| e.path()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_aborts_the_fetch_cleanly_and_serving_recovers_when_space_returns() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "disk/small:v1");
    push(Image::Big, &upstream, "disk/big:v1");
    let big = manifest_digest_in_registry(&upstream, "disk/big", "v1");
    let pdir = work.path().join("p");
    // Room for RocksDB and the small image, not for the big image's 50 MiB layer.
    let disk = Tmpfs::mount(&pdir.join("data"), "24m");
    let config = ConfigBuilder::pull_through(&upstream.host(), &upstream.url())
        .policy_default(DefaultAction::Allow);
    let p = Proxy::start(Path::new(BIN), &pdir, &config);
    let host = p.host();
    let out = work.path().join("out");

    skopeo_copy(&format!("{host}/disk/small:v1"), &out.join("small-1"))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let failed = skopeo_copy(&format!("{host}/disk/big:v1"), &out.join("big-1"));
    assert!(failed.is_err(), "a 50 MiB layer cannot fit a 24 MiB disk");
    let log = p.wait_for_log("blob fetch failed; nothing cached");
    assert!(log.contains("No space left on device"), "{log}");
    // Nothing partial: the temporary file went with the failed write.
    assert_eq!(files_under(&p.data_dir.join("tmp")), Vec::<PathBuf>::new());

    // What is cached is still served, and the process did not fall over.
    skopeo_copy(&format!("{host}/disk/small:v1"), &out.join("small-2"))
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));

    // A store that cannot write at all (the disk filled to the last byte): a manifest that
    // would have to be recorded is a clear 503, not a crash, not a 500.
    let filler = p.data_dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", filler.display()))
        .output();
    let resp = http::get(&format!("{}/v2/disk/big/manifests/{big}", p.url())).await;
    assert!(
        resp.status == 200 || resp.status == 503,
        "a full store answers 503 (or still has room for the record): {} {}",
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    assert_ne!(resp.status, 500);
    std::fs::remove_file(&filler).unwrap();
    let alive = http::get(&format!("{}/v2/", p.url())).await;
    assert_eq!(alive.status, 200, "still serving after a full disk");

    // Room again: the same pull completes, and every file matches its digest.
    disk.resize("256m");
    skopeo_copy(&format!("{host}/disk/big:v1"), &out.join("big-2"))
        .unwrap_or_else(|e| panic!("after space returned: {e}\n{}", p.log_contents()));
    assert_eq!(files_under(&p.data_dir.join("tmp")), Vec::<PathBuf>::new());
}
