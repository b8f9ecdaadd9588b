//! The world: an upstream with signed images, portcullis instances (a config + a cache dir), and
//! the connected side as most tests need it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::Config;
use portcullis_testkit::cosign::{push_signature, simple_signing_payload, CosignKey, SigLayer};
use portcullis_testkit::{
    manifest_digest_in_registry, push, require_tools, tempdir, write_cli_config, ConfigBuilder,
    FaultServer, Image, Proxy, ProxyConfig, Registry, Rule,
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
    /// Every instance's trust material and rules (see [`World::policy`]).
    policy: ConfigBuilder,
}

impl World {
    pub(crate) fn new() -> World {
        require_tools();
        let dir = tempdir();
        let work = dir.path().to_owned();
        let upstream = Registry::start(&work);
        let release = CosignKey::generate();
        release.write_public(&work.join("release.pub"));
        let policy = World::policy(&work.join("release.pub"), &upstream.host());
        World {
            _dir: dir,
            work,
            upstream,
            release,
            policy,
        }
    }

    /// Trust and rules shared by every instance: `<host>/keyed/**` and `docker.io/library/**`
    /// need a signature by `release` (its public key in `key`); anything else is denied.
    fn policy(key: &Path, host: &str) -> ConfigBuilder {
        ConfigBuilder::new()
            .trust_key("release", key)
            .rule(Rule::new("keyed", &[&format!("{host}/keyed/**")]).key("release"))
            .rule(Rule::new("library", &["docker.io/library/**"]).key("release"))
    }

    /// Adds to the policy of every instance made after this call (`[[trust.root]]`s,
    /// `[[rule]]`s).
    pub(crate) fn extend_policy(&mut self, edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder) {
        self.policy = edit(self.policy.clone());
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

    fn instance(&self, sub: &str, config: ConfigBuilder) -> Instance {
        Instance {
            workdir: self.work.join(sub),
            config: config.build(),
        }
    }

    /// The connected side: the real upstream as the default one, `[[mirror]]` listing `images`.
    pub(crate) fn connected(&self, sub: &str, images: &[String]) -> Instance {
        let config = self
            .policy
            .clone()
            .default_upstream(&self.host(), &self.upstream.url())
            .mirror(images);
        self.instance(sub, config)
    }

    /// The air-gapped side: `[server] offline = true`, and one default upstream named like the
    /// real one but pointing at `fault`, so that any connection would be counted. Tags expire
    /// after a second, to show that offline they resolve whatever their age.
    pub(crate) fn offline(&self, sub: &str, fault: &FaultServer) -> Instance {
        let second = Duration::from_secs(1);
        let config = self
            .policy
            .clone()
            .offline()
            .cache(|c| {
                c.tag_ttl = second;
                c.max_stale = second;
            })
            .default_upstream(&self.host(), &fault.url())
            .with_upstream(&self.host(), |u| {
                u.connect_timeout = second;
                u.read_timeout = second;
            });
        self.instance(sub, config)
    }

    /// No `[[upstream]]` at all; `offline = true` in `[server]` or not (then `serve --offline`).
    pub(crate) fn bare(&self, sub: &str, offline: bool) -> Instance {
        let config = self.policy.clone().server(|s| s.offline = offline);
        self.instance(sub, config)
    }
}

/// A portcullis instance: a config, and a work dir whose `data/` is the cache, as
/// [`Proxy::start`] lays it out, so that the CLI and the server share it.
pub(crate) struct Instance {
    pub(crate) workdir: PathBuf,
    config: Config,
}

impl Instance {
    pub(crate) fn data(&self) -> PathBuf {
        self.workdir.join("data")
    }

    /// Writes `workdir/<file>` for a server on `listen`; returns its path.
    pub(crate) fn write_config(&self, file: &str, listen: SocketAddr) -> PathBuf {
        std::fs::create_dir_all(&self.workdir).unwrap();
        let path = self.workdir.join(file);
        std::fs::write(&path, self.config.render(listen, &self.data())).unwrap();
        path
    }

    /// Writes `workdir/<file>` for a CLI command; returns its path.
    pub(crate) fn write_cli_config(&self, file: &str) -> PathBuf {
        std::fs::create_dir_all(&self.workdir).unwrap();
        let path = self.workdir.join(file);
        write_cli_config(&path, &self.config, &self.data());
        path
    }

    /// `portcullis ARGS --config <this instance's config>`.
    pub(crate) fn run(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
        let config = self.write_cli_config("cli.toml");
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

    /// The same work dir and cache under a config `edit` changed (a stricter rule, say), to ask
    /// what another policy makes of what this instance holds.
    pub(crate) fn variant(&self, edit: impl FnOnce(&mut Config)) -> Instance {
        let mut config = self.config.clone();
        edit(&mut config);
        Instance {
            workdir: self.workdir.clone(),
            config,
        }
    }

    /// `portcullis serve --config FILE` on this cache (stop it before the next CLI command).
    pub(crate) fn serve(&self) -> Proxy {
        Proxy::start(Path::new(BIN), &self.workdir, &self.config)
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
