//! Configuration: TOML, unknown keys rejected, validated on load, with an embedded default.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use portcullis_policy::{
    NamePolicyConfig, Policy, PolicyError, RuleConfig, TrustConfig, BUILTIN_PUBLIC_GOOD,
};
use serde::{Deserialize, Serialize};
use url::Url;

/// The configuration used when no `--config` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.toml");

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub policy: NamePolicyConfig,
    /// `[[trust.key]]` and `[[trust.root]]`: the trust material rules refer to.
    #[serde(default)]
    pub trust: TrustConfig,
    /// `[[rule]]`s: who must have signed which images.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// `[auth]`: require client credentials (optional).
    pub auth: Option<crate::auth::AuthConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// `[[mirror]]`: what `portcullis mirror` pulls, verifies and exports.
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<MirrorConfig>,
    /// `[attest]`: sign a verification summary for every image that passed (optional).
    pub attest: Option<AttestConfig>,
}

/// `[attest]`: the key portcullis signs its verification summaries (SLSA VSAs) with, and the
/// verifier identity they name. The key's password comes from the environment or a file, never
/// from this file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttestConfig {
    /// A P-256 private key, PKCS#8 PEM (encrypted or not); relative to the config file.
    pub key: PathBuf,
    /// `predicate.verifier.id`: who verified, a URI admission policies can pin.
    pub verifier_id: String,
    /// The name of an environment variable holding the key's password.
    pub password_env: Option<String>,
    /// A file holding the key's password (one line); relative to the config file.
    pub password_file: Option<PathBuf>,
}

/// `[[mirror]]`: images for the connected side of an air gap.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// `registry/repository:tag` references.
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where to listen. Examples and tests keep this on loopback.
    pub listen: SocketAddr,
    /// Manifests larger than this are refused (distribution's own limit is 4 MiB).
    #[serde(serialize_with = "byte_count")]
    pub max_manifest_size: ByteSize,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// An air-gapped mirror: never contact an upstream; serve what the cache holds.
    pub offline: bool,
    /// Serve HTTPS with this PEM certificate chain (and `tls_key`). Reloaded on SIGHUP or
    /// when the file changes.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: refuse clients without a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// A client must send a request's headers within this time, also the longest an idle
    /// keep-alive connection waits for its next request (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Open client connections at most; beyond, new ones are closed at once.
    pub max_connections: usize,
    /// Open connections from one client address at most.
    pub max_connections_per_peer: usize,
    /// Concurrent HTTP/2 streams on one connection.
    pub http2_max_streams: u32,
    /// Request headers (HTTP/1.1 buffer, HTTP/2 header list) at most.
    #[serde(serialize_with = "byte_count")]
    pub max_header_size: ByteSize,
}

/// `[metrics]`: Prometheus text on a listener of its own.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub dir: PathBuf,
    /// Evict least recently used content above this size.
    #[serde(serialize_with = "byte_count")]
    pub max_size: ByteSize,
    /// Memory for manifests and small blobs.
    #[serde(serialize_with = "byte_count")]
    pub memory: ByteSize,
    /// After this long a tag mapping is revalidated upstream with HEAD.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// While the upstream is down, a tag mapping this old is still served (with a log line).
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// When the body of a blob that is still being fetched may reach a client.
    pub cold_blobs: ColdBlobs,
    /// `[cache.shared]`: a bucket that replicas share below their own caches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<portcullis_cache::shared::SharedConfig>,
}

/// `[cache] cold_blobs`: how a blob that is not yet cached is released to clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColdBlobs {
    /// Response headers at once, the body only once the whole blob matched its digest: no
    /// unverified byte reaches a client.
    #[default]
    VerifyFirst,
    /// The body as it arrives, all but a held-back tail until the digest matched. An
    /// unverified prefix can reach the client (which checks the digest itself); opt-in.
    Stream,
}

/// One upstream registry. Credentials come from the environment or files, never inline.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// What `?ns=` and path prefixes match, e.g. `docker.io` or `127.0.0.1:5001`.
    pub name: String,
    /// `https://…`, or `http://…` when written here explicitly.
    pub url: Url,
    /// Names with no registry prefix and no `?ns=` go here (Docker `registry-mirrors`).
    #[serde(default)]
    pub default: bool,
    pub username_env: Option<String>,
    pub username_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for this upstream, besides the public roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for response headers or for the next piece of a body.
    #[serde(default = "defaults::read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest any one upstream exchange may take, body included.
    #[serde(default = "defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Boxed: toml's error is large, and a configuration error travels up every command.
    #[error("{origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{origin}: {source}")]
    Invalid {
        origin: String,
        #[source]
        source: Invalid,
    },
}

/// Why a configuration that parsed cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// Fields that contradict each other, or a value out of range: the reason says which.
    #[error("{0}")]
    Fields(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Attest(#[from] crate::attest::AttestError),
}

/// A size as its exact number of bytes: `ByteSize`'s own `Serialize` writes a rounded decimal
/// string ("2.1 GB" for 2 GiB), which would not read back as the same size.
fn byte_count<S: serde::Serializer>(size: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(size.as_u64())
}

mod defaults {
    use std::time::Duration;

    pub fn connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(30 * 60)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([127, 0, 0, 1], 5000).into(),
            max_manifest_size: ByteSize::mib(4),
            shutdown_grace: Duration::from_secs(30),
            offline: false,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_peer: 256,
            http2_max_streams: 128,
            max_header_size: ByteSize::kib(64),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("./portcullis-data"),
            max_size: ByteSize::gib(20),
            memory: ByteSize::mib(64),
            tag_ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(24 * 3600),
            cold_blobs: ColdBlobs::default(),
            shared: None,
        }
    }
}

impl Config {
    /// Loads and validates a file. Relative key and trusted-root paths are relative to the file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &path.display().to_string(), base)
    }

    /// The embedded default.
    pub fn embedded() -> Config {
        Config::from_toml(EMBEDDED_DEFAULT, "embedded default config")
            .expect("the embedded default config is valid")
    }

    /// Parses and validates `text`; `origin` names it in errors. Relative paths stay relative to
    /// the working directory.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse(text, origin, Path::new(""))
    }

    fn parse(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_owned(),
            source: Box::new(source),
        })?;
        for key in &mut config.trust.keys {
            key.path = base.join(&key.path);
        }
        for pins in &mut config.trust.pins {
            pins.path = base.join(&pins.path);
        }
        if let Some(auth) = &mut config.auth {
            auth.users_file = base.join(&auth.users_file);
        }
        if let Some(attest) = &mut config.attest {
            attest.key = base.join(&attest.key);
            if let Some(p) = &mut attest.password_file {
                *p = base.join(&*p);
            }
        }
        for p in [
            &mut config.server.tls_cert,
            &mut config.server.tls_key,
            &mut config.server.client_ca,
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
        if let Some(shared) = &mut config.cache.shared {
            for p in [
                &mut shared.access_key_id_file,
                &mut shared.secret_access_key_file,
                &mut shared.session_token_file,
            ]
            .into_iter()
            .flatten()
            {
                *p = base.join(&*p);
            }
        }
        for root in &mut config.trust.roots {
            if root.trusted_root.as_os_str() != BUILTIN_PUBLIC_GOOD {
                root.trusted_root = base.join(&root.trusted_root);
            }
        }
        config.validate().map_err(|source| ConfigError::Invalid {
            origin: origin.to_owned(),
            source,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: cross-field rules, globs, files named.
    fn validate(&self) -> Result<(), Invalid> {
        let fields = |why: &str| Err(Invalid::Fields(why.to_owned()));
        let mut names = HashSet::new();
        for up in &self.upstreams {
            up.validate().map_err(Invalid::Fields)?;
            if !names.insert(up.name.as_str()) {
                return Err(Invalid::Fields(format!(
                    "[[upstream]] name {:?} appears twice",
                    up.name
                )));
            }
        }
        if self.upstreams.iter().filter(|u| u.default).count() > 1 {
            return fields("more than one [[upstream]] has default = true");
        }
        if self.server.tls_cert.is_some() != self.server.tls_key.is_some() {
            return fields("[server] tls_cert and tls_key go together");
        }
        if self.server.max_connections == 0 || self.server.max_connections_per_peer == 0 {
            return fields(
                "[server] max_connections and max_connections_per_peer must be at least 1",
            );
        }
        if self.server.max_header_size.as_u64() < 8192 {
            return fields("[server] max_header_size must be at least 8KiB");
        }
        if self.server.client_ca.is_some() && self.server.tls_cert.is_none() {
            return fields("[server] client_ca needs tls_cert and tls_key");
        }
        if self.server.tls_cert.is_some() {
            crate::tls::server_config(&self.server)?;
        }
        if let Some(shared) = &self.cache.shared {
            shared.check().map_err(|e| Invalid::Fields(e.to_string()))?;
        }
        if self.cache.max_size.as_u64() == 0 {
            return fields("[cache] max_size must be larger than 0");
        }
        self.policy_engine()?;
        if let Some(auth) = &self.auth {
            crate::auth::Authenticator::load(auth)?;
        }
        if let Some(attest) = &self.attest {
            crate::attest::Attester::load(attest)?;
        }
        Ok(())
    }

    /// Builds the policy: globs, rules and trust material (read from their files now).
    pub fn policy_engine(&self) -> Result<Policy, PolicyError> {
        Policy::new(&self.policy, &self.trust, &self.rules)
    }
}

impl UpstreamConfig {
    /// Stands in for a registry an offline mirror holds content of but has no `[[upstream]]`
    /// for: it names the cache namespace and is never contacted.
    pub fn offline_placeholder(name: &str) -> Result<UpstreamConfig, url::ParseError> {
        Ok(UpstreamConfig {
            name: name.to_owned(),
            url: Url::parse(&format!("https://{name}"))?,
            default: false,
            username_env: None,
            username_file: None,
            password_env: None,
            password_file: None,
            ca_file: None,
            connect_timeout: defaults::connect_timeout(),
            read_timeout: defaults::read_timeout(),
            timeout: defaults::timeout(),
        })
    }

    /// The checks of one `[[upstream]]`: a reason naming it, if it cannot be used.
    fn validate(&self) -> Result<(), String> {
        let ctx = format!("[[upstream]] {:?}", self.name);
        let host_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !host_ok {
            return Err(format!(
                "{ctx}: name must be a registry host such as docker.io or 127.0.0.1:5001"
            ));
        }
        match self.url.scheme() {
            "https" | "http" => {}
            other => return Err(format!("{ctx}: url scheme {other:?} is not http or https")),
        }
        if self.url.host_str().is_none() {
            return Err(format!("{ctx}: url {} has no host", self.url));
        }
        if self.username_env.is_some() && self.username_file.is_some() {
            return Err(format!(
                "{ctx}: set username_env or username_file, not both"
            ));
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            return Err(format!(
                "{ctx}: set password_env or password_file, not both"
            ));
        }
        let has_user = self.username_env.is_some() || self.username_file.is_some();
        let has_pass = self.password_env.is_some() || self.password_file.is_some();
        if has_user != has_pass {
            return Err(format!(
                "{ctx}: a username needs a password and the other way round"
            ));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                return Err(format!("{ctx}: ca_file {} does not exist", ca.display()));
            }
        }
        Ok(())
    }
}
