//! Upstream authentication: credentials from env or files, the `WWW-Authenticate` challenge, and
//! the bearer token cache.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::config::UpstreamConfig;

/// The longest a bearer token is kept, whatever its `expires_in` says (seconds).
const MAX_TOKEN_TTL: u64 = 24 * 3600;

/// Username and password for one upstream. Never printed: `Debug` is redacted.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: String,
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// A credential that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("environment variable {0} is not UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Tokens by scope, kept until shortly before `expires_in`.
#[derive(Default)]
pub struct TokenCache {
    tokens: HashMap<String, (String, Instant)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// Reads the credentials an upstream names, if any.
    pub fn load(cfg: &UpstreamConfig) -> Result<Option<Credentials>, SecretError> {
        let username = secret(cfg.username_env.as_deref(), cfg.username_file.as_deref())?;
        let password = secret(cfg.password_env.as_deref(), cfg.password_file.as_deref())?;
        Ok(match (username, password) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            _ => None,
        })
    }

    /// The `Authorization: Basic …` value.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

fn secret(env: Option<&str>, file: Option<&Path>) -> Result<Option<String>, SecretError> {
    if let Some(var) = env {
        return std::env::var(var).map(Some).map_err(|e| match e {
            std::env::VarError::NotPresent => SecretError::EnvUnset(var.to_owned()),
            std::env::VarError::NotUnicode(_) => SecretError::EnvNotUnicode(var.to_owned()),
        });
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_owned()))
            .map_err(|source| SecretError::File {
                path: path.to_owned(),
                source,
            });
    }
    Ok(None)
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest)?;
        let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k));
        Some(Challenge::Bearer {
            realm: get("realm")?.1.clone(),
            service: get("service").map(|p| p.1.clone()),
            scope: get("scope").map(|p| p.1.clone()),
        })
    }
}

/// `k="v", k2=v2` (RFC 7235 auth-params, quoted-string with backslash escapes).
fn parse_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || key.is_empty() {
            return None;
        }
        while matches!(chars.peek(), Some(c) if c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key, value));
    }
}

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        self.tokens
            .get(scope)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    /// Keeps `token` for `expires_in` seconds (60 when the server says nothing, as the spec
    /// says), less a margin for the trip, and a day at most: the token endpoint is the
    /// upstream's choice, and a huge `expires_in` overflowed `Instant` (a panic; found with
    /// the fuzz target `fuzz/fuzz_targets/www_authenticate.rs`).
    pub fn put(&mut self, scope: &str, token: String, expires_in: Option<u64>) {
        let secs = expires_in.unwrap_or(60).clamp(10, MAX_TOKEN_TTL);
        let ttl = Duration::from_secs(secs) - Duration::from_secs(5);
        self.tokens.retain(|_, (_, until)| Instant::now() < *until);
        self.tokens
            .insert(scope.to_owned(), (token, Instant::now() + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="r""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm=x, error="insufficient_scope""#),
            Some(Challenge::Bearer {
                realm: "x".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse(r#"Bearer realm="unterminated"#), None);
        assert_eq!(Challenge::parse("Negotiate abc"), None);
    }

    #[test]
    fn credentials_never_print() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.basic(), "Basic dTpodW50ZXIy");
    }

    #[test]
    fn tokens_expire() {
        let mut cache = TokenCache::default();
        cache.put("s", "t".into(), Some(3600));
        assert_eq!(cache.get("s").as_deref(), Some("t"));
        assert_eq!(cache.get("other"), None);
    }

    /// Found with the fuzz target: `"expires_in": 18446744073709551615` from a token endpoint
    /// overflowed `Instant::now() + ttl` (a panic in the request path).
    #[test]
    fn any_expiry_is_kept_without_overflow() {
        let mut cache = TokenCache::default();
        for (i, expires_in) in [Some(u64::MAX), Some(u64::MAX / 2), Some(0), None]
            .into_iter()
            .enumerate()
        {
            let scope = format!("s{i}");
            cache.put(&scope, "t".into(), expires_in);
            assert_eq!(cache.get(&scope).as_deref(), Some("t"), "{expires_in:?}");
        }
    }
}
