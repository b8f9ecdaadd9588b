//! The world: an upstream with signed images, portcullis instances (a config + a cache dir), and
//! the connected side as most tests need it.

use std::path::{Path, PathBuf};

use portcullis_testkit::cosign::{push_signature, simple_signing_payload, CosignKey, SigLayer};
use portcullis_testkit::{
    manifest_digest_in_registry, push, require_tools, tempdir, FaultServer, Image, Proxy, Registry,
};

use super::layout::{blob_path, read_json};
use super::run::{os, portcullis, Run};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// An upstream registry holding images signed (or not) with the trusted key `release`.
pub(crate) struct World {
    _dir: tempfile::TempDir,
    pub(crate) work: PathBuf,
    pub(crate) upstream: Registry,
    release: CosignKey,
    /// Appended to every instance's policy: trust roots and rules of the tests that need more.
    extra_policy: String,
}

impl World {
    pub(crate) fn new() -> World {
        require_tools();
        let dir = tempdir();
        let work = dir.path().to_owned();
        let upstream = Registry::start(&work);
        let release = CosignKey::generate();
        release.write_public(&work.join("release.pub"));
        World {
            _dir: dir,
            work,
            upstream,
            release,
            extra_policy: String::new(),
        }
    }

    /// Appends `toml` (`[[trust.root]]`, `[[rule]]` tables) to the policy of every instance
    /// made after this call.
    pub(crate) fn extend_policy(&mut self, toml: &str) {
        self.extra_policy.push_str(toml);
    }

    /// The trusted key `release`, for evidence other than a plain signature (`.att` layers).
    pub(crate) fn release(&self) -> &CosignKey {
        &self.release
    }

    /// The upstream's `127.0.0.1:PORT`, the registry part of every image name here.
    pub(crate) fn host(&self) -> String {
        self.upstream.host()
    }

    /// `<upstream host>/<repo_tag>`.
    pub(crate) fn name(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    /// Pushes `image` as `repo:tag`; returns its manifest digest.
    pub(crate) fn push(&self, image: Image, repo: &str, tag: &str) -> String {
        push(image, &self.upstream, &format!("{repo}:{tag}"));
        manifest_digest_in_registry(&self.upstream, repo, tag)
    }

    /// Pushes `image` as `repo:tag` and a cosign signature of it by `release`; returns its digest.
    pub(crate) fn push_signed(&self, image: Image, repo: &str, tag: &str) -> String {
        let digest = self.push(image, repo, tag);
        self.sign(repo, &self.name(repo), &digest);
        digest
    }

    /// Pushes to `repo` a `release` signature whose payload names `docker_reference`.
    pub(crate) fn sign(&self, repo: &str, docker_reference: &str, digest: &str) {
        let payload = simple_signing_payload(docker_reference, digest);
        let layer = SigLayer {
            signature_b64: self.release.sign(&payload),
            payload,
            ..SigLayer::default()
        };
        push_signature(&self.upstream, repo, digest, &[layer]);
    }

    /// Trust and rules shared by every instance: `<host>/keyed/**` and `docker.io/library/**`
    /// need a signature by `release`; anything else is denied.
    fn policy(&self) -> String {
        format!(
            r#"[policy]
default = "deny"
[[trust.key]]
name = "release"
path = "{key}"
[[rule]]
name = "keyed"
images = ["{host}/keyed/**"]
[[rule.authority]]
key = "release"
[[rule]]
name = "library"
images = ["docker.io/library/**"]
[[rule.authority]]
key = "release"
{extra}"#,
            key = self.work.join("release.pub").display(),
            host = self.host(),
            extra = self.extra_policy,
        )
    }

    fn instance(
        &self,
        sub: &str,
        server: &str,
        cache: &str,
        upstreams: &str,
        mirror: &str,
    ) -> Instance {
        let template = format!(
            "[server]\nlisten = \"{{LISTEN}}\"\n{server}\n\
             [cache]\ndir = \"{{DATA}}\"\nmax_size = \"2GiB\"\n{cache}\n\
             {upstreams}\n{mirror}\n{policy}",
            policy = self.policy()
        );
        Instance {
            workdir: self.work.join(sub),
            template,
        }
    }

    /// The connected side: the real upstream as the default one, `[[mirror]]` listing `images`.
    pub(crate) fn connected(&self, sub: &str, images: &[String]) -> Instance {
        let upstream = format!(
            "[[upstream]]\nname = \"{}\"\nurl = \"{}\"\ndefault = true\n",
            self.host(),
            self.upstream.url()
        );
        let mirror = format!(
            "[[mirror]]\nimages = {}\n",
            serde_json::to_string(images).unwrap()
        );
        self.instance(sub, "", "", &upstream, &mirror)
    }

    /// The air-gapped side: `[server] offline = true`, and one default upstream named like the
    /// real one but pointing at `fault`, so that any connection would be counted. Tags expire
    /// after a second, to show that offline they resolve whatever their age.
    pub(crate) fn offline(&self, sub: &str, fault: &FaultServer) -> Instance {
        let upstream = format!(
            "[[upstream]]\nname = \"{}\"\nurl = \"{}\"\ndefault = true\nconnect_timeout = \"1s\"\nread_timeout = \"1s\"\n",
            self.host(),
            fault.url()
        );
        self.instance(
            sub,
            "offline = true",
            "tag_ttl = \"1s\"\nmax_stale = \"1s\"",
            &upstream,
            "",
        )
    }

    /// No `[[upstream]]` at all; `offline = true` in `[server]` or not (then `serve --offline`).
    pub(crate) fn bare(&self, sub: &str, offline: bool) -> Instance {
        let server = if offline { "offline = true" } else { "" };
        self.instance(sub, server, "", "", "")
    }
}

/// A portcullis instance: a config template with `{LISTEN}` and `{DATA}`, and a work dir whose
/// `data/` is the cache, as [`Proxy::start`] lays it out, so that the CLI and the server share it.
pub(crate) struct Instance {
    pub(crate) workdir: PathBuf,
    template: String,
}

impl Instance {
    pub(crate) fn data(&self) -> PathBuf {
        self.workdir.join("data")
    }

    /// Writes `workdir/<file>` with `{DATA}` and `{LISTEN}` substituted; returns its path.
    pub(crate) fn write_config(&self, file: &str, listen: &str) -> PathBuf {
        std::fs::create_dir_all(&self.workdir).unwrap();
        let path = self.workdir.join(file);
        let text = self
            .template
            .replace("{LISTEN}", listen)
            .replace("{DATA}", &self.data().display().to_string());
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `portcullis ARGS --config <this instance's config>`.
    pub(crate) fn run(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
        let config = self.write_config("cli.toml", "127.0.0.1:0");
        let mut all = os(args);
        all.extend(os(&[&"--config", &config]));
        portcullis(&all)
    }

    pub(crate) fn import(&self, path: &Path, name: Option<&str>) -> Run {
        match name {
            Some(n) => self.run(&[&"import", &path, &"--name", &n]),
            None => self.run(&[&"import", &path]),
        }
    }

    pub(crate) fn export(&self, refs: &[String], output: &Path) -> Run {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"export"];
        for r in refs {
            args.push(r);
        }
        args.push(&"--output");
        args.push(&output);
        self.run(&args)
    }

    pub(crate) fn mirror(&self, output: &Path) -> Run {
        self.run(&[&"mirror", &"--output", &output])
    }

    /// The same work dir and cache under a config whose template `edit` rewrote (a stricter
    /// rule, say), to ask what another policy makes of what this instance holds.
    pub(crate) fn variant(&self, edit: impl FnOnce(&str) -> String) -> Instance {
        Instance {
            workdir: self.workdir.clone(),
            template: edit(&self.template),
        }
    }

    /// `portcullis serve --config FILE` on this cache (stop it before the next CLI command).
    pub(crate) fn serve(&self) -> Proxy {
        Proxy::start(Path::new(BIN), &self.workdir, &self.template)
    }
}

/// A world with `keyed/app:v1` (Image::Small) and `keyed/multi:v1` (Image::Multi, whose arm64
/// child has a layer of its own), both signed by `release`, mirrored into instance `a`.
pub(crate) struct Mirrored {
    pub(crate) w: World,
    pub(crate) a: Instance,
    pub(crate) app: String,
    pub(crate) multi: String,
}

impl Mirrored {
    pub(crate) fn new() -> Mirrored {
        let w = World::new();
        let app = w.push_signed(Image::Small, "keyed/app", "v1");
        let multi = w.push_signed(Image::Multi, "keyed/multi", "v1");
        let a = w.connected("a", &[w.name("keyed/app:v1"), w.name("keyed/multi:v1")]);
        let out = w.work.join("a-mirror-out");
        a.mirror(&out).expect_code(0);
        Mirrored { w, a, app, multi }
    }

    pub(crate) fn app_ref(&self) -> String {
        self.w.name("keyed/app:v1")
    }

    pub(crate) fn multi_ref(&self) -> String {
        self.w.name("keyed/multi:v1")
    }

    /// `portcullis export` of both images from `a` to `output` (a dir, or a tar by its suffix).
    pub(crate) fn export(&self, output: &Path) {
        self.a
            .export(&[self.app_ref(), self.multi_ref()], output)
            .expect_code(0);
    }

    /// The arm64 layer of `multi`, read from an exported layout: no other image holds it.
    pub(crate) fn arm64_layer(&self, layout: &Path) -> String {
        let index = read_json(&blob_path(layout, &self.multi));
        let child = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["platform"]["architecture"] == "arm64")
            .expect("arm64 child")["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let manifest = read_json(&blob_path(layout, &child));
        manifest["layers"][0]["digest"].as_str().unwrap().to_owned()
    }
}
