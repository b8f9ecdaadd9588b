//! The shared state of a running proxy, and how a new configuration replaces it.

use std::path::PathBuf;
use std::sync::Arc;

use moka::sync::Cache;
use portcullis_cache::{Store, StoreConfig};
use portcullis_policy::{Policy, PolicyError, Verdict};

use crate::attest::AttestError;
use crate::auth::{AuthError, Authenticator};
use crate::coalesce::Coalesce;
use crate::config::Config;
use crate::content::referrers::HeldReferrers;
use crate::fetch::Flights;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::shared::Tier;
use crate::upstream::{Upstream, UpstreamSetupError};

/// An [`App`] that cannot be built from a configuration: the cache cannot be opened, or a part
/// of the configuration cannot be loaded now (files it names are read at this point).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the cache in {}: {source}", dir.display())]
    Cache {
        dir: PathBuf,
        #[source]
        source: portcullis_cache::Error,
    },
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Attest(#[from] AttestError),
    #[error("cannot set up the shared tier: {0}")]
    Shared(#[from] portcullis_cache::shared::SharedError),
}

/// Everything a request needs. What comes from the configuration (upstreams, policy) is rebuilt
/// on reload; the cache, running fetches, verdicts and metrics carry over.
pub struct App {
    pub config: Config,
    pub store: Arc<Store>,
    pub router: Router,
    pub policy: Policy,
    /// Verdicts by `fingerprint\0name\0digest`, in front of their RocksDB copies. The key holds
    /// the policy fingerprint, so a policy or trust change misses it without a flush.
    pub verdicts: Cache<String, Arc<Verdict>>,
    /// Denials, by the same keys, in memory only and for `tag_ttl`: a signature pushed upstream
    /// after a denial must be seen without a policy change.
    pub denials: Cache<String, Arc<Verdict>>,
    /// Verdict keys whose gates (and vouchers) are already written.
    pub gated: Cache<String, ()>,
    /// Referrer lists by `name\0subject`, in front of their RocksDB copies.
    pub referrers: Cache<String, HeldReferrers>,
    pub flights: Arc<Flights>,
    /// The bucket replicas share (`[cache.shared]`), below the store and above the upstream.
    pub shared: Option<Arc<Tier>>,
    /// Verdicts being decided: concurrent requests for one manifest share one decision.
    pub deciding: Arc<Coalesce<String, Arc<Verdict>>>,
    /// Tags being resolved upstream, by `name\0tag key`: one revalidation or fetch at a time.
    pub resolving: Arc<Coalesce<String, Resolved>>,
    /// Small evidence blobs being fetched: each distinct digest is fetched once at a time.
    pub fetching: Arc<Coalesce<portcullis_cache::Digest, bytes::Bytes>>,
    pub metrics: Metrics,
    /// Client authentication, when `[auth]` is configured.
    pub auth: Option<Authenticator>,
    /// The signer of verification summaries, when `[attest]` is configured.
    pub attest: Option<Arc<crate::attest::Attester>>,
}

/// The in-memory layers that outlive a reload.
struct Caches {
    verdicts: Cache<String, Arc<Verdict>>,
    denials: Cache<String, Arc<Verdict>>,
    gated: Cache<String, ()>,
    referrers: Cache<String, HeldReferrers>,
    deciding: Arc<Coalesce<String, Arc<Verdict>>>,
    resolving: Arc<Coalesce<String, Resolved>>,
    fetching: Arc<Coalesce<portcullis_cache::Digest, bytes::Bytes>>,
}

/// A tag resolved: the digest, its manifest, and how it was obtained.
pub type Resolved = (
    portcullis_cache::Digest,
    portcullis_cache::Manifest,
    crate::content::Obtained,
);

impl App {
    /// Opens the cache and builds the upstream clients.
    pub fn new(config: Config) -> Result<App, AppError> {
        let store = Store::open(&StoreConfig {
            dir: config.cache.dir.clone(),
            max_size: config.cache.max_size.as_u64(),
            hot_bytes: config.cache.memory.as_u64(),
        })
        .map_err(|source| AppError::Cache {
            dir: config.cache.dir.clone(),
            source,
        })?;
        let metrics = Metrics::new();
        let shared = config
            .cache
            .shared
            .as_ref()
            .map(|c| Tier::open(c, metrics.clone()).map(Arc::new))
            .transpose()?;
        if let Some(tier) = &shared {
            tier.probe_conditional_writes();
        }
        let flights = Arc::new(Flights::new(metrics.clone(), shared.clone()));
        let caches = Caches {
            verdicts: Cache::new(100_000),
            denials: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.cache.tag_ttl)
                .build(),
            gated: Cache::new(100_000),
            referrers: Cache::new(10_000),
            deciding: Arc::default(),
            resolving: Arc::default(),
            fetching: Arc::default(),
        };
        App::assemble(config, store, caches, flights, shared, metrics)
    }

    /// The same cache, fetches and metrics under a new configuration. `listen` and `[cache]`
    /// changes take a restart; everything else applies to the next request.
    pub fn reload(&self, config: Config) -> Result<App, AppError> {
        if config.cache.dir != self.config.cache.dir {
            tracing::warn!("[cache] dir changed: takes effect on restart");
        }
        if config.cache.shared.as_ref().map(|s| &s.url)
            != self.config.cache.shared.as_ref().map(|s| &s.url)
        {
            tracing::warn!("[cache.shared] changed: takes effect on restart");
        }
        if config.server.listen != self.config.server.listen {
            tracing::warn!("[server] listen changed: takes effect on restart");
        }
        if config.server.tls_cert.is_some() != self.config.server.tls_cert.is_some() {
            tracing::warn!("[server] TLS turned on or off: takes effect on restart");
        }
        App::assemble(
            config,
            Arc::clone(&self.store),
            Caches {
                verdicts: self.verdicts.clone(),
                denials: self.denials.clone(),
                gated: self.gated.clone(),
                referrers: self.referrers.clone(),
                deciding: Arc::clone(&self.deciding),
                resolving: Arc::clone(&self.resolving),
                fetching: Arc::clone(&self.fetching),
            },
            Arc::clone(&self.flights),
            self.shared.clone(),
            self.metrics.clone(),
        )
    }

    fn assemble(
        config: Config,
        store: Arc<Store>,
        caches: Caches,
        flights: Arc<Flights>,
        shared: Option<Arc<Tier>>,
        metrics: Metrics,
    ) -> Result<App, AppError> {
        let offline = config.server.offline;
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, offline, metrics.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let default = config.upstreams.iter().position(|u| u.default);
        let policy = config.policy_engine()?;
        let auth = config.auth.as_ref().map(Authenticator::load).transpose()?;
        let attest = config
            .attest
            .as_ref()
            .map(crate::attest::Attester::load)
            .transpose()?
            .map(Arc::new);
        Ok(App {
            auth,
            attest,
            router: Router::new(
                upstreams,
                default,
                offline,
                offline.then(|| {
                    let store = Arc::clone(&store);
                    Arc::new(move |registry: &str| store.holds_registry(registry).unwrap_or(false))
                        as crate::route::HeldRegistries
                }),
                metrics.clone(),
            ),
            policy,
            store,
            verdicts: caches.verdicts,
            denials: caches.denials,
            gated: caches.gated,
            referrers: caches.referrers,
            deciding: caches.deciding,
            resolving: caches.resolving,
            fetching: caches.fetching,
            flights,
            shared,
            metrics,
            config,
        })
    }

    /// Deletes, in the background, the verdicts and gate records of policies no longer in force
    /// (their keys start with another fingerprint), gate records of the old, sizeless kind, and
    /// immutable-tag records of names no rule keeps immutable any more.
    pub fn collect_orphans(&self) {
        let store = Arc::clone(&self.store);
        let current = format!("{}\0", self.policy.fingerprint());
        let held = crate::gate::tags::still_held(self);
        tokio::task::spawn_blocking(move || {
            let mut gone = 0;
            let attest = [
                crate::attest::SUMMARY_RECORDS,
                crate::attest::PARENT_RECORDS,
                crate::attest::DOC_RECORDS,
            ];
            for namespace in ["verdict", crate::gate::GATE].into_iter().chain(attest) {
                match store.retain_meta(namespace, |k| k.starts_with(&current)) {
                    Ok(n) => gone += n,
                    Err(e) => {
                        tracing::warn!(error = %e, namespace, "collecting old records failed")
                    }
                }
            }
            if let Ok(n) = store.retain_meta("gate", |_| false) {
                gone += n;
            }
            match store.retain_meta(crate::gate::tags::FIRST, &held) {
                Ok(n) => gone += n,
                Err(e) => tracing::warn!(error = %e, "collecting immutable tag records failed"),
            }
            if gone > 0 {
                tracing::info!(
                    records = gone,
                    "collected the records of policies no longer in force"
                );
            }
        });
    }

    /// An air-gapped mirror: the cache is all there is.
    pub fn offline(&self) -> bool {
        self.config.server.offline
    }
}

/// A throw-away cache directory for a command that resolves and decides beside a serving
/// instance (`verify`, `pin`): points the configuration at it, and removes it when dropped.
pub struct ScratchCache(std::path::PathBuf);

impl ScratchCache {
    pub fn new(config: &mut Config, command: &str) -> ScratchCache {
        let dir = std::env::temp_dir().join(format!("portcullis-{command}-{}", std::process::id()));
        config.cache.dir = dir.clone();
        ScratchCache(dir)
    }
}

impl Drop for ScratchCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
