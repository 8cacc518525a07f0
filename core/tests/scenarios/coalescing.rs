//! Request collapsing: one fetch per key, followers joining mid-stream, a failed leader,
//! and followers giving up after the collapse timeout.

use crate::sim::{Failure, Sim, t0};
use crate::{URL, fresh};
use larder_core::{Config, Input};
use std::time::Duration;

#[test]
fn hundred_concurrent_requests_through_three_peers_fetch_once() {
    let mut s = Sim::new(3, Config::default(), |_, _| {
        fresh("shared body, 31 bytes long.....")
    });
    let ids: Vec<_> = (0..100).map(|i| s.send(i % 3, "GET", URL, &[])).collect();
    assert_eq!(
        s.origin_hits(),
        1,
        "one fetch before the origin even answers"
    );
    s.run();
    assert_eq!(s.origin_hits(), 1);
    let owner = s.engines[0]
        .ring()
        .owner(b"http://origin.test/a")
        .unwrap()
        .to_owned();
    let owner_idx = s.peers.iter().position(|p| *p == owner).unwrap();
    let mut collapsed = 0;
    for id in &ids {
        let r = &s.results[id];
        assert_eq!(r.text(), "shared body, 31 bytes long.....");
        assert!(r.ended && !r.aborted);
        assert_eq!(r.served_by, Some(owner_idx));
        assert!(r.forwarded_to.len() <= 1, "one hop at most");
        collapsed += r.status_parts().collapsed as usize;
    }
    assert_eq!(collapsed, 99);
    // Then 100 more, GET and HEAD mixed: all hits.
    let more: Vec<_> = (0..100)
        .map(|i| s.send(i % 3, if i % 2 == 0 { "GET" } else { "HEAD" }, URL, &[]))
        .collect();
    s.run();
    assert_eq!(s.origin_hits(), 1);
    for (i, id) in more.iter().enumerate() {
        let r = &s.results[id];
        assert_eq!(r.status(), 200);
        assert_eq!(r.body.len(), if i % 2 == 0 { 31 } else { 0 });
        assert_eq!(r.header("content-length").as_deref(), Some("31"));
    }
}

#[test]
fn followers_join_a_fill_while_it_streams() {
    let mut s = Sim::single(|_, _| fresh("0123456789abcdefghij"));
    let a = s.send(0, "GET", URL, &[]);
    let (at, fetch, reply) = s.answer_head_only().unwrap();
    s.input(
        at,
        Input::UpstreamBody {
            fetch,
            chunk: bytes::Bytes::from_static(b"0123456789"),
        },
    );
    let b = s.send(0, "GET", URL, &[]);
    assert_eq!(
        s.results[&b].text(),
        "0123456789",
        "late joiner replays what arrived"
    );
    s.input(
        at,
        Input::UpstreamBody {
            fetch,
            chunk: bytes::Bytes::copy_from_slice(&reply.body[10..]),
        },
    );
    s.input(at, Input::UpstreamEnd { fetch });
    for id in [a, b] {
        assert_eq!(s.results[&id].text(), "0123456789abcdefghij");
        assert!(s.results[&id].ended);
    }
    assert_eq!(s.origin_hits(), 1);
}

#[test]
fn leader_failure_elects_a_new_leader() {
    let mut s = Sim::single(|_, n| {
        if n == 0 {
            fresh("").failing(Failure::BeforeHead)
        } else {
            fresh("second try")
        }
    });
    let a = s.send(0, "GET", URL, &[]);
    let b = s.send(0, "GET", URL, &[]);
    let c = s.send(0, "GET", URL, &[]);
    s.run();
    assert_eq!(s.results[&a].status(), 502);
    assert_eq!(s.results[&b].text(), "second try");
    assert_eq!(s.results[&c].text(), "second try");
    assert_eq!(s.origin_hits(), 2);
}

#[test]
fn followers_give_up_waiting_after_the_collapse_timeout() {
    let mut s = Sim::single(|_, n| {
        if n == 0 {
            fresh("").failing(Failure::Hang)
        } else {
            fresh("own fetch")
        }
    });
    let _a = s.send(0, "GET", URL, &[]);
    let b = s.send(0, "GET", URL, &[]);
    s.run();
    assert_eq!(s.hanging(), 1);
    assert_eq!(
        s.engines[0].poll_timeout(),
        Some(t0() + Duration::from_secs(5))
    );
    s.drive();
    assert_eq!(
        s.now,
        t0() + Duration::from_secs(5),
        "woken at the deadline"
    );
    assert_eq!(s.results[&b].text(), "own fetch");
    assert_eq!(s.origin_hits(), 2);
}

#[test]
fn drive_wakes_each_follower_at_its_own_deadline() {
    // Followers that joined a hanging fill at different times give up in turn, each on
    // its own collapse timeout, with a fetch of its own.
    let mut s = Sim::single(|_, n| {
        if n == 0 {
            fresh("").failing(Failure::Hang)
        } else {
            fresh(&format!("own fetch {n}"))
        }
    });
    let _leader = s.send(0, "GET", URL, &[]);
    s.run();
    let early = s.send(0, "GET", URL, &[]);
    s.advance(3);
    let late = s.send(0, "GET", URL, &[]);
    assert_eq!(
        s.next_deadline(),
        Some(t0() + Duration::from_secs(5)),
        "the earlier follower's deadline comes first"
    );
    s.drive();
    assert_eq!(s.now, t0() + Duration::from_secs(8));
    assert_eq!(s.results[&early].text(), "own fetch 1");
    assert_eq!(s.results[&late].text(), "own fetch 2");
    assert_eq!(s.next_deadline(), None);
    assert_eq!(s.hanging(), 1, "the leader's fetch never answered");
    assert_eq!(s.origin_hits(), 3);
}

/// A wall clock that steps back must not stretch a follower's wait by the step: its
/// deadline is capped at the new `now` plus the collapse timeout.
#[test]
fn a_clock_stepping_back_does_not_stretch_the_wait() {
    let mut s = Sim::single(|_, _| fresh("x").failing(Failure::Hang));
    s.now = t0() + Duration::from_secs(3600);
    s.send(0, "GET", URL, &[]);
    s.send(0, "GET", URL, &[]);
    assert_eq!(
        s.next_deadline(),
        Some(t0() + Duration::from_secs(3605)),
        "the follower waits 5 s"
    );
    // An hour back: without the cap the follower would wait an hour and 5 s.
    s.engines[0].handle_input(t0(), Input::Timeout);
    assert_eq!(s.next_deadline(), Some(t0() + Duration::from_secs(5)));
    s.now = t0();
    s.drive();
    assert_eq!(s.now, t0() + Duration::from_secs(5));
    assert_eq!(
        s.hanging(),
        2,
        "the follower fetched on its own at the capped deadline"
    );
}
