//! The configuration loader: TOML text through `Config::from_toml` (serde with unknown keys
//! refused, then `validate`, which compiles globs, regexes and CEL conditions and loads the
//! trust material, users file and TLS files it names), and the typed config written back as
//! TOML (how the testkit writes configs) read again.
//!
//! Files a config names are read: the target runs in a scratch directory holding a key, a
//! trusted root and a users file, and skips configs naming any path outside it (a config may
//! name any file on the host, `/dev/zero` included; that is not a parser's business).
#![no_main]

use std::path::{Component, Path};
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use portcullis::Config;

static SCRATCH: Once = Once::new();

fn scratch() {
    SCRATCH.call_once(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("cosign.pub"), include_bytes!("../fixtures/cosign.pub")).unwrap();
        let root = include_bytes!("../fixtures/trusted_root.json");
        std::fs::write(dir.join("trusted_root.json"), root).unwrap();
        let users = "# name:hash\nalice:sha256:2bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90\n";
        std::fs::write(dir.join("users"), users).unwrap();
        std::env::set_current_dir(&dir).unwrap();
    });
}

/// Whether `p` stays inside the scratch directory.
fn inside(p: &Path) -> bool {
    p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Every file `validate` reads or probes.
fn paths(c: &Config) -> Vec<&Path> {
    let mut out: Vec<&Path> = Vec::new();
    let s = &c.server;
    out.extend(
        [&s.tls_cert, &s.tls_key, &s.client_ca]
            .into_iter()
            .flatten()
            .map(|p| p.as_path()),
    );
    out.extend(c.upstreams.iter().filter_map(|u| u.ca_file.as_deref()));
    out.extend(c.trust.keys.iter().map(|k| k.path.as_path()));
    out.extend(
        c.trust
            .roots
            .iter()
            .map(|r| r.trusted_root.as_path())
            .filter(|p| p.as_os_str() != portcullis_policy::BUILTIN_PUBLIC_GOOD),
    );
    out.extend(c.auth.as_ref().map(|a| a.users_file.as_path()));
    out
}

fuzz_target!(|data: &[u8]| {
    scratch();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(unchecked) = toml::from_str::<Config>(text) {
        if !paths(&unchecked).into_iter().all(inside) {
            return;
        }
    }
    let Ok(config) = Config::from_toml(text, "fuzz") else {
        return;
    };
    // A valid config written back as TOML reads again, as valid.
    let written = toml::to_string(&config).expect("a valid config serialises");
    if let Err(e) = Config::from_toml(&written, "written back") {
        panic!("{e}\n--- written:\n{written}");
    }
});
