//! Prometheus metrics, served on their own listener (`[metrics] listen`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

/// What kind of object a shared-tier exchange was about (`blob`, `manifest`, `evidence`, `tag`,
/// `referrers`, `lease`) and, for bytes, which way they went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SharedLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormLabel {
    pub form: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub rule: String,
    pub outcome: &'static str,
}

type Latency = Family<UpstreamLabel, Histogram, fn() -> Histogram>;

/// Every metric portcullis exports. Cheap to clone: the values are shared.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub cache: Family<ResultLabel, Counter>,
    pub served_bytes: Counter,
    pub upstream_latency: Latency,
    pub upstream_errors: Family<UpstreamLabel, Counter>,
    pub verdicts: Family<VerdictLabels, Counter>,
    pub singleflight_joins: Counter,
    pub cache_size: Gauge,
    pub evictions: Counter,
    pub stale_serves: Counter,
    pub tag_moves: Family<UpstreamLabel, Counter>,
    pub summaries_signed: Counter,
    pub summaries_served: Family<FormLabel, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
    pub shared_hits: Family<SharedLabel, Counter>,
    pub shared_misses: Family<SharedLabel, Counter>,
    pub shared_errors: Family<SharedLabel, Counter>,
    pub shared_refused: Family<SharedLabel, Counter>,
    pub shared_bytes_read: Counter,
    pub shared_bytes_written: Counter,
    pub shared_lease_waits: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("portcullis");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            requests: Family::default(),
            cache: Family::default(),
            served_bytes: Counter::default(),
            upstream_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            upstream_errors: Family::default(),
            verdicts: Family::default(),
            singleflight_joins: Counter::default(),
            cache_size: Gauge::default(),
            evictions: Counter::default(),
            stale_serves: Counter::default(),
            tag_moves: Family::default(),
            summaries_signed: Counter::default(),
            summaries_served: Family::default(),
            reloads: Family::default(),
            shared_hits: Family::default(),
            shared_misses: Family::default(),
            shared_errors: Family::default(),
            shared_refused: Family::default(),
            shared_bytes_read: Counter::default(),
            shared_bytes_written: Counter::default(),
            shared_lease_waits: Counter::default(),
        };
        r.register(
            "requests",
            "Requests by route, status and upstream",
            m.requests.clone(),
        );
        r.register(
            "cache_requests",
            "Cache lookups by result (hit, miss, joined, stale)",
            m.cache.clone(),
        );
        r.register(
            "served_bytes",
            "Body bytes served to clients",
            m.served_bytes.clone(),
        );
        r.register(
            "upstream_request_duration_seconds",
            "Time to an upstream's response headers",
            m.upstream_latency.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream exchanges that failed",
            m.upstream_errors.clone(),
        );
        r.register(
            "verdicts",
            "Verification verdicts by rule and outcome",
            m.verdicts.clone(),
        );
        r.register(
            "singleflight_joins",
            "Requests that joined a running blob fetch",
            m.singleflight_joins.clone(),
        );
        r.register(
            "cache_size_bytes",
            "Bytes of content held",
            m.cache_size.clone(),
        );
        r.register(
            "evictions",
            "Items evicted to keep the cache under its size",
            m.evictions.clone(),
        );
        r.register(
            "stale_serves",
            "Tag mappings served stale while the upstream was down",
            m.stale_serves.clone(),
        );
        r.register(
            "tag_moves",
            "Tags found pointing at a new digest when revalidated, by upstream",
            m.tag_moves.clone(),
        );
        r.register(
            "summaries_signed",
            "Verification summaries signed ([attest]), one per verdict that passed",
            m.summaries_signed.clone(),
        );
        r.register(
            "summaries_served",
            "Verification summaries served, by form: bundle (listed in referrers), att (the .att tag)",
            m.summaries_served.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads by result",
            m.reloads.clone(),
        );
        r.register(
            "shared_hits",
            "Objects found in the shared tier ([cache.shared]), by kind",
            m.shared_hits.clone(),
        );
        r.register(
            "shared_misses",
            "Objects looked for in the shared tier and not there, by kind",
            m.shared_misses.clone(),
        );
        r.register(
            "shared_errors",
            "Shared-tier exchanges that failed (the tier is then skipped for retry_after), by kind",
            m.shared_errors.clone(),
        );
        r.register(
            "shared_refused",
            "Objects read from the shared tier that did not hash to their key, by kind",
            m.shared_refused.clone(),
        );
        r.register(
            "shared_read_bytes",
            "Bytes read from the shared tier",
            m.shared_bytes_read.clone(),
        );
        r.register(
            "shared_written_bytes",
            "Bytes written to the shared tier",
            m.shared_bytes_written.clone(),
        );
        r.register(
            "shared_lease_waits",
            "Blob fetches that waited for another replica's upstream fetch",
            m.shared_lease_waits.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, cache_size: u64) -> String {
        self.cache_size.set(cache_size as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
