//! Interim responses (RFC 9110 §15.2): a 1xx the origin sends ahead of its answer reaches
//! every client waiting on that fetch (through the owner's relay too), in order, before the
//! head; it is never stored, so hits carry none.

use crate::URL;
use crate::sim::{Reply, Sim, assert_hit, assert_miss};
use larder_core::Config;

#[test]
fn early_hints_reach_every_waiting_client_and_are_never_stored() {
    let mut s = Sim::new(3, Config::default(), |_, _| {
        Reply::ok("page", &[("cache-control", "max-age=60")])
            .interim(102, &[])
            .interim(
                103,
                &[
                    ("link", "</style.css>; rel=preload; as=style"),
                    ("connection", "x-hop"),
                    ("x-hop", "1"),
                ],
            )
    });
    let ids: Vec<_> = (0..9).map(|i| s.send(i % 3, "GET", URL, &[])).collect();
    s.run();
    assert_eq!(s.origin_hits(), 1);
    for id in &ids {
        let r = &s.results[id];
        assert_miss(r);
        assert_eq!(r.text(), "page");
        let statuses: Vec<u16> = r.interim.iter().map(|h| h.status.as_u16()).collect();
        assert_eq!(statuses, [102, 103], "in the order sent, each once");
        let hints = &r.interim[1];
        assert_eq!(
            hints.headers.get("link").unwrap(),
            "</style.css>; rel=preload; as=style"
        );
        assert!(hints.headers.get("x-hop").is_none() && hints.headers.get("connection").is_none());
    }
    for i in 0..3 {
        let r = s.get_at(i, URL);
        assert_hit(r);
        assert!(
            r.interim.is_empty(),
            "a stored response has no interim heads"
        );
    }
}

#[test]
fn a_late_interim_head_goes_nowhere() {
    let mut s = Sim::single(|_, _| Reply::ok("x", &[("cache-control", "max-age=60")]));
    let id = s.send(0, "GET", URL, &[]);
    let (at, fetch, _) = s.answer_head_only().unwrap();
    // An interim head after the final one belongs to no response: it is dropped.
    let head = http::Response::builder()
        .status(103)
        .body(())
        .unwrap()
        .into_parts()
        .0;
    s.input(at, larder_core::Input::UpstreamInterim { fetch, head });
    assert!(s.results[&id].interim.is_empty());
    assert!(s.results[&id].head.is_some());
}
