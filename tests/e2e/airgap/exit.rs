//! Every command exits cleanly, every time: background work (fetch jobs, blob writers,
//! eviction) is finished or cancelled and the store closed before the process ends. `mirror`
//! once crashed at exit (`terminate called without an active exception`, exit 139) in 10 runs
//! of 25 when the runtime was dropped under RocksDB's threads.

use portcullis_testkit::{Fault, FaultServer, Image};

use super::support::World;

const RUNS: usize = 20;

#[test]
fn every_command_exits_with_its_code_twenty_times_in_a_row() {
    let w = World::new();
    w.push_signed(Image::Small, "keyed/app", "v1");
    let app = w.name("keyed/app:v1");
    let unsigned = w.name("keyed/unsigned:v1");
    w.push(Image::Small, "keyed/unsigned", "v1");

    // Cold each time: a fresh cache, so every run starts fetch jobs and blob writers.
    let mut last = None;
    for i in 0..RUNS {
        let a = w.connected(&format!("m{i}"), std::slice::from_ref(&app));
        let out = w.work.join(format!("mirror-{i}"));
        let run = a.mirror(&out);
        run.expect_code(0);
        assert!(run.stdout.contains(&format!("verified {app}")), "{run}");
        last = Some((a, out));
    }
    let (a, layout) = last.unwrap();
    for i in 0..RUNS {
        a.export(
            std::slice::from_ref(&app),
            &w.work.join(format!("export-{i}")),
        )
        .expect_code(0);
        a.run(&[&"verify", &app]).expect_code(0);
        a.run(&[&"verify", &unsigned]).expect_code(1);
        a.run(&[&"cache", &"ls"]).expect_code(0);
        a.run(&[&"cache", &"gc"]).expect_code(0);
    }
    let fault = FaultServer::start(Fault::Status(500));
    let b = w.offline("b", &fault);
    for _ in 0..RUNS {
        b.import(&layout, None).expect_code(0);
    }
}
