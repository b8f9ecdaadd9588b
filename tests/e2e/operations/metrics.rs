//! 5. Metrics.

use std::path::Path;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use portcullis_testkit::http;
use portcullis_testkit::{
    free_port, push, require_tools, sha256_hex, skopeo_copy, tempdir, ConfigBuilder, Fault,
    FaultServer, Image, Proxy, Registry,
};

use super::prometheus::*;
use super::support::BIN;

#[test]
fn prometheus_text_parser() {
    let text = "# HELP x_total a\n# TYPE x counter\nx_total{route=\"blob\",status=\"200\",upstream=\"a:1\"} 3\n\
                x_total{route=\"manifest\",status=\"200\",upstream=\"a:1\"} 2\ny 1.5\n\
                h_bucket{upstream=\"u\",le=\"+Inf\"} 4\n# EOF\n";
    let s = Scrape {
        text: text.to_owned(),
    };
    assert_eq!(s.sum("x_total", &[]), 5.0);
    assert_eq!(s.sum("x_total", &[("route", "blob")]), 3.0);
    assert_eq!(s.sum("y", &[]), 1.5);
    assert_eq!(s.sum("h_bucket", &[("le", "+Inf")]), 4.0);
    assert!(s.exposes("x_total") && s.exposes("y") && s.exposes("h"));
    assert!(!s.exposes("z_total"));
}

/// Every metric the contract names.
const METRICS: &[&str] = &[
    "portcullis_requests_total",
    "portcullis_cache_requests_total",
    "portcullis_served_bytes_total",
    "portcullis_upstream_request_duration_seconds",
    "portcullis_upstream_errors_total",
    "portcullis_verdicts_total",
    "portcullis_singleflight_joins_total",
    "portcullis_cache_size_bytes",
    "portcullis_evictions_total",
    "portcullis_stale_serves_total",
    "portcullis_config_reloads_total",
    "portcullis_tag_moves_total",
    "portcullis_summaries_signed_total",
    "portcullis_summaries_served_total",
];

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_during_a_pull() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    let host = upstream.host();
    let mport = free_port();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = ConfigBuilder::pull_through(&host, &upstream.url())
        .upstream("dead.test", &dead)
        .with_upstream("dead.test", |u| u.connect_timeout = Duration::from_secs(2))
        .metrics(mport);
    let p = Proxy::start(Path::new(BIN), &work.path().join("p"), &config);
    let before = scrape(mport).await;
    for name in METRICS {
        assert!(
            before.exposes(name),
            "{name} is not exposed:\n{}",
            before.text
        );
    }
    assert!(
        !before.text.contains("_total_total"),
        "a counter's name got _total twice:\n{}",
        before.text
    );

    let first = work.path().join("first");
    skopeo_copy(&format!("{}/test/small:v1", p.host()), &first)
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let after = scrape(mport).await;
    let grew = |name: &str, labels: &[(&str, &str)], a: &Scrape, b: &Scrape| {
        let (x, y) = (a.sum(name, labels), b.sum(name, labels));
        assert!(
            y > x,
            "{name}{labels:?} did not grow ({x} -> {y}):\n{}",
            b.text
        );
        y - x
    };
    let req = "portcullis_requests_total";
    grew(req, &[("route", "base")], &before, &after);
    grew(
        req,
        &[
            ("route", "manifest"),
            ("status", "200"),
            ("upstream", &host),
        ],
        &before,
        &after,
    );
    grew(
        req,
        &[("route", "blob"), ("status", "200"), ("upstream", &host)],
        &before,
        &after,
    );
    for labels in after.labels_of(req) {
        let route = labels
            .iter()
            .find(|(k, _)| k == "route")
            .map(|(_, v)| v.as_str());
        assert!(
            matches!(route, Some("base" | "manifest" | "blob" | "tags" | "other")),
            "route label {route:?}"
        );
    }
    let cache = "portcullis_cache_requests_total";
    grew(cache, &[("result", "miss")], &before, &after);
    let served = grew("portcullis_served_bytes_total", &[], &before, &after);
    assert!(
        served >= pulled_bytes(&first) as f64,
        "served {served} bytes, skopeo got {}",
        pulled_bytes(&first)
    );
    grew(
        "portcullis_verdicts_total",
        &[("rule", "default"), ("outcome", "allow")],
        &before,
        &after,
    );
    grew(
        "portcullis_upstream_request_duration_seconds_count",
        &[("upstream", &host)],
        &before,
        &after,
    );
    assert!(
        after.sum(
            "portcullis_upstream_request_duration_seconds_bucket",
            &[("upstream", &host), ("le", "+Inf")]
        ) >= 1.0,
        "{}",
        after.text
    );
    assert!(
        after.sum("portcullis_cache_size_bytes", &[]) > 0.0,
        "{}",
        after.text
    );

    // The same pull again: served from the cache.
    skopeo_copy(
        &format!("{}/test/small:v1", p.host()),
        &work.path().join("second"),
    )
    .unwrap();
    let again = scrape(mport).await;
    grew(cache, &[("result", "hit")], &after, &again);
    grew(req, &[("route", "manifest")], &after, &again);
    grew("portcullis_served_bytes_total", &[], &after, &again);

    // Tags, and an upstream that refuses connections.
    assert_eq!(
        http::get(&format!("{}/v2/test/small/tags/list", p.url()))
            .await
            .status,
        200
    );
    let failed = http::get(&format!("{}/v2/dead.test/test/small/manifests/v1", p.url())).await;
    assert!(failed.status >= 500, "{}", failed.status);
    let last = scrape(mport).await;
    grew(req, &[("route", "tags"), ("status", "200")], &again, &last);
    grew(
        req,
        &[
            ("route", "manifest"),
            ("status", &failed.status.to_string()),
            ("upstream", "dead.test"),
        ],
        &again,
        &last,
    );
    grew(
        "portcullis_upstream_errors_total",
        &[("upstream", "dead.test")],
        &again,
        &last,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_singleflight_joins_and_stale_serves() {
    require_tools();
    let work = tempdir();
    let mut upstream = Registry::start(work.path());
    push(Image::Big, &upstream, "test/big:v1");
    // About 3 s for the 50 MiB layer: long enough for every concurrent request to join.
    let slow = FaultServer::start(Fault::Throttle {
        to: upstream.addr,
        bytes_per_sec: 16 << 20,
    });
    let mport = free_port();
    let config = ConfigBuilder::pull_through(&upstream.host(), &slow.url())
        .cache(|c| c.tag_ttl = Duration::from_secs(1))
        .with_upstream(&upstream.host(), |u| {
            u.read_timeout = Duration::from_secs(2)
        })
        .metrics(mport);
    let p = Proxy::start(Path::new(BIN), &work.path().join("p"), &config);
    let manifest_url = format!("{}/v2/test/big/manifests/v1", p.url());
    let manifest = http::get(&manifest_url).await;
    assert_eq!(manifest.status, 200);
    let m: serde_json::Value = serde_json::from_slice(&manifest.body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let before = scrape(mport).await;
    let url = format!("{}/v2/test/big/blobs/{layer}", p.url());
    let pulls: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http::get(&url).await })
        })
        .collect();
    for pull in pulls {
        let resp = pull.await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(sha256_hex(&resp.body), layer);
    }
    let after = scrape(mport).await;
    let joins = after.sum("portcullis_singleflight_joins_total", &[])
        - before.sum("portcullis_singleflight_joins_total", &[]);
    assert!(joins >= 1.0, "joins: {joins}\n{}", after.text);
    let joined = after.sum("portcullis_cache_requests_total", &[("result", "joined")])
        - before.sum("portcullis_cache_requests_total", &[("result", "joined")]);
    assert!(joined >= 1.0, "{}", after.text);

    // The tag mapping goes stale with the upstream down: served, and counted.
    upstream.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stale = http::get(&manifest_url).await;
    assert_eq!(stale.status, 200, "{}", p.log_contents());
    let last = scrape(mport).await;
    assert!(
        last.sum("portcullis_stale_serves_total", &[])
            > after.sum("portcullis_stale_serves_total", &[]),
        "{}",
        last.text
    );
    assert!(
        last.sum("portcullis_cache_requests_total", &[("result", "stale")])
            > after.sum("portcullis_cache_requests_total", &[("result", "stale")]),
        "{}",
        last.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_evictions() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    push(Image::Big, &upstream, "test/big:v1");
    let mport = free_port();
    let config = ConfigBuilder::pull_through(&upstream.host(), &upstream.url())
        .cache(|c| c.max_size = ByteSize::mib(1))
        .metrics(mport);
    let p = Proxy::start(Path::new(BIN), &work.path().join("p"), &config);
    skopeo_copy(
        &format!("{}/test/small:v1", p.host()),
        &work.path().join("small"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let before = scrape(mport).await;
    let small_size = before.sum("portcullis_cache_size_bytes", &[]);
    assert!(small_size > 0.0, "{}", before.text);
    // 50 MiB into a 1 MiB cache: the least recently used content (the small image) goes.
    skopeo_copy(
        &format!("{}/test/big:v1", p.host()),
        &work.path().join("big"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let start = Instant::now();
    loop {
        let now = scrape(mport).await;
        let evicted = now.sum("portcullis_evictions_total", &[])
            - before.sum("portcullis_evictions_total", &[]);
        if evicted >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no eviction counted:\n{}\n{}",
            now.text,
            p.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
