//! Typed portcullis configs for tests: [`portcullis::Config`] itself, the serde types the binary
//! loads, built with [`ConfigBuilder`] and [`Rule`] and written out with [`to_toml`]. A typo is a
//! compile error here rather than a proxy that refuses to start, and a test edits a field rather
//! than a string.
//!
//! [`Proxy::start`](crate::Proxy::start) takes a [`Config`] (or a builder) as readily as TOML
//! text: see [`ProxyConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use portcullis::auth::{AuthConfig, GrantConfig};
use portcullis::config::{CacheConfig, LogFormat, MirrorConfig, ServerConfig, UpstreamConfig};
use portcullis::Config;
use portcullis_policy::{
    AttestationConfig, AuthorityConfig, DefaultAction, KeyConfig, KeylessConfig, Mode, PinsConfig,
    RootConfig, RuleConfig,
};

/// A [`Config`] for tests. [`ConfigBuilder::new`] starts from the binary's own defaults (policy
/// `default = "deny"`) with a cache sized for tests (2 GiB, tags revalidated after 5 min, served
/// stale for 1 h); [`ConfigBuilder::pull_through`] is what most tests want, one default upstream
/// and `default = "allow"`.
///
/// `[server] listen` and `[cache] dir` are left to [`Proxy::start`](crate::Proxy::start), which
/// sets them to its free port and `workdir/data`.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    config: Config,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        ConfigBuilder::new()
    }
}

impl ConfigBuilder {
    /// No upstream, no rule, `[policy] default = "deny"`, the test cache.
    pub fn new() -> ConfigBuilder {
        let mut config = Config::from_toml("", "empty config").expect("an empty config loads");
        config.cache.max_size = ByteSize::gib(2);
        config.cache.tag_ttl = Duration::from_secs(5 * 60);
        config.cache.max_stale = Duration::from_secs(3600);
        ConfigBuilder { config }
    }

    /// One default upstream `name` at `url` and `[policy] default = "allow"`.
    pub fn pull_through(name: &str, url: &str) -> ConfigBuilder {
        ConfigBuilder::new()
            .default_upstream(name, url)
            .policy_default(DefaultAction::Allow)
    }

    /// Starts from `config` as it is (a [`Config`] read back with
    /// [`Config::from_file`](portcullis::Config::from_file), say).
    pub fn from_config(config: Config) -> ConfigBuilder {
        ConfigBuilder { config }
    }

    /// An `[[upstream]]` `name` at `url` (plain `http://` is fine), with a 5 s read timeout so
    /// that a stalled test fails fast.
    pub fn upstream(mut self, name: &str, url: &str) -> ConfigBuilder {
        self.config.upstreams.push(upstream(name, url));
        self
    }

    /// Like [`upstream`](Self::upstream), with `default = true`.
    pub fn default_upstream(mut self, name: &str, url: &str) -> ConfigBuilder {
        let mut up = upstream(name, url);
        up.default = true;
        self.config.upstreams.push(up);
        self
    }

    /// Changes the upstream named `name` (credentials, `ca_file`, timeouts). Panics if there is
    /// none.
    pub fn with_upstream(
        mut self,
        name: &str,
        edit: impl FnOnce(&mut UpstreamConfig),
    ) -> ConfigBuilder {
        let up = self
            .config
            .upstreams
            .iter_mut()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no [[upstream]] named {name:?}"));
        edit(up);
        self
    }

    /// Changes `[server]` (`max_manifest_size`, `shutdown_grace`, …).
    pub fn server(mut self, edit: impl FnOnce(&mut ServerConfig)) -> ConfigBuilder {
        edit(&mut self.config.server);
        self
    }

    /// Changes `[cache]` (`tag_ttl`, `cold_blobs`, …).
    pub fn cache(mut self, edit: impl FnOnce(&mut CacheConfig)) -> ConfigBuilder {
        edit(&mut self.config.cache);
        self
    }

    /// `[server] offline = true`.
    pub fn offline(self) -> ConfigBuilder {
        self.server(|s| s.offline = true)
    }

    /// `[server] tls_cert` and `tls_key`.
    pub fn tls(self, cert: &Path, key: &Path) -> ConfigBuilder {
        self.server(|s| {
            s.tls_cert = Some(cert.to_owned());
            s.tls_key = Some(key.to_owned());
        })
    }

    /// `[server] client_ca`: mutual TLS.
    pub fn client_ca(self, ca: &Path) -> ConfigBuilder {
        self.server(|s| s.client_ca = Some(ca.to_owned()))
    }

    /// `[policy] default`.
    pub fn policy_default(mut self, action: DefaultAction) -> ConfigBuilder {
        self.config.policy.default = action;
        self
    }

    /// One more `[policy] deny` glob.
    pub fn deny(mut self, glob: &str) -> ConfigBuilder {
        self.config.policy.deny.push(glob.to_owned());
        self
    }

    /// One more `[policy] allow` glob (the allow-list exists from the first).
    pub fn allow(mut self, glob: &str) -> ConfigBuilder {
        self.config
            .policy
            .allow
            .get_or_insert_with(Vec::new)
            .push(glob.to_owned());
        self
    }

    /// A `[[trust.key]]`.
    pub fn trust_key(mut self, name: &str, path: &Path) -> ConfigBuilder {
        self.config.trust.keys.push(KeyConfig {
            name: name.to_owned(),
            path: path.to_owned(),
        });
        self
    }

    /// A `[[trust.root]]` (`trusted_root.json`).
    pub fn trust_root(mut self, name: &str, trusted_root: &Path) -> ConfigBuilder {
        self.config.trust.roots.push(RootConfig {
            name: name.to_owned(),
            trusted_root: trusted_root.to_owned(),
        });
        self
    }

    /// A `[[trust.pins]]` file (it need not exist yet).
    pub fn trust_pins(mut self, name: &str, path: &Path) -> ConfigBuilder {
        self.config.trust.pins.push(PinsConfig {
            name: name.to_owned(),
            path: path.to_owned(),
        });
        self
    }

    /// A `[[rule]]`.
    pub fn rule(mut self, rule: impl Into<RuleConfig>) -> ConfigBuilder {
        self.config.rules.push(rule.into());
        self
    }

    /// `[metrics] listen = "127.0.0.1:<port>"`.
    pub fn metrics(mut self, port: u16) -> ConfigBuilder {
        self.config.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], port)));
        self
    }

    /// `[log] format = "json"`.
    pub fn json_logs(mut self) -> ConfigBuilder {
        self.config.log.format = LogFormat::Json;
        self
    }

    /// `[auth]`: a users file and `[[auth.grant]]`s of (users, images).
    /// The other `[auth]` keys keep the binary's defaults (change them with
    /// [`edit`](Self::edit)).
    pub fn auth(mut self, users_file: &Path, grants: &[(&[&str], &[&str])]) -> ConfigBuilder {
        let mut table = toml::Table::new();
        let path = users_file.to_str().expect("a UTF-8 path");
        table.insert("users_file".into(), path.into());
        let mut auth: AuthConfig = table.try_into().expect("[auth] with a users_file");
        auth.grants = grants
            .iter()
            .map(|(users, images)| GrantConfig {
                users: strings(users),
                images: strings(images),
            })
            .collect();
        self.config.auth = Some(auth);
        self
    }

    /// A `[[mirror]]` of `images` (for `portcullis mirror`).
    pub fn mirror(mut self, images: &[String]) -> ConfigBuilder {
        self.config.mirrors.push(MirrorConfig {
            images: images.to_vec(),
        });
        self
    }

    /// Any other change.
    pub fn edit(mut self, edit: impl FnOnce(&mut Config)) -> ConfigBuilder {
        edit(&mut self.config);
        self
    }

    pub fn build(self) -> Config {
        self.config
    }

    /// The config as TOML (see [`to_toml`]).
    pub fn to_toml(&self) -> String {
        to_toml(&self.config)
    }
}

impl From<ConfigBuilder> for Config {
    fn from(b: ConfigBuilder) -> Config {
        b.build()
    }
}

fn upstream(name: &str, url: &str) -> UpstreamConfig {
    let mut up = UpstreamConfig::offline_placeholder(name).expect("an upstream name");
    up.url = url
        .parse()
        .unwrap_or_else(|e| panic!("upstream url {url:?}: {e}"));
    up.read_timeout = Duration::from_secs(5);
    up
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| (*s).to_owned()).collect()
}

/// `config` as the TOML file portcullis reads.
pub fn to_toml(config: &Config) -> String {
    toml::to_string(config).expect("a Config serializes to TOML")
}

/// What [`Proxy::start`](crate::Proxy::start) and
/// [`Proxy::write_config`](crate::Proxy::write_config) accept: TOML text with the `{LISTEN}` and
/// `{DATA}` placeholders, or a typed [`Config`] (or [`ConfigBuilder`]), whose `[server] listen`
/// and `[cache] dir` are set to the same values.
pub trait ProxyConfig {
    /// The file's text for a proxy listening on `listen` with its cache in `data`.
    fn render(&self, listen: SocketAddr, data: &Path) -> String;
}

impl ProxyConfig for str {
    fn render(&self, listen: SocketAddr, data: &Path) -> String {
        self.replace("{LISTEN}", &listen.to_string())
            .replace("{DATA}", &data.display().to_string())
    }
}

impl ProxyConfig for String {
    fn render(&self, listen: SocketAddr, data: &Path) -> String {
        self.as_str().render(listen, data)
    }
}

impl ProxyConfig for Config {
    fn render(&self, listen: SocketAddr, data: &Path) -> String {
        let mut config = self.clone();
        config.server.listen = listen;
        config.cache.dir = PathBuf::from(data);
        to_toml(&config)
    }
}

impl ProxyConfig for ConfigBuilder {
    fn render(&self, listen: SocketAddr, data: &Path) -> String {
        self.config.render(listen, data)
    }
}

/// Writes `config` to `path` for a CLI command (`verify`, `import`, `mirror`, …) whose cache is
/// `data`: `[server] listen` is `127.0.0.1:0`, as no command but `serve` listens.
pub fn write_cli_config(path: &Path, config: &(impl ProxyConfig + ?Sized), data: &Path) {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    std::fs::write(path, config.render(listen, data))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A `[[rule]]`: its images, who must have signed them, what else it asks. Goes wherever a
/// [`RuleConfig`] does.
#[derive(Debug, Clone)]
pub struct Rule(RuleConfig);

impl Rule {
    /// A rule `name` over the `images` globs, with no authority yet (mode enforce, threshold 1).
    pub fn new(name: &str, images: &[&str]) -> Rule {
        Rule(RuleConfig {
            name: name.to_owned(),
            images: strings(images),
            ..RuleConfig::default()
        })
    }

    /// An authority: the `[[trust.key]]` named `key`.
    pub fn key(self, key: &str) -> Rule {
        self.authority(key_authority(key))
    }

    /// An authority: a keyless identity, `subject` certified by `issuer` under the
    /// `[[trust.root]]` named `root`.
    pub fn keyless(self, root: &str, issuer: &str, subject: &str) -> Rule {
        self.authority(keyless_authority(root, issuer, subject))
    }

    /// Any `[[rule.authority]]` (see [`key_authority`], [`keyless_authority`]).
    pub fn authority(mut self, authority: AuthorityConfig) -> Rule {
        self.0.authorities.push(authority);
        self
    }

    /// A `[[rule.attestation]]`: `predicate_type`, signed by the rule's `authorities` named here
    /// (all of them when empty), meeting every CEL expression in `conditions`.
    pub fn attestation(
        mut self,
        predicate_type: &str,
        authorities: &[&str],
        conditions: &[&str],
    ) -> Rule {
        self.0.attestations.push(AttestationConfig {
            predicate_type: predicate_type.to_owned(),
            authorities: strings(authorities),
            conditions: strings(conditions),
        });
        self
    }

    /// `mode = "warn"` or `"audit"` (the default is enforce).
    pub fn mode(mut self, mode: Mode) -> Rule {
        self.0.mode = mode;
        self
    }

    /// `threshold`: how many distinct authorities must accept the image.
    pub fn threshold(mut self, n: usize) -> Rule {
        self.0.threshold = Some(n);
        self
    }

    /// An authority: the `[[trust.pins]]` set named `set`.
    pub fn pinned(self, set: &str) -> Rule {
        self.authority(AuthorityConfig {
            pinned: Some(set.to_owned()),
            ..AuthorityConfig::default()
        })
    }

    /// `immutable_tags = true`.
    pub fn immutable_tags(mut self) -> Rule {
        self.0.immutable_tags = true;
        self
    }

    /// `verify_base = true`.
    pub fn verify_base(mut self) -> Rule {
        self.0.verify_base = true;
        self
    }
}

impl From<Rule> for RuleConfig {
    fn from(r: Rule) -> RuleConfig {
        r.0
    }
}

/// `[[rule.authority]] key = "<key>"`.
pub fn key_authority(key: &str) -> AuthorityConfig {
    AuthorityConfig {
        key: Some(key.to_owned()),
        ..AuthorityConfig::default()
    }
}

/// `[[rule.authority]] keyless = { root, issuer, subject }`.
pub fn keyless_authority(root: &str, issuer: &str, subject: &str) -> AuthorityConfig {
    AuthorityConfig {
        keyless: Some(KeylessConfig {
            root: root.to_owned(),
            issuer: Some(issuer.to_owned()),
            subject: Some(subject.to_owned()),
            ..KeylessConfig::default()
        }),
        ..AuthorityConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CosignKey, TestSigstore};

    /// Every table the builder writes reads back, through the binary's own loader (which checks
    /// the files named too), as the same config; sizes and durations exactly.
    #[test]
    fn a_built_config_reads_back_as_itself() {
        let dir = crate::tempdir();
        let key = dir.path().join("release.pub");
        CosignKey::generate().write_public(&key);
        let root = dir.path().join("trusted_root.json");
        std::fs::write(&root, TestSigstore::new().trusted_root_json()).unwrap();
        let users = dir.path().join("users");
        std::fs::write(&users, format!("alice:sha256:{}\n", "ab".repeat(32))).unwrap();
        let built = ConfigBuilder::pull_through("127.0.0.1:5001", "http://127.0.0.1:5001")
            .upstream("mirror.test", "https://mirror.test")
            .with_upstream("mirror.test", |u| {
                u.username_env = Some("USER".into());
                u.password_env = Some("PASS".into());
            })
            .server(|s| s.max_manifest_size = ByteSize::b(100))
            .cache(|c| {
                c.max_size = ByteSize::b(3_000_001);
                c.tag_ttl = Duration::ZERO;
                c.cold_blobs = portcullis::config::ColdBlobs::Stream;
            })
            .deny("127.0.0.1:5001/bad/**")
            .allow("127.0.0.1:5001/**")
            .trust_key("release", &key)
            .trust_root("test", &root)
            .rule(
                Rule::new("keyed", &["127.0.0.1:5001/keyed/**"])
                    .key("release")
                    .mode(Mode::Warn)
                    .verify_base(),
            )
            .rule(
                Rule::new("attested", &["127.0.0.1:5001/attested/**"])
                    .authority(AuthorityConfig {
                        name: Some("ci".into()),
                        ..keyless_authority("test", "https://issuer.test", "ci@example.test")
                    })
                    .attestation("https://slsa.dev/provenance/v1", &["ci"], &["true"])
                    .threshold(1),
            )
            .metrics(9100)
            .json_logs()
            .auth(&users, &[(&["alice"], &["**"])])
            .mirror(&["127.0.0.1:5001/keyed/app:v1".to_owned()]);
        let text = built.to_toml();
        let read = Config::from_toml(&text, "built").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(to_toml(&read), text);
        assert_eq!(read.cache.max_size, ByteSize::b(3_000_001));
        assert_eq!(read.auth.unwrap().grants[0].users, ["alice"]);
        assert_eq!(read.upstreams[0].read_timeout, Duration::from_secs(5));
    }

    #[test]
    fn text_and_typed_configs_get_the_proxys_address_and_cache() {
        let listen: SocketAddr = ([127, 0, 0, 1], 4321).into();
        let data = Path::new("/tmp/somewhere/data");
        let text = "listen = \"{LISTEN}\"\ndir = \"{DATA}\"\n".render(listen, data);
        assert_eq!(
            text,
            "listen = \"127.0.0.1:4321\"\ndir = \"/tmp/somewhere/data\"\n"
        );
        let typed = ConfigBuilder::new().render(listen, data);
        let read = Config::from_toml(&typed, "typed").unwrap();
        assert_eq!(read.server.listen, listen);
        assert_eq!(read.cache.dir, data);
    }
}
