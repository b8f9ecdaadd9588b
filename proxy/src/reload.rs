//! Hot reload: SIGHUP, or a change of the config file or of a file it names (TLS certificates,
//! the users file, trust keys, `trusted_root.json` and pins files, the `[attest]` key; polled),
//! builds a new [`App`](crate::App) on the same cache and swaps it in. A configuration that fails
//! validation is rejected with a log line, and the one in force stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::app::AppError;
use crate::config::{Config, ConfigError};
use crate::error::Report;
use crate::metrics::ResultLabel;
use crate::server::State;
use crate::tls::{Tls, TlsError};

const POLL: Duration = Duration::from_secs(2);

/// Why a reload was rejected.
#[derive(Debug, thiserror::Error)]
enum Rejected {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Watches `path` (or, without one, the files the embedded default names) and the files of the
/// configuration in force until the process ends.
pub async fn watch(state: State, path: Option<PathBuf>, tls: Option<Arc<Tls>>) {
    let path = path.as_deref();
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload by file change only");
        return;
    };
    let mut seen = stamps(&state, path);
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            _ = hup.recv() => tracing::info!("SIGHUP received: reloading"),
            _ = tick.tick() => {
                let now = stamps(&state, path);
                if now == seen {
                    continue;
                }
                tracing::info!("configuration files changed: reloading");
            }
        }
        // Stamps taken before the files are read: a file written while (or just after) they
        // are read differs from them at the next tick and is read again, where stamps taken
        // after the reload would already include the write and miss it for good.
        let before = stamps(&state, path);
        reload(&state, path, tls.as_deref());
        seen = stamps(&state, path)
            .into_iter()
            .map(|(file, now)| {
                let earlier = before.iter().find(|(f, _)| *f == file).map(|(_, s)| *s);
                (file, earlier.unwrap_or(now))
            })
            .collect();
    }
}

fn reload(state: &State, path: Option<&Path>, tls: Option<&Tls>) {
    let current = state.load_full();
    // Build everything first; only a configuration that is whole replaces the one in force,
    // certificates included.
    let config = match path {
        Some(path) => Config::from_file(path),
        None => Ok(Config::embedded()),
    };
    let result = config.map_err(Rejected::from).and_then(|config| {
        let app = current.reload(config)?;
        if let Some(tls) = tls {
            tls.reload(&app.config.server)?;
        }
        Ok(app)
    });
    match result {
        Ok(app) => {
            let changed = app.policy.fingerprint() != current.policy.fingerprint();
            if changed {
                app.collect_orphans();
            }
            state.store(Arc::new(app));
            current
                .metrics
                .reloads
                .get_or_create(&ResultLabel { result: "ok" })
                .inc();
            tracing::info!(policy_changed = changed, "config reloaded");
        }
        Err(e) => {
            current
                .metrics
                .reloads
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
            tracing::error!(error = %Report(&e), "config reload rejected; the previous configuration stays in force");
        }
    }
}

/// Modification times (and sizes) of the config file and every file it names: a user removed
/// from the users file, or a key revoked, takes effect without a signal.
fn stamps(state: &State, path: Option<&Path>) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
    let app = state.load();
    let c = &app.config;
    let s = &c.server;
    path.into_iter()
        .chain(s.tls_cert.as_deref())
        .chain(s.tls_key.as_deref())
        .chain(s.client_ca.as_deref())
        .chain(c.auth.as_ref().map(|a| a.users_file.as_path()))
        .chain(c.trust.keys.iter().map(|k| k.path.as_path()))
        .chain(c.trust.roots.iter().map(|r| r.trusted_root.as_path()))
        .chain(c.trust.pins.iter().map(|p| p.path.as_path()))
        .chain(
            c.attest
                .iter()
                .flat_map(|a| std::iter::once(a.key.as_path()).chain(a.password_file.as_deref())),
        )
        .map(|p| {
            let stamp = std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (p.to_owned(), stamp)
        })
        .collect()
}
