//! 4. Configuration reload.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_testkit::http;
use portcullis_testkit::{
    free_port, manifest_digest_in_registry, push, require_tools, tempdir, ConfigBuilder, Image,
    Proxy, Registry, Rule,
};
use portcullis_testkit::{push_signature, simple_signing_payload, CosignKey, SigLayer};

use super::prometheus::scrape;
use super::support::*;

/// One HTTP/1.1 connection kept open across requests, to show a reload does not drop it.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn connect(addr: SocketAddr) -> KeepAlive {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        KeepAlive {
            reader: BufReader::new(s),
        }
    }

    /// `GET path` on this connection; the status (the body is read and dropped).
    fn get(&mut self, path: &str) -> std::io::Result<u16> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: portcullis\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad response");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let (mut length, mut chunked) = (None, false);
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').ok_or_else(bad)?;
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(|_| bad())?;
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
            }
        } else {
            let mut body = vec![0; length.unwrap_or(0)];
            self.reader.read_exact(&mut body)?;
        }
        Ok(status)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn config_reload_rejects_a_broken_file_and_applies_a_good_one() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    let host = upstream.host();
    let mport = free_port();
    let good = ConfigBuilder::pull_through(&host, &upstream.url()).metrics(mport);
    let p = Proxy::start(Path::new(BIN), &work.path().join("p"), &good);
    let manifest = format!("{}/v2/test/small/manifests/v1", p.url());
    // Through an upstream that only a reload adds, by path prefix.
    let via_mirror = format!("{}/v2/mirror.test/test/small/manifests/v1", p.url());
    assert_eq!(http::get(&manifest).await.status, 200);
    assert_ne!(http::get(&via_mirror).await.status, 200);
    let good_text = std::fs::read_to_string(&p.config).unwrap();
    let mut conn = KeepAlive::connect(p.addr);
    assert_eq!(conn.get("/v2/").unwrap(), 200);

    // Invalid TOML: rejected, the old config stays.
    let rejected = p.reconfigure("[server\nlisten = ").unwrap_err();
    assert!(rejected.contains("config reload rejected"), "{rejected}");
    assert_eq!(
        http::get(&manifest).await.status,
        200,
        "{}",
        p.log_contents()
    );
    assert_eq!(conn.get("/v2/").unwrap(), 200, "the connection survives");
    let m = scrape(mport).await;
    assert!(
        m.sum("portcullis_config_reloads_total", &[("result", "error")]) >= 1.0,
        "{}",
        m.text
    );

    // Valid TOML that fails validation (an unknown key, which no typed config can hold):
    // rejected as well.
    let unknown_key = good_text.replace("[cache]\n", "[cache]\nno_such_key = 1\n");
    assert_ne!(unknown_key, good_text);
    let rejected = p.reconfigure(&unknown_key).unwrap_err();
    assert!(rejected.contains("no_such_key"), "{rejected}");
    assert_eq!(http::get(&manifest).await.status, 200);

    // A good config with a deny glob for the image and a new upstream: applied.
    let denying = good
        .clone()
        .deny(&format!("{host}/test/small"))
        .upstream("mirror.test", &upstream.url());
    p.reconfigure(&denying)
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let denied = http::get(&manifest).await;
    assert_eq!(
        (denied.status, code(&denied).as_str()),
        (403, "DENIED"),
        "{}",
        p.log_contents()
    );
    assert_eq!(
        http::get(&via_mirror).await.status,
        200,
        "{}",
        p.log_contents()
    );
    assert_eq!(conn.get("/v2/").unwrap(), 200, "the connection survives");
    let m = scrape(mport).await;
    assert!(m.sum("portcullis_config_reloads_total", &[("result", "ok")]) >= 1.0);

    // SIGHUP alone reloads, with the file unchanged (so no file watcher is involved): the
    // outcome waited for is the one logged after this signal's own line.
    p.reload()
        .unwrap_or_else(|e| panic!("SIGHUP with an unchanged file: {e}"));

    // A change of the file without any signal: picked up by the poll (about every 2 s).
    let before = count(&p.log_contents(), "config reloaded");
    p.write_config(&good);
    let start = Instant::now();
    loop {
        let resp = http::get(&manifest).await;
        if resp.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "the file change was not applied within 6 s: {} {}\n{}",
            resp.status,
            code(&resp),
            p.log_contents()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(count(&p.log_contents(), "config reloaded") > before);
    assert_ne!(
        http::get(&via_mirror).await.status,
        200,
        "upstream removed again"
    );
    assert_eq!(conn.get("/v2/").unwrap(), 200, "the connection survives");

    // A broken file picked up by the poll is rejected the same way.
    let rejected = count(&p.log_contents(), "config reload rejected");
    let maybe = good_text.replace("default = \"allow\"", "default = \"maybe\"");
    assert_ne!(maybe, good_text);
    p.write_config(&maybe);
    assert!(
        eventually(Duration::from_secs(6), || count(
            &p.log_contents(),
            "config reload rejected"
        ) > rejected),
        "{}",
        p.log_contents()
    );
    assert_eq!(http::get(&manifest).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_new_rules_and_rotated_trust_material() {
    require_tools();
    let work = tempdir();
    let upstream = Registry::start(work.path());
    push(Image::Small, &upstream, "test/small:v1");
    let host = upstream.host();
    let digest = manifest_digest_in_registry(&upstream, "test/small", "v1");
    let release = CosignKey::generate();
    let payload = simple_signing_payload(&format!("{host}/test/small"), &digest);
    let layer = SigLayer {
        signature_b64: release.sign(&payload),
        payload,
        ..SigLayer::default()
    };
    push_signature(&upstream, "test/small", &digest, &[layer]);
    let mport = free_port();
    let good = ConfigBuilder::pull_through(&host, &upstream.url()).metrics(mport);
    let p = Proxy::start(Path::new(BIN), &work.path().join("p"), &good);
    let manifest = format!("{}/v2/test/small/manifests/v1", p.url());
    assert_eq!(http::get(&manifest).await.status, 200);

    // A rule that wants the release key, with another key in the file it names.
    let key = work.path().join("release.pub");
    CosignKey::generate().write_public(&key);
    let ruled = good
        .trust_key("release", &key)
        .rule(Rule::new("signed", &[&format!("{host}/test/**")]).key("release"));
    p.reconfigure(&ruled)
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let denied = http::get(&manifest).await;
    assert_eq!(
        (denied.status, code(&denied).as_str()),
        (403, "DENIED"),
        "a cached, allowed image falls under the new rule:\n{}",
        p.log_contents()
    );
    let m = scrape(mport).await;
    assert!(
        m.sum(
            "portcullis_verdicts_total",
            &[("rule", "signed"), ("outcome", "deny")]
        ) >= 1.0,
        "{}",
        m.text
    );

    // The key file alone changes (the config file does not): SIGHUP re-reads it.
    release.write_public(&key);
    p.reload()
        .unwrap_or_else(|e| panic!("{e}\n{}", p.log_contents()));
    let allowed = http::get(&manifest).await;
    assert_eq!(allowed.status, 200, "{}", p.log_contents());
    let m = scrape(mport).await;
    assert!(
        m.sum(
            "portcullis_verdicts_total",
            &[("rule", "signed"), ("outcome", "allow")]
        ) >= 1.0,
        "{}",
        m.text
    );
}
