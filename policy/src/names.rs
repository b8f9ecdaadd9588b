//! Allow-list, deny-list and the default action, checked before any upstream traffic.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// A glob that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("policy glob {glob:?}: {source}")]
pub struct GlobError {
    pub glob: String,
    #[source]
    pub source: globset::Error,
}

/// What happens to an allowed name that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Refuse it.
    #[default]
    Deny,
    /// Serve it (hash-checked).
    Allow,
    /// Serve it (hash-checked) and log a warning.
    Warn,
}

/// The `[policy]` table.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NamePolicyConfig {
    /// If set, only names matching one of these globs may be pulled.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Names matching any of these globs are never pulled.
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub default: DefaultAction,
}

/// The compiled allow/deny lists.
#[derive(Debug, Clone)]
pub struct NamePolicy {
    allow: Option<(GlobSet, Vec<String>)>,
    deny: (GlobSet, Vec<String>),
    default: DefaultAction,
}

/// The verdict on a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameDecision {
    /// Allowed, and this is what to do with it absent a matching rule.
    Allowed(DefaultAction),
    /// Refused, with the reason for the person who asked.
    Refused(String),
}

impl NamePolicy {
    /// Compiles the globs: `*` matches within one path segment, `**` across segments.
    pub fn new(cfg: &NamePolicyConfig) -> Result<NamePolicy, GlobError> {
        let allow = match &cfg.allow {
            Some(globs) => Some((compile_globs(globs)?, globs.clone())),
            None => None,
        };
        Ok(NamePolicy {
            allow,
            deny: (compile_globs(&cfg.deny)?, cfg.deny.clone()),
            default: cfg.default,
        })
    }

    /// Checks `name` (`registry/repository`, e.g. `docker.io/library/alpine`).
    pub fn check(&self, name: &str) -> NameDecision {
        let (deny, deny_globs) = &self.deny;
        if let Some(i) = deny.matches(name).first() {
            return NameDecision::Refused(format!(
                "{name} is on the deny-list (matches {:?} in [policy] deny)",
                deny_globs[*i]
            ));
        }
        if let Some((allow, globs)) = &self.allow {
            if !allow.is_match(name) {
                return NameDecision::Refused(format!(
                    "{name} is not on the allow-list; add a glob that matches it to [policy] allow (now {globs:?})"
                ));
            }
        }
        NameDecision::Allowed(self.default)
    }

    pub fn default_action(&self) -> DefaultAction {
        self.default
    }
}

/// Compiles globs: `*` matches within one path segment, `**` across segments.
pub fn compile_globs(globs: &[String]) -> Result<GlobSet, GlobError> {
    let mut set = GlobSetBuilder::new();
    for g in globs {
        set.add(glob(g)?);
    }
    set.build().map_err(|source| GlobError {
        glob: globs.join(", "),
        source,
    })
}

fn glob(g: &str) -> Result<Glob, GlobError> {
    GlobBuilder::new(g)
        .literal_separator(true)
        .build()
        .map_err(|source| GlobError {
            glob: g.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: Option<&[&str]>, deny: &[&str]) -> NamePolicy {
        NamePolicy::new(&NamePolicyConfig {
            allow: allow.map(|a| a.iter().map(|s| s.to_string()).collect()),
            deny: deny.iter().map(|s| s.to_string()).collect(),
            default: DefaultAction::Warn,
        })
        .unwrap()
    }

    #[test]
    fn single_star_stays_in_one_segment() {
        let p = policy(Some(&["docker.io/library/*", "127.0.0.1:5001/**"]), &[]);
        assert_eq!(
            p.check("docker.io/library/alpine"),
            NameDecision::Allowed(DefaultAction::Warn)
        );
        assert!(matches!(
            p.check("docker.io/library/a/b"),
            NameDecision::Refused(_)
        ));
        assert!(matches!(
            p.check("docker.io/acme/app"),
            NameDecision::Refused(_)
        ));
        assert!(matches!(
            p.check("127.0.0.1:5001/test/deep/img"),
            NameDecision::Allowed(_)
        ));
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = policy(Some(&["docker.io/**"]), &["docker.io/evil/*"]);
        let NameDecision::Refused(msg) = p.check("docker.io/evil/x") else {
            panic!("should be refused")
        };
        assert!(msg.contains("deny-list"), "{msg}");
        assert!(matches!(
            p.check("docker.io/good/x"),
            NameDecision::Allowed(_)
        ));
    }

    #[test]
    fn no_allow_list_allows_all() {
        let p = policy(None, &[]);
        assert!(matches!(p.check("quay.io/x/y"), NameDecision::Allowed(_)));
    }

    #[test]
    fn bad_glob_is_an_error() {
        let cfg = NamePolicyConfig {
            allow: Some(vec!["docker.io/[".into()]),
            ..Default::default()
        };
        assert!(NamePolicy::new(&cfg).is_err());
    }
}
