//! Issue 13 (4): `/metrics` read by the Prometheus project's own OpenMetrics parser
//! (`prometheus_client`, installed by scripts/test.sh): every family parses, with
//! conventional names and units, and the counts match the traffic sent.

use larder_tests::{Origin, Reply, get, peer, send};
use std::io::Write;
use std::process::{Command, Stdio};

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {
        "type": f.type,
        "unit": f.unit,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
print(json.dumps(out))
"#;

fn sample(families: &serde_json::Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let f = &families[family];
    f["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}"))
        .iter()
        .find(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v))
        .unwrap_or_else(|| panic!("no {name}{labels:?} in {f}"))[2]
        .as_f64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_prometheus_parser_and_count_what_happened() {
    let origin = Origin::start(|_, _| Reply::ok("x", &[("cache-control", "max-age=60")])).await;
    let p = peer(|_| {}).await;
    let url = origin.url("/m");
    get(p.addr, &url).await;
    get(p.addr, &url).await;
    send(p.addr, "POST", &url, &[]).await.unwrap();
    send(p.addr, "GET", "ftp://nowhere/x", &[]).await.unwrap();
    let text = get(p.addr, &format!("http://{}/metrics", p.addr))
        .await
        .text();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .args(["-c", PARSE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/test.sh installs prometheus-client)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let requests = |o: &str| {
        sample(
            &f,
            "larder_requests",
            "larder_requests_total",
            &[("outcome", o)],
        )
    };
    assert_eq!(requests("miss"), 1.0);
    assert_eq!(requests("hit"), 1.0);
    assert_eq!(requests("pass"), 1.0);
    assert_eq!(requests("error"), 1.0, "a refused request is an error");
    let class = |c: &str| {
        sample(
            &f,
            "larder_responses",
            "larder_responses_total",
            &[("code", c)],
        )
    };
    assert_eq!((class("2xx"), class("4xx")), (3.0, 1.0));
    for family in [
        "larder_response_first_byte_seconds",
        "larder_response_duration_seconds",
    ] {
        assert_eq!(f[family]["type"], "histogram", "{family}");
        assert_eq!(f[family]["unit"], "seconds", "{family}");
        let count = format!("{family}_count");
        assert_eq!(sample(&f, family, &count, &[("outcome", "hit")]), 1.0);
        assert_eq!(sample(&f, family, &count, &[("outcome", "miss")]), 1.0);
    }
    let origin_fb = "larder_origin_first_byte_seconds";
    assert_eq!(f[origin_fb]["unit"], "seconds");
    assert_eq!(
        sample(&f, origin_fb, "larder_origin_first_byte_seconds_count", &[]),
        2.0,
        "the fill and the pass"
    );
    assert_eq!(
        sample(
            &f,
            "larder_hits",
            "larder_hits_total",
            &[("tier", "memory")]
        ),
        1.0
    );
    assert_eq!(f["larder_connect"]["type"], "counter");
    // Conventions: counters end in _total, units are in the names.
    for (name, fam) in f.as_object().unwrap() {
        assert!(name.starts_with("larder_"), "{name}");
        if fam["type"] == "counter" {
            for s in fam["samples"].as_array().unwrap() {
                let n = s[0].as_str().unwrap();
                assert!(n.ends_with("_total") || n.ends_with("_created"), "{n}");
            }
        }
    }
}
