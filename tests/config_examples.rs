//! Every example config in `config/` loads; a bad file fails with the key and the line.

use std::path::Path;
use std::process::Command;

use portcullis::Config;

#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "config/ holds the default and the commented example"
    );
    Config::embedded();
}

#[test]
fn client_config_examples_parse_and_point_at_portcullis() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    for hosts in [
        "containerd/certs.d/docker.io/hosts.toml",
        "containerd/certs.d/ghcr.io/hosts.toml",
    ] {
        let text = std::fs::read_to_string(dir.join(hosts)).unwrap();
        let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{hosts}: {e}"));
        let host = v["host"]["http://127.0.0.1:5000"]["capabilities"]
            .as_array()
            .unwrap();
        assert!(host.iter().any(|c| c.as_str() == Some("pull")), "{hosts}");
    }
    let daemon: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("docker/daemon.json")).unwrap()).unwrap();
    assert_eq!(daemon["registry-mirrors"][0], "http://127.0.0.1:5000");
    let podman: toml::Value =
        toml::from_str(&std::fs::read_to_string(dir.join("podman/registries.conf")).unwrap())
            .unwrap();
    assert_eq!(
        podman["registry"][0]["mirror"][0]["location"].as_str(),
        Some("127.0.0.1:5000/docker.io")
    );
}

#[test]
fn a_misspelt_key_names_the_key_and_the_line() {
    let text = "[server]\nlisten = \"127.0.0.1:5000\"\n\n[cache]\nmax_sise = \"1GiB\"\n";
    let err = Config::from_toml(text, "bad.toml").unwrap_err().to_string();
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("max_sise"), "{err}");
    assert!(err.contains("line 5"), "{err}");
}

#[test]
fn invalid_values_are_refused() {
    let cases = [
        ("[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"\n", "scheme"),
        (
            "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\ndefault = true\n[[upstream]]\nname = \"b\"\nurl = \"http://y\"\ndefault = true\n",
            "more than one",
        ),
        ("[policy]\nallow = [\"docker.io/[\"]\n", "[policy]"),
        ("[policy]\ndefault = \"maybe\"\n", "maybe"),
        ("[cache]\ntag_ttl = \"soon\"\n", "tag_ttl"),
        (
            "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nusername_env = \"U\"\n",
            "password",
        ),
    ];
    for (text, needle) in cases {
        let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn the_binary_exits_non_zero_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listen") && stderr.contains("line 2"),
        "{stderr}"
    );
}

#[test]
fn the_dockerfile_copies_what_exists_and_runs_what_it_built() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let mut built = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(args) = line.strip_prefix("COPY ") {
            let parts: Vec<&str> = args.split_whitespace().collect();
            if parts[0].starts_with("--from=") {
                built.push(parts[parts.len() - 1].to_owned());
                continue;
            }
            for src in &parts[..parts.len() - 1] {
                assert!(root.join(src).exists(), "COPY source {src} does not exist");
            }
        }
    }
    let entry = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT [\""))
        .and_then(|l| l.split('"').next())
        .expect("an ENTRYPOINT");
    assert!(
        built.iter().any(|b| b == entry),
        "ENTRYPOINT {entry} is not copied from the build stage: {built:?}"
    );
    assert!(
        text.contains("--locked"),
        "the binary is built with --locked"
    );
    assert!(text.contains("USER 10001"), "runs as non-root");
}
