//! Issue 8 (7): a captured peer signature can be neither replayed nor extended with fields
//! of its own, and it is good for seconds, not minutes.

use larder_tests::{Origin, Reply, peer, send};
use std::time::{Duration, SystemTime};

const SECRET: &str = "correct horse";

fn credentials(url: &str, fields: &[(&str, &str)], nonce: u64, at: SystemTime) -> String {
    let mut h = http::HeaderMap::new();
    for (k, v) in fields {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    larder_core::hop::sign(SECRET, nonce, &http::Method::GET, url, &h, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_signatures_are_single_use_cover_every_field_and_expire_fast() {
    let origin = Origin::start(|seen, _| {
        Reply::ok(
            format!("for {:?}", seen.headers.get("authorization")),
            &[("cache-control", "no-store")],
        )
    })
    .await;
    let p = peer(|a| a.peer_secret = Some(SECRET.into())).await;
    let url = origin.url("/private");
    let fields = [("larder-hop", "http://peer-a"), ("accept", "*/*")];
    let auth = credentials(&url, &fields, 42, SystemTime::now());
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = fields.to_vec();
        h.push(("larder-peer-auth", &auth));
        h.extend_from_slice(extra);
        h.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<Vec<_>>()
    };
    let go = |h: Vec<(String, String)>| {
        let url = url.clone();
        let addr = p.addr;
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            send(addr, "GET", &url, &h).await.unwrap()
        }
    };
    // A field added to the captured request breaks the signature.
    let r = go(with(&[("authorization", "Bearer stolen")])).await;
    assert_eq!(r.status, 401, "{}", r.text());
    // The request as signed is served once...
    let r = go(with(&[])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // ...and never again.
    let r = go(with(&[])).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("replayed"), "{}", r.text());
    // A signature older than the window (seconds, not minutes) is refused.
    let old = credentials(
        &url,
        &fields,
        43,
        SystemTime::now() - Duration::from_secs(larder_core::hop::WINDOW + 5),
    );
    let mut h: Vec<(&str, &str)> = fields.to_vec();
    h.push(("larder-peer-auth", &old));
    let r = send(p.addr, "GET", &url, &h).await.unwrap();
    assert_eq!(r.status, 401);
    assert!(r.text().contains("expired"), "{}", r.text());
    assert_eq!(origin.hits(), 1);
}
