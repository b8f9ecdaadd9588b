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

/// Every client config sends each registry it covers to portcullis and nowhere else: a client
/// that falls back to the real registry after a denial would serve what portcullis refused.
/// (`tests/e2e/operations/clients.rs` pulls through each of them with the real clients.)
#[test]
fn client_config_examples_name_portcullis_as_every_endpoint() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let read =
        |rel: &str| std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let proxy = "http://127.0.0.1:5000";
    for hosts in [
        "containerd/certs.d/docker.io/hosts.toml",
        "containerd/certs.d/ghcr.io/hosts.toml",
    ] {
        let v: toml::Value =
            toml::from_str(&read(hosts)).unwrap_or_else(|e| panic!("{hosts}: {e}"));
        // `server` is containerd's fallback after the [host] entries; without it containerd
        // falls back to the registry itself.
        assert_eq!(v["server"].as_str(), Some(proxy), "{hosts}: server");
        // containerd 1.6 and 1.7 ignore a hosts.toml without a [host] entry.
        let table = v["host"].as_table().expect("a [host] entry");
        assert_eq!(table.keys().collect::<Vec<_>>(), [proxy], "{hosts}");
        for caps in [&v["capabilities"], &table[proxy]["capabilities"]] {
            let caps: Vec<&str> = caps
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            assert_eq!(caps, ["pull", "resolve"], "{hosts}");
        }
    }

    let podman: toml::Value = toml::from_str(&read("podman/registries.conf")).unwrap();
    let registries = podman["registry"].as_array().unwrap();
    let prefixes: Vec<&str> = registries
        .iter()
        .map(|r| r["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["docker.io", "ghcr.io"]);
    for r in registries {
        let prefix = r["prefix"].as_str().unwrap();
        // The registry itself is portcullis, with the registry as a path prefix; a mirror would
        // put the real registry behind it as the fallback.
        assert_eq!(
            r["location"].as_str(),
            Some(format!("127.0.0.1:5000/{prefix}").as_str())
        );
        assert!(
            r.get("mirror").is_none(),
            "{prefix}: no [[registry.mirror]]"
        );
        assert_ne!(r.get("blocked").and_then(|b| b.as_bool()), Some(true));
    }

    // Docker falls back to registry-1.docker.io whatever daemon.json says: the egress rule and
    // the dockerd drop-in leave it nowhere to fall back to, and let portcullis through.
    let daemon: serde_json::Value = serde_json::from_str(&read("docker/daemon.json")).unwrap();
    assert_eq!(daemon["registry-mirrors"], serde_json::json!([proxy]));
    assert_eq!(
        daemon["insecure-registries"],
        serde_json::json!(["127.0.0.1:5000"])
    );
    let nft = read("nftables/portcullis-egress.nft");
    assert!(
        nft.contains("elements = { 127.0.0.1 . 5000 }"),
        "the egress rule lets portcullis through"
    );
    assert!(
        nft.contains("elements = { 80, 443 }"),
        "and refuses HTTP(S) elsewhere"
    );
    let dropin = read("docker/docker.service.d/portcullis-only.conf");
    let env = dropin
        .lines()
        .find_map(|l| l.strip_prefix("Environment="))
        .expect("Environment=");
    assert!(env.contains("\"HTTPS_PROXY=http://127.0.0.1:9\""), "{env}");
    let no_proxy = env
        .split('"')
        .find_map(|item| item.strip_prefix("NO_PROXY="))
        .expect("NO_PROXY");
    assert!(
        no_proxy.split(',').any(|h| h == "127.0.0.1"),
        "portcullis is exempt: {no_proxy}"
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
