//! An upstream's `401` answer: the `WWW-Authenticate` challenge (first line), and the token
//! endpoint's JSON (the rest), whose `expires_in` decides how long the token is kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::upstream::{Challenge, TokenCache};

/// The token endpoint's answer, read as `upstream::fetch_token` reads it (its `TokenResponse`).
#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, body) = text.split_once('\n').unwrap_or((text, ""));
    let scope = match Challenge::parse(header) {
        Some(Challenge::Bearer { realm, scope, .. }) => {
            assert!(!header.trim().is_empty() && realm.len() <= header.len());
            scope.unwrap_or_else(|| "repository:library/alpine:pull".to_owned())
        }
        Some(Challenge::Basic) | None => return,
    };
    let Ok(parsed) = serde_json::from_str::<TokenResponse>(body) else {
        return;
    };
    let Some(token) = parsed.token.or(parsed.access_token) else {
        return;
    };
    let mut cache = TokenCache::default();
    cache.put(&scope, token.clone(), parsed.expires_in);
    assert_eq!(cache.get(&scope), Some(token));
});
