//! Client authentication (optional): basic credentials or bearer tokens checked against a file of
//! hashed secrets, and per-user pull grants on repository globs, checked on every request before
//! anything else happens. Unauthenticated requests get a `401` with a Basic challenge that Docker,
//! containerd and podman answer, and are never forwarded upstream.
//!
//! The users file holds one `name:hash` per line: an argon2 PHC string (`portcullis hash-secret`
//! makes one) for passwords, or `sha256:<hex>` for long random tokens. Lines starting with `#`
//! are comments.
//!
//! Password hashing (argon2, deliberately slow) runs off the async workers, a few at a time, and
//! failures are counted per user and per client address: past `max_failures` a minute, neither
//! is checked again until the minute is over, so a password flood cannot starve other clients.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine as _;
use globset::GlobSet;
use http::{header, HeaderMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub users_file: PathBuf,
    #[serde(default, rename = "grant")]
    pub grants: Vec<GrantConfig>,
    /// Failed logins a minute, per user and per client address, before both are refused
    /// unchecked for the rest of the minute.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// Password hashes checked at once (argon2 takes a core for tens of milliseconds).
    #[serde(default = "default_hashing")]
    pub concurrent_hashes: usize,
}

fn default_max_failures() -> u32 {
    10
}

fn default_hashing() -> usize {
    2
}

/// `[[auth.grant]]`: these users may pull these images (`*` for every user).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub users: Vec<String>,
    pub images: Vec<String>,
}

/// An `[auth]` section that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("[auth] users_file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("[auth] users_file {}, line {line}: expected name:hash", path.display())]
    Line { path: PathBuf, line: usize },
    #[error("[auth] users_file {}, line {line}: expected name:hash: {source}", path.display())]
    Hash {
        path: PathBuf,
        line: usize,
        #[source]
        source: argon2::password_hash::Error,
    },
    #[error("[[auth.grant]]: {0}")]
    Grant(#[source] portcullis_policy::GlobError),
}

enum Secret {
    Argon2(String),
    Sha256([u8; 32]),
}

/// What checking a password came to.
enum Check {
    Valid,
    Wrong,
    /// Not checked: the user or the client address is past its failure limit.
    Limited,
}

impl Check {
    fn of(valid: bool) -> Check {
        if valid {
            Check::Valid
        } else {
            Check::Wrong
        }
    }
}

/// Users, their hashed secrets and their grants.
pub struct Authenticator {
    users: HashMap<String, Secret>,
    grants: Vec<(Vec<String>, GlobSet)>,
    /// Credentials already verified (by a hash of the header), so argon2 runs once per client.
    verified: moka::sync::Cache<[u8; 32], String>,
    /// Failed logins in the last minute, by `user:<name>` and `peer:<address>`.
    failures: moka::sync::Cache<String, u32>,
    max_failures: u32,
    hashing: Arc<Semaphore>,
}

impl Authenticator {
    pub fn load(cfg: &AuthConfig) -> Result<Authenticator, AuthError> {
        let path: &Path = &cfg.users_file;
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || AuthError::Line {
                path: path.to_owned(),
                line: n + 1,
            };
            let (name, hash) = line.split_once(':').ok_or_else(bad)?;
            let secret = if let Some(hex) = hash.strip_prefix("sha256:") {
                let bytes = hex::decode(hex).map_err(|_| bad())?;
                Secret::Sha256(bytes.try_into().map_err(|_| bad())?)
            } else {
                PasswordHash::new(hash).map_err(|source| AuthError::Hash {
                    path: path.to_owned(),
                    line: n + 1,
                    source,
                })?;
                Secret::Argon2(hash.to_owned())
            };
            users.insert(name.to_owned(), secret);
        }
        let grants = cfg
            .grants
            .iter()
            .map(|g| {
                portcullis_policy::compile_globs(&g.images)
                    .map(|set| (g.users.clone(), set))
                    .map_err(AuthError::Grant)
            })
            .collect::<Result<_, _>>()?;
        Ok(Authenticator {
            users,
            grants,
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            max_failures: cfg.max_failures,
            hashing: Arc::new(Semaphore::new(cfg.concurrent_hashes.max(1))),
        })
    }

    /// The user the request's `Authorization` proves, if any. `peer` is the client's address.
    pub async fn authenticate(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<String> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        if let Some(user) = self.verified.get(&key) {
            return Some(user);
        }
        let (scheme, rest) = value.split_once(' ')?;
        let peer_key = peer.map(|p| format!("peer:{p}"));
        let user = if scheme.eq_ignore_ascii_case("basic") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let (name, secret) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
            let user_key = format!("user:{name}");
            let limited = || {
                self.over_limit(&user_key) || peer_key.as_ref().is_some_and(|k| self.over_limit(k))
            };
            let verdict = if limited() {
                Check::Limited
            } else {
                self.check(name, secret, limited).await
            };
            match verdict {
                Check::Valid => name.to_owned(),
                Check::Limited => {
                    tracing::warn!(
                        user = name,
                        ?peer,
                        "login refused unchecked: too many failures this minute"
                    );
                    return None;
                }
                Check::Wrong => {
                    self.failed(&user_key);
                    if let Some(k) = &peer_key {
                        self.failed(k);
                    }
                    return None;
                }
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let digest: [u8; 32] = Sha256::digest(rest.trim().as_bytes()).into();
            self.users
                .iter()
                .find(|(_, s)| matches!(s, Secret::Sha256(h) if *h == digest))
                .map(|(n, _)| n.clone())?
        } else {
            return None;
        };
        self.verified.insert(key, user.clone());
        Some(user)
    }

    fn over_limit(&self, key: &str) -> bool {
        self.failures.get(key).unwrap_or(0) >= self.max_failures
    }

    fn failed(&self, key: &str) {
        let n = self.failures.get(key).unwrap_or(0);
        self.failures.insert(key.to_owned(), n.saturating_add(1));
    }

    /// Whether `secret` is `name`'s; unchecked if `limited` says so once it is this attempt's
    /// turn to hash (a burst queued before the limit was reached must not each run argon2).
    async fn check(&self, name: &str, secret: &str, limited: impl Fn() -> bool) -> Check {
        match self.users.get(name) {
            Some(Secret::Sha256(h)) => Check::of(Sha256::digest(secret.as_bytes()).as_slice() == h),
            Some(Secret::Argon2(phc)) => {
                // Off the async workers, a few at a time: a flood waits here, nothing else does.
                let Ok(_permit) = self.hashing.acquire().await else {
                    return Check::Wrong;
                };
                if limited() {
                    return Check::Limited;
                }
                let (phc, secret) = (phc.clone(), secret.to_owned());
                let valid = tokio::task::spawn_blocking(move || {
                    PasswordHash::new(&phc)
                        .map(|h| {
                            Argon2::default()
                                .verify_password(secret.as_bytes(), &h)
                                .is_ok()
                        })
                        .unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                Check::of(valid)
            }
            None => Check::Wrong,
        }
    }

    /// Whether `user` may pull `name` (`registry/repository`).
    pub fn allows(&self, user: &str, name: &str) -> bool {
        self.grants.iter().any(|(users, images)| {
            users.iter().any(|u| u == user || u == "*") && images.is_match(name)
        })
    }
}

/// An argon2id PHC string for `secret`, for the users file.
pub fn hash_secret(secret: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
}
