//! The storage boundary on a virtual clock: the engine decides what the memory and disk tiers
//! write, load, promote and delete; the simulated tiers carry it out (core/tests/sim).

mod sim;

use bytes::Bytes;
use larder_core::storage::entry;
use larder_core::{Config, EntryId, Input, StorageError, Tier};
use sim::{Reply, Sim};

const URL: &str = "http://origin.test/a";

fn with_disk(memory: u64, disk: u64) -> Config {
    Config {
        memory,
        disk,
        disk_clean_to: disk / 2,
        first_entry_id: 1,
        ..Config::default()
    }
}

/// An origin whose every answer is a new version (fetch ids start again after a restart,
/// so the simulator's request index cannot tell versions apart).
fn versions() -> impl FnMut(&http::request::Parts, usize) -> Reply {
    let mut n = 0;
    move |_, _| {
        n += 1;
        fresh(&format!("version {}", n - 1))
    }
}

fn fresh(body: &str) -> Reply {
    Reply::ok(
        body,
        &[("cache-control", "max-age=600"), ("etag", "\"v1\"")],
    )
}

#[test]
fn a_fill_is_written_to_both_tiers_and_a_restart_serves_it_from_disk() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), |_, _| fresh("hello disk"));
    assert_eq!(s.get(URL, &[]).text(), "hello disk");
    assert_eq!((s.memory[0].len(), s.disk[0].len()), (1, 1));
    s.restart(0, 1000);
    assert!(s.memory[0].is_empty());
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "hello disk"));
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(s.origin_hits(), 1, "no refetch after the restart");
    // Promoted on that hit: the memory tier answers the next one.
    assert_eq!(s.memory[0].len(), 1);
    assert_eq!(s.get(URL, &[]).text(), "hello disk");
    assert_eq!(s.engines[0].in_flight(), (0, 0));
}

#[test]
fn a_corrupt_record_is_a_miss_that_deletes_and_refetches_it() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), versions());
    assert_eq!(s.get(URL, &[]).text(), "version 0");
    // Flip one body byte on "disk", then restart: the start-up scan still lists it (its
    // metadata is intact); the load that checks the body fails.
    let id = *s.disk[0].keys().next().unwrap();
    let mut rec = s.disk[0][&id].to_vec();
    let last = rec.len() - 1;
    rec[last] ^= 1;
    assert!(entry::decode(&Bytes::from(rec.clone())).is_err());
    s.disk[0].insert(id, Bytes::from(rec));
    s.restart(0, 1000);
    s.failing_loads = false;
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), "version 1", "refetched, never the corrupt bytes");
    assert!(
        !s.disk[0].contains_key(&id),
        "the corrupt record was deleted"
    );
    assert_eq!(s.origin_hits(), 2);
}

#[test]
fn a_failed_load_is_a_miss() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), versions());
    s.get(URL, &[]);
    s.restart(0, 1000);
    s.failing_loads = true;
    let r = s.get(URL, &[]);
    assert_eq!((r.status(), r.text().as_str()), (200, "version 1"));
    assert_eq!(s.engines[0].in_flight(), (0, 0));
}

#[test]
fn waiting_requests_share_one_load() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), |_, _| fresh("shared"));
    s.get(URL, &[]);
    s.restart(0, 1000);
    // Loads are answered at once by the simulated disk; what matters is that each request
    // is answered once, from the one record.
    let a = s.send(0, "GET", URL, &[]);
    let b = s.send(0, "GET", URL, &[]);
    s.run();
    assert_eq!(s.results[&a].text(), "shared");
    assert_eq!(s.results[&b].text(), "shared");
    assert_eq!(s.origin_hits(), 1);
}

#[test]
fn a_memory_tier_too_small_serves_from_disk() {
    // 8 KiB of memory holds metadata, never these bodies (promotion takes <= 1/8 of it).
    let body = "x".repeat(20_000);
    let b2 = body.clone();
    let mut s = Sim::new(1, with_disk(8 * 1024, 1 << 20), move |_, _| fresh(&b2));
    assert_eq!(s.get(URL, &[]).text().len(), body.len());
    assert_eq!(s.memory[0].len(), 0, "too large for memory");
    assert_eq!(s.disk[0].len(), 1);
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), body);
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    let r = s.get(URL, &[("range", "bytes=10-19")]);
    assert_eq!((r.status(), r.text().len()), (206, 10));
    assert_eq!(s.origin_hits(), 1);
}

#[test]
fn disk_eviction_runs_from_the_high_to_the_low_watermark() {
    let mut s = Sim::new(1, with_disk(1 << 20, 20_000), |req, _| {
        fresh(&format!("{:0>2000}", req.uri.path()))
    });
    for i in 0..40 {
        s.get(&format!("http://origin.test/{i}"), &[]);
        let used = s.engines[0].disk_bytes();
        assert!(used <= 20_000, "over the high watermark: {used}");
        let held: u64 = s.disk[0].values().map(|r| r.len() as u64).sum();
        assert_eq!(held, used, "the index and the tier agree");
    }
    assert!(
        s.evicted.len() >= 20,
        "evictions happen in batches down to the low watermark"
    );
}

#[test]
fn a_full_disk_rests_the_tier_and_keeps_serving() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), |req, _| {
        fresh(&format!("body of {}", req.uri.path()))
    });
    s.get("http://origin.test/1", &[]);
    let (&id, _) = s.disk[0].iter().next().unwrap();
    // The adapter reports that the write of a second entry failed.
    s.get("http://origin.test/2", &[]);
    let second = *s.disk[0].keys().find(|k| **k != id).unwrap();
    s.disk[0].remove(&second);
    s.input(
        0,
        Input::WriteFailed {
            entry: second,
            tier: Tier::Disk,
            error: StorageError::Full,
        },
    );
    assert!(s.engines[0].disk_resting());
    // Still served from memory, and nothing new is written to disk while resting.
    assert_eq!(s.get("http://origin.test/2", &[]).text(), "body of /2");
    s.get("http://origin.test/3", &[]);
    assert_eq!(s.disk[0].len(), 1, "only the first entry is on disk");
    assert_eq!(s.origin_hits(), 3);
    // After the rest, the disk tier is written again.
    s.advance(61);
    s.get("http://origin.test/4", &[]);
    assert_eq!(s.disk[0].len(), 2);
    let _ = EntryId(0);
}

#[test]
fn vary_variants_survive_a_restart() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), |req, _| {
        let lang = req
            .headers
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Reply::ok(
            &format!("in {lang}"),
            &[
                ("cache-control", "max-age=600"),
                ("vary", "accept-language"),
            ],
        )
    });
    s.get(URL, &[("accept-language", "fr")]);
    s.get(URL, &[("accept-language", "de")]);
    s.restart(0, 1000);
    assert_eq!(s.get(URL, &[("accept-language", "de")]).text(), "in de");
    assert_eq!(s.get(URL, &[("accept-language", "fr")]).text(), "in fr");
    assert_eq!(s.origin_hits(), 2);
}

#[test]
fn invalidation_deletes_from_disk_too() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), versions());
    s.get(URL, &[]);
    s.restart(0, 1000);
    s.request("POST", URL, &[]);
    assert!(
        s.disk[0].is_empty(),
        "a successful POST invalidates the cold entry"
    );
    assert_eq!(s.get(URL, &[]).text(), "version 2");
}

/// RFC 9111 §4.3.4: a 304 refreshes the stored entry, and the refresh reaches the disk tier
/// (`UpdateMeta`): after a restart the entry is still fresh and still has the 304's fields,
/// and the body is the one stored first.
#[test]
fn a_304_refresh_is_written_to_disk_and_survives_a_restart() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), |req, n| {
        if n == 0 {
            Reply::ok(
                "first body",
                &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
            )
        } else {
            assert_eq!(req.headers.get("if-none-match").unwrap(), "\"v1\"");
            Reply::ok(
                "",
                &[
                    ("cache-control", "max-age=1000"),
                    ("etag", "\"v1\""),
                    ("x-refreshed", "yes"),
                ],
            )
            .status(304)
        }
    });
    s.get(URL, &[]);
    s.advance(20);
    let r = s.get(URL, &[]);
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(s.meta_updates, 1);
    let id = *s.disk[0].keys().next().expect("one record");
    let (meta, body) = entry::decode(&s.disk[0][&id]).expect("a sound record");
    assert_eq!(&body[..], b"first body");
    let meta = entry::Meta::decode(&meta).unwrap();
    assert_eq!(meta.response.headers["x-refreshed"], "yes");
    s.advance(100);
    s.restart(0, 1000);
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), "first body");
    assert!(
        r.cache_status().contains("hit"),
        "fresh from the refreshed record: {}",
        r.cache_status()
    );
    assert_eq!(r.header("x-refreshed").as_deref(), Some("yes"));
    assert_eq!(s.origin_hits(), 2, "no revalidation after the restart");
}

/// A refresh that leaves the entry fresh for less than `persist_refresh_min_ttl` is not
/// written to disk: the rewrite copies the body, and a `max-age=0` entry revalidated on
/// every request would rewrite it every time.
#[test]
fn a_short_lived_refresh_is_not_rewritten_on_disk() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), |_, n| {
        if n == 0 {
            Reply::ok("body", &[("cache-control", "max-age=0"), ("etag", "\"v\"")])
        } else {
            Reply::ok("", &[("cache-control", "max-age=5"), ("etag", "\"v\"")]).status(304)
        }
    });
    s.get(URL, &[]);
    for _ in 0..3 {
        s.advance(10);
        let r = s.get(URL, &[]);
        assert!(
            r.cache_status().contains("fwd-status=304"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(s.meta_updates, 0);
}

/// The refresh written after a 304 is the entry's, not the revalidating client's: the
/// directives of the request that forced the revalidation are not persisted with it.
#[test]
fn a_refresh_does_not_keep_the_revalidating_clients_directives() {
    let mut s = Sim::new(1, with_disk(1 << 20, 1 << 20), |_, n| {
        if n == 0 {
            Reply::ok(
                "kept",
                &[("cache-control", "max-age=10"), ("etag", "\"v\"")],
            )
        } else {
            Reply::ok("", &[("cache-control", "max-age=1000"), ("etag", "\"v\"")]).status(304)
        }
    });
    s.get(URL, &[]);
    s.advance(20);
    let r = s.get(
        URL,
        &[("cache-control", "no-cache"), ("pragma", "no-cache")],
    );
    assert!(
        r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );
    assert_eq!(s.meta_updates, 1);
    let id = *s.disk[0].keys().next().unwrap();
    let (meta, _) = entry::decode(&s.disk[0][&id]).unwrap();
    let meta = entry::Meta::decode(&meta).unwrap();
    assert!(meta.request.headers.get("cache-control").is_none());
    assert!(meta.request.headers.get("pragma").is_none());
    s.restart(0, 1000);
    let r = s.get(URL, &[]);
    assert_eq!(r.text(), "kept");
    assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    assert_eq!(s.origin_hits(), 2);
}
