//! The shared state of a running proxy.

use std::sync::Arc;

use moka::sync::Cache;
use portcullis_cache::{Store, StoreConfig};
use portcullis_policy::{Policy, Verdict};

use crate::config::Config;
use crate::fetch::Flights;
use crate::route::Router;
use crate::upstream::Upstream;

/// Everything a request needs, built once from a [`Config`].
pub struct App {
    pub config: Config,
    pub store: Arc<Store>,
    pub router: Router,
    pub policy: Policy,
    /// Verdicts by `fingerprint\0name\0digest`, in front of their RocksDB copies.
    pub verdicts: Cache<String, Arc<Verdict>>,
    pub flights: Arc<Flights>,
}

impl App {
    /// An air-gapped mirror: the cache is all there is.
    pub fn offline(&self) -> bool {
        self.config.server.offline
    }
}

impl App {
    /// Opens the cache and builds the upstream clients.
    pub fn new(config: Config) -> Result<App, String> {
        let store = Store::open(&StoreConfig {
            dir: config.cache.dir.clone(),
            max_size: config.cache.max_size.as_u64(),
            hot_bytes: config.cache.memory.as_u64(),
        })
        .map_err(|e| {
            format!(
                "cannot open the cache in {}: {e}",
                config.cache.dir.display()
            )
        })?;
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, config.server.offline).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let default = config.upstreams.iter().position(|u| u.default);
        let policy = config.policy_engine()?;
        Ok(App {
            router: Router::new(upstreams, default, config.server.offline),
            policy,
            verdicts: Cache::new(100_000),
            store,
            flights: Arc::default(),
            config,
        })
    }
}
