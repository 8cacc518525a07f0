//! Fills a disk-tier directory with synthetic entries, as `larder --disk-dir` would have
//! written them, for bench/restart.sh (start-up scan time and memory with many entries).
//!
//! ```text
//! cargo run --release -p larder-peer --example fill_disk -- DIR COUNT BODY_BYTES BASE_URL
//! # e.g.   /tmp/disk 100000 1024 http://127.0.0.1:18091/pkg/
//! ```
//!
//! Entry `n` (0-based) is a fresh `200` for `BASE_URL<n>` (a GET with no request fields, as
//! the engine keeps one for a plain request), `cache-control: max-age=86400`, an ETag, a
//! Content-Length, and a body of `BODY_BYTES` made of the line `pkg <n>\n` repeated (cut to
//! length), so a reader can check it got the right body. The metadata is built the way
//! `Engine::store_response` builds it and written with `Disk::write` (temp file, rename).
//! Ids are below the current time in nanoseconds, so a larder started later (ids from the
//! clock) never reuses them.

use http::{HeaderValue, Request, Response, header};
use larder_core::CacheKey;
use larder_core::storage::EntryId;
use larder_core::storage::entry::Meta;
use larder_peer::disk::Disk;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, count, body_bytes, base] = args.as_slice() else {
        eprintln!(
            "usage: fill_disk DIR COUNT BODY_BYTES BASE_URL   (e.g. /tmp/d 100000 1024 http://127.0.0.1:18091/pkg/)"
        );
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("COUNT: a number");
    let body_bytes: usize = body_bytes.parse().expect("BODY_BYTES: a number");
    let disk = Disk::open(&PathBuf::from(dir)).expect("open the disk directory");

    let now = SystemTime::now();
    let now_nanos = now.duration_since(UNIX_EPOCH).expect("clock").as_nanos() as u64;
    let first_id = now_nanos - count - 1;
    // Whole seconds, like a Date field (and the response time a fill would record).
    let response_time = UNIX_EPOCH + Duration::from_secs(now_nanos / 1_000_000_000);
    let date = http_date(response_time);

    let started = Instant::now();
    let (mut bytes, mut body) = (0u64, Vec::with_capacity(body_bytes));
    for n in 0..count {
        let url = format!("{base}{n}");
        let uri: http::Uri = url.parse().expect("BASE_URL<n>: an absolute URL");
        let key = CacheKey::from_uri(&uri).expect("BASE_URL<n>: a cacheable URL");
        body.clear();
        let line = format!("pkg {n}\n");
        while body.len() < body_bytes {
            body.extend_from_slice(line.as_bytes());
        }
        body.truncate(body_bytes);

        let request = Request::get(uri).body(()).expect("request").into_parts().0;
        let mut response = Response::new(()).into_parts().0;
        let h = &mut response.headers;
        h.insert(header::DATE, HeaderValue::from_str(&date).expect("date"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, body.len().into());
        h.insert(
            header::ETAG,
            HeaderValue::from_str(&format!("\"pkg-{n}\"")).expect("etag"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=86400"),
        );

        let id = EntryId(first_id + n);
        let meta = Meta {
            id,
            key,
            response_time,
            request,
            response,
            total: None,
        }
        .encode();
        bytes += disk
            .write(id, &meta, &body)
            .unwrap_or_else(|e| panic!("write entry {n}: {e:?}"));
    }
    println!(
        "wrote {count} entries, {bytes} bytes, to {dir} in {} ms",
        started.elapsed().as_millis()
    );
}

/// IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
