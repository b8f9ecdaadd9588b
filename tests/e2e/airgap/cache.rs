//! 6. Re-import, 7. cache ls / gc.

use std::path::PathBuf;

use portcullis_testkit::{Fault, FaultServer};

use super::support::{Instance, Mirrored};

/// Mirrors `keyed/app:v1`, exports it to a dir and imports it into a fresh offline instance
/// (whose counting upstream is returned too, to keep it listening).
fn imported_app() -> (Mirrored, Instance, PathBuf, FaultServer) {
    let m = Mirrored::new();
    let layout = m.w.work.join("export");
    m.a.export(&[m.app_ref()], &layout).expect_code(0);
    let fault = FaultServer::start(Fault::Status(500));
    let b = m.w.offline("b", &fault);
    b.import(&layout, None)
        .expect_code(0)
        .expect_line("imported", &m.app_ref(), &m.app);
    (m, b, layout, fault)
}

#[test]
fn reimporting_the_same_layout_says_unchanged() {
    let (m, b, layout, fault) = imported_app();
    let again = b.import(&layout, None);
    again
        .expect_code(0)
        .expect_line("unchanged", &m.app_ref(), &m.app);
    assert!(
        again.lines_starting("imported").is_empty(),
        "nothing is new the second time: {again}"
    );
    assert!(again.lines_starting("rejected").is_empty(), "{again}");
    assert_eq!(fault.connections(), 0);
}

#[test]
fn cache_ls_lists_imported_tags_and_gc_keeps_them() {
    let (m, b, _, _fault) = imported_app();
    let ls = b.run(&[&"cache", &"ls"]);
    ls.expect_code(0);
    let line = ls
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{} {} ", m.app_ref(), m.app)))
        .unwrap_or_else(|| panic!("no `{} {} ...` line: {ls}", m.app_ref(), m.app));
    let fields: Vec<&str> = line.splitn(5, ' ').collect();
    assert_eq!(
        fields.len(),
        5,
        "<ref> <digest> <bytes> <verdict> <last-access>: {line:?}"
    );
    let bytes: u64 = fields[2]
        .parse()
        .unwrap_or_else(|e| panic!("bytes {:?} in {line:?}: {e}", fields[2]));
    assert!(bytes > 0, "{line:?}");
    let verdict = fields[3].to_ascii_lowercase();
    assert!(
        !verdict.is_empty() && !verdict.contains("den") && !verdict.contains("reject"),
        "verdict of an imported image: {line:?}"
    );

    let gc = b.run(&[&"cache", &"gc"]);
    gc.expect_code(0);
    let ls = b.run(&[&"cache", &"ls"]);
    ls.expect_code(0);
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.trim().starts_with(&format!("{} {} ", m.app_ref(), m.app))),
        "gc removed a verified image under max_size: {ls}\n{gc}"
    );
}
