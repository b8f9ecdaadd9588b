//! Prometheus text: scraping `/metrics` and reading samples out of it.

use std::path::Path;

use portcullis_testkit::http;

/// One scrape of `/metrics`.
pub(crate) struct Scrape {
    pub(crate) text: String,
}

pub(crate) type Labels = Vec<(String, String)>;

/// `name{a="b",...} value` → name, labels, value. `None` for comments and anything else.
fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end = loop {
            // Skip separators.
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let &(start, c) = chars.peek()?;
            if c == '}' {
                break start + 1;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key.trim().to_owned(), value));
        };
        rest = &inner[end..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

impl Scrape {
    /// Sum of the samples named `name` whose labels include all of `want` (0 when none).
    pub(crate) fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.text
            .lines()
            .filter_map(parse_sample)
            .filter(|(n, labels, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Whether the family is exposed at all: a sample, or a `# TYPE`/`# HELP` line (OpenMetrics
    /// names a counter family without its `_total`).
    pub(crate) fn exposes(&self, name: &str) -> bool {
        let family = name.strip_suffix("_total").unwrap_or(name);
        self.text.lines().any(|l| {
            if let Some((n, _, _)) = parse_sample(l) {
                return n == name || n.starts_with(&format!("{name}_"));
            }
            let mut words = l.split_whitespace();
            matches!(
                (words.next(), words.next(), words.next()),
                (Some("#"), Some("TYPE") | Some("HELP"), Some(n)) if n == name || n == family
            )
        })
    }

    pub(crate) fn labels_of(&self, name: &str) -> Vec<Labels> {
        self.text
            .lines()
            .filter_map(parse_sample)
            .filter(|(n, _, _)| n == name)
            .map(|(_, l, _)| l)
            .collect()
    }
}

pub(crate) async fn scrape(metrics_port: u16) -> Scrape {
    let resp = http::get(&format!("http://127.0.0.1:{metrics_port}/metrics")).await;
    assert_eq!(resp.status, 200, "GET /metrics");
    let ct = resp.header("content-type").unwrap_or("").to_owned();
    assert!(
        ct.starts_with("text/plain") || ct.starts_with("application/openmetrics-text"),
        "content-type of /metrics: {ct:?}"
    );
    Scrape {
        text: String::from_utf8(resp.body.to_vec()).expect("metrics are UTF-8"),
    }
}

/// Bytes of the manifest and blobs in a skopeo `dir:` copy.
pub(crate) fn pulled_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name() != "version")
        .map(|e| e.metadata().unwrap().len())
        .sum()
}
