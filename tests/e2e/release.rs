//! A portcullis release, checked the way the README's "Verifying portcullis" tells a user to:
//! the blob signatures of the binary and the SBOM with `openssl dgst -verify`, then the runtime
//! image built from the release's image inputs, pushed to a registry, signed with the release key
//! in cosign's layout and pulled through portcullis under a keyed rule; a copy without the
//! signature, and one signed by another key, are denied.
//!
//! `scripts/test` builds the release (twice, `scripts/check-reproducible`) before the tests and
//! hands it over: `PORTCULLIS_RELEASE_DIR` is its output directory and
//! `PORTCULLIS_RELEASE_KEY_FILE` the key it was signed with. Without them (`cargo nextest run`
//! alone) the test lays out the binary under test the same way and signs it with a key of its
//! own, rather than run a release build itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_testkit::cosign::{push_signature, simple_signing_payload, CosignKey, SigLayer};
use portcullis_testkit::{
    manifest_digest_in_registry, require_tools, skopeo_copy, tempdir, ConfigBuilder, Proxy,
    Registry, Rule,
};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A release directory (as `scripts/release` writes it) and the private key that signed it.
struct Release {
    dir: PathBuf,
    key: CosignKey,
    /// Whether it is `scripts/release`'s output (with its SBOM and SHA256SUMS).
    built: bool,
}

impl Release {
    /// The release that scripts/test built, or the binary under test laid out like one in `work`.
    fn get(work: &Path) -> Release {
        match std::env::var_os("PORTCULLIS_RELEASE_DIR") {
            Some(dir) => {
                let key_file = std::env::var_os("PORTCULLIS_RELEASE_KEY_FILE").expect(
                    "PORTCULLIS_RELEASE_DIR is set: PORTCULLIS_RELEASE_KEY_FILE must name its key",
                );
                let key = CosignKey::from_pkcs8_pem(&read_text(Path::new(&key_file)));
                Release {
                    dir: dir.into(),
                    key,
                    built: true,
                }
            }
            None => Release::lay_out(work),
        }
    }

    /// The debug binary under test, signed and laid out as `scripts/release` lays out its output.
    fn lay_out(work: &Path) -> Release {
        let dir = work.join("dist");
        let key = CosignKey::generate();
        let binary = std::fs::read(BIN).unwrap();
        let rootfs = dir.join("image/rootfs");
        std::fs::create_dir_all(rootfs.join("usr/local/bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("etc/portcullis")).unwrap();
        std::fs::write(dir.join("portcullis"), &binary).unwrap();
        std::fs::write(rootfs.join("usr/local/bin/portcullis"), &binary).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/portcullis.toml"),
            rootfs.join("etc/portcullis/portcullis.toml"),
        )
        .unwrap();
        std::fs::write(dir.join("portcullis.sig"), key.sign(&binary)).unwrap();
        key.write_public(&dir.join("portcullis.pub"));
        Release {
            dir,
            key,
            built: false,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn read_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `program args` in `dir`; Ok(stdout) or Err(what it said).
fn run(dir: &Path, program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{program} {} ({}):\n{text}",
            args.join(" "),
            out.status
        ))
    }
}

/// The README's check without cosign, run in release directory `dir`:
/// `openssl dgst -sha256 -verify portcullis.pub -signature <(base64 -d FILE.sig) FILE`.
fn openssl_verify(dir: &Path, file: &str) -> Result<String, String> {
    let script = format!(
        "openssl dgst -sha256 -verify portcullis.pub -signature <(base64 -d {file}.sig) {file}"
    );
    run(dir, "bash", &["-c", &script])
}

/// umoci: panics with its output unless it succeeds.
fn umoci(args: &[&str]) {
    run(Path::new("."), "umoci", args).unwrap_or_else(|e| panic!("{e}"));
}

/// The runtime image from the release's image inputs, as the Dockerfile's last stage assembles it
/// (without the Debian base, which cannot be fetched here): the two files, and the Dockerfile's
/// user, working directory, port, entrypoint and command. Returns the `oci:` layout reference.
fn build_image(release: &Release, work: &Path) -> String {
    let layout = work.join("oci");
    let lay = layout.to_str().unwrap();
    let image = format!("{lay}:portcullis");
    let rootfs = release.path("image/rootfs");
    umoci(&["init", "--layout", lay]);
    umoci(&["new", "--image", &image]);
    for (src, dest) in [
        ("usr/local/bin/portcullis", "/usr/local/bin/portcullis"),
        (
            "etc/portcullis/portcullis.toml",
            "/etc/portcullis/portcullis.toml",
        ),
    ] {
        umoci(&[
            "insert",
            "--image",
            &image,
            rootfs.join(src).to_str().unwrap(),
            dest,
        ]);
    }
    umoci(&[
        "config",
        "--image",
        &image,
        "--os",
        "linux",
        "--architecture",
        "amd64",
        "--config.user",
        "10001",
        "--config.workingdir",
        "/var/lib/portcullis",
        "--config.exposedports",
        "5000/tcp",
        "--config.entrypoint",
        "/usr/local/bin/portcullis",
        "--config.cmd",
        "serve",
        "--config.cmd",
        "--config",
        "--config.cmd",
        "/etc/portcullis/portcullis.toml",
    ]);
    format!("oci:{image}")
}

/// `skopeo copy` of `src` into `registry` as `repo:tag`.
fn push_to(registry: &Registry, src: &str, repo_tag: &str) {
    let dest = format!("docker://{}/{repo_tag}", registry.host());
    run(
        Path::new("."),
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            src,
            &dest,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// A cosign signature of `repo@digest` in `registry` by `key`, under `sha256-<hex>.sig`.
fn cosign_sign(registry: &Registry, key: &CosignKey, repo: &str, digest: &str) {
    let payload = simple_signing_payload(&format!("{}/{repo}", registry.host()), digest);
    let layer = SigLayer {
        signature_b64: key.sign(&payload),
        payload,
        ..SigLayer::default()
    };
    push_signature(registry, repo, digest, &[layer]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_release_verifies_and_its_image_pulls_through_portcullis() {
    require_tools();
    let dir = tempdir();
    let work = dir.path();
    let release = Release::get(work);
    assert_eq!(
        read_text(&release.path("portcullis.pub")),
        release.key.public_pem(),
        "portcullis.pub is not the public half of the release key"
    );

    // The blob signatures, checked without any of our code.
    let mut signed = vec!["portcullis"];
    if release.built {
        signed.extend(["portcullis.cdx.json", "SHA256SUMS"]);
        run(
            &release.dir,
            "sha256sum",
            &["--check", "--strict", "SHA256SUMS"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let sbom: serde_json::Value =
            serde_json::from_str(&read_text(&release.path("portcullis.cdx.json"))).unwrap();
        assert_eq!(sbom["bomFormat"], "CycloneDX");
        assert_eq!(sbom["metadata"]["component"]["name"], "portcullis");
    }
    for file in &signed {
        let said = openssl_verify(&release.dir, file).unwrap_or_else(|e| panic!("{e}"));
        assert!(said.contains("Verified OK"), "{file}: {said}");
    }
    // A changed byte fails the same check.
    let mut tampered = std::fs::read(release.path("portcullis")).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let copy = work.join("tampered");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::write(copy.join("portcullis"), &tampered).unwrap();
    for f in ["portcullis.sig", "portcullis.pub"] {
        std::fs::copy(release.path(f), copy.join(f)).unwrap();
    }
    let refused = openssl_verify(&copy, "portcullis").expect_err("tampered binary verified");
    assert!(refused.contains("Verification failure"), "{refused}");

    // The image: what the image holds is the released binary.
    assert_eq!(
        std::fs::read(release.path("image/rootfs/usr/local/bin/portcullis")).unwrap(),
        std::fs::read(release.path("portcullis")).unwrap(),
        "the image inputs hold another binary than the release"
    );
    let image = build_image(&release, work);
    let upstream = Registry::start(work);
    push_to(&upstream, &image, "acme/portcullis:v1");
    push_to(&upstream, &image, "acme/portcullis-copy:v1");
    push_to(&upstream, &image, "acme/portcullis-rogue:v1");
    let digest = manifest_digest_in_registry(&upstream, "acme/portcullis", "v1");
    cosign_sign(&upstream, &release.key, "acme/portcullis", &digest);
    cosign_sign(
        &upstream,
        &CosignKey::generate(),
        "acme/portcullis-rogue",
        &digest,
    );

    // The README's rule: images under acme/ need the release key's signature.
    let host = upstream.host();
    let config = ConfigBuilder::new()
        .default_upstream(&host, &upstream.url())
        .trust_key("release", &release.path("portcullis.pub"))
        .rule(Rule::new("portcullis-release", &[&format!("{host}/acme/**")]).key("release"));
    let proxy = Proxy::start(Path::new(BIN), &work.join("proxy"), &config);

    let pulled = work.join("pulled");
    skopeo_copy(&format!("{}/acme/portcullis:v1", proxy.host()), &pulled)
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_contents()));
    let manifest = std::fs::read(pulled.join("manifest.json")).unwrap();
    assert_eq!(portcullis_testkit::sha256_hex(&manifest), digest);

    for (repo, why) in [
        ("acme/portcullis-copy", "no signature"),
        ("acme/portcullis-rogue", "signed by another key"),
    ] {
        let err = skopeo_copy(
            &format!("{}/{repo}:v1", proxy.host()),
            &work.join("denied").join(repo),
        )
        .expect_err(&format!("{repo} ({why}) was served"));
        assert!(
            err.contains("denied") || err.contains("DENIED") || err.contains("403"),
            "{repo} ({why}): {err}"
        );
    }
}
