//! The access log: one line per request, written when its response ends (so the duration,
//! the bytes sent and whether it completed are what happened), on standard output; the
//! diagnostic log goes to standard error.
//!
//! `combined` is NCSA's combined format, which log tools ingest, with Larder's fields
//! appended as `key="value"`; `json` is one object per line.
//!
//! Off the hot path: a request formats its line into a per-thread buffer and appends it to
//! a shared one; a writer thread empties that into standard output, so no request waits on
//! a write, however slow the log's reader. Past [`BUFFERED_MAX`] unwritten bytes (a reader
//! that stopped), lines are dropped and counted rather than memory growing.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Unwritten access-log bytes kept at most.
pub const BUFFERED_MAX: usize = 8 << 20;
/// The writer wakes at least this often (and at once past [`WAKE_AT`] bytes).
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const WAKE_AT: usize = 64 << 10;

/// How access lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// NCSA combined, then `cache="..." ms=N complete=true|false`.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
    /// No access log.
    Off,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "combined" => Ok(Format::Combined),
            "json" => Ok(Format::Json),
            "off" | "none" => Ok(Format::Off),
            other => Err(format!("bad --log-format {other:?}: combined, json or off")),
        }
    }
}

/// A URL as the pieces it is written from (joined without separators), so a request's URL
/// is logged from the bytes it already has, never copied into a string of its own first.
#[derive(Debug, Clone, Copy)]
pub struct Url<'a>(pub [&'a str; 4]);

impl<'a> Url<'a> {
    /// A URL already written out.
    pub fn text(s: &'a str) -> Self {
        Url([s, "", "", ""])
    }

    /// `uri` as the request named it, after `base` (a tunnel's `https://host`) when the
    /// request was in origin form inside a tunnel.
    pub fn of(base: Option<&'a str>, uri: &'a http::Uri) -> Self {
        let pq = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(a)) => Url([scheme, "://", a.as_str(), pq]),
            (None, Some(a)) => Url(["", "", a.as_str(), pq]),
            (_, None) => Url([base.unwrap_or(""), "", "", pq]),
        }
    }

    fn joined(&self) -> String {
        self.0.concat()
    }
}

/// One request, as its line says it.
#[derive(Debug)]
pub struct Entry<'a> {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub method: &'a str,
    pub url: Url<'a>,
    pub version: http::Version,
    pub status: u16,
    /// Body bytes handed to the connection.
    pub bytes: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub cache: &'a str,
    pub duration: Duration,
    pub complete: bool,
}

impl Entry<'_> {
    /// The line, without its newline.
    pub fn render(&self, format: Format) -> String {
        let mut out = String::new();
        self.render_into(format, &mut out);
        out
    }

    /// Appends the line (without its newline) to `out`.
    pub fn render_into(&self, format: Format, out: &mut String) {
        match format {
            Format::Combined => self.combined(out),
            Format::Json => self.json(out),
            Format::Off => {}
        }
    }

    fn combined(&self, out: &mut String) {
        let _ = write!(out, "{} - - [", self.client.ip());
        clf_time(self.time, out);
        out.push_str("] \"");
        escape(self.method, out);
        out.push(' ');
        for piece in self.url.0 {
            escape(piece, out);
        }
        let _ = write!(
            out,
            " {}\" {} {} \"",
            version_name(self.version),
            self.status,
            self.bytes
        );
        quoted(self.referer, out);
        out.push_str("\" \"");
        quoted(self.user_agent, out);
        out.push_str("\" cache=\"");
        escape(self.cache, out);
        let _ = write!(
            out,
            "\" ms={} complete={}",
            self.duration.as_millis(),
            self.complete
        );
    }

    /// One JSON object, serialized straight from borrowed fields (no `Value` tree).
    fn json(&self, out: &mut String) {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            time: f64,
            client: std::net::IpAddr,
            method: &'a str,
            url: String,
            version: &'a str,
            status: u16,
            bytes: u64,
            referer: Option<&'a str>,
            user_agent: Option<&'a str>,
            cache: &'a str,
            ms: u64,
            complete: bool,
        }
        let secs = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let line = Line {
            time: (secs * 1000.0).round() / 1000.0,
            client: self.client.ip(),
            method: self.method,
            url: self.url.joined(),
            version: version_name(self.version),
            status: self.status,
            bytes: self.bytes,
            referer: self.referer,
            user_agent: self.user_agent,
            cache: self.cache,
            ms: self.duration.as_millis() as u64,
            complete: self.complete,
        };
        // Serializing plain fields into a String cannot fail.
        if let Ok(text) = serde_json::to_string(&line) {
            out.push_str(&text);
        }
    }
}

/// `HTTP/1.1`, as the request line writes it.
fn version_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// The lines not yet written, and lines dropped because they could not be.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    dropped: u64,
}

struct Sink {
    pending: Mutex<Pending>,
    wake: Condvar,
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        std::thread::Builder::new()
            .name("larder-access-log".into())
            .spawn(writer)
            .expect("access log thread");
        Sink {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        }
    })
}

/// Empties the shared buffer into standard output, whole lines at a time.
fn writer() {
    let s = sink();
    let mut out = Vec::new();
    loop {
        let dropped = {
            let mut p = s.pending.lock().unwrap_or_else(|e| e.into_inner());
            while p.bytes.is_empty() && p.dropped == 0 {
                p = s
                    .wake
                    .wait_timeout(p, FLUSH_EVERY)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut out, &mut p.bytes);
            std::mem::take(&mut p.dropped)
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&out);
        if dropped > 0 {
            let _ = writeln!(
                stdout,
                "# larder: {dropped} access log lines dropped (output blocked)"
            );
        }
        let _ = stdout.flush();
        out.clear();
    }
}

thread_local! {
    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Logs `entry` as one line in `format` (nothing when off), without waiting on the output.
pub fn write(format: Format, entry: &Entry<'_>) {
    if format == Format::Off {
        return;
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        entry.render_into(format, line);
        line.push('\n');
        let s = sink();
        let mut p = s.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.bytes.len() + line.len() > BUFFERED_MAX {
            p.dropped += 1;
            return;
        }
        let before = p.bytes.len();
        p.bytes.extend_from_slice(line.as_bytes());
        // Woken once, as the buffer crosses the mark: a writer not yet running needs no
        // second futex call per line until it does.
        if before < WAKE_AT && p.bytes.len() >= WAKE_AT {
            s.wake.notify_one();
        }
    });
}

fn quoted(v: Option<&str>, out: &mut String) {
    match v {
        Some(v) => escape(v, out),
        None => out.push('-'),
    }
}

/// Quotes and control bytes escaped, so a hostile URL or User-Agent cannot forge a line.
fn escape(s: &str, out: &mut String) {
    // Most fields are printable ASCII with nothing to escape: copied whole.
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

thread_local! {
    /// The last second written, as written: most lines share their second with the previous.
    static CLF_SECOND: std::cell::RefCell<(u64, String)> =
        const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// `10/Oct/2000:13:55:36 +0000`, formatted once per second per thread.
fn clf_time(t: SystemTime, out: &mut String) {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    CLF_SECOND.with_borrow_mut(|(second, text)| {
        if *second != secs {
            text.clear();
            clf_time_of(t, text);
            *second = secs;
        }
        out.push_str(text);
    });
}

fn clf_time_of(t: SystemTime, out: &mut String) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let d =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let _ = write!(
        out,
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        d.day(),
        MONTHS[usize::from(u8::from(d.month())) - 1],
        d.year(),
        d.hour(),
        d.minute(),
        d.second()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(url: &'a str, ua: Option<&'a str>) -> Entry<'a> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(971_186_136),
            client: "10.1.2.3:5555".parse().unwrap(),
            method: "GET",
            url: Url::text(url),
            version: http::Version::HTTP_11,
            status: 200,
            bytes: 4096,
            referer: None,
            user_agent: ua,
            cache: "larder; hit; ttl=59",
            duration: Duration::from_millis(4900),
            complete: false,
        }
    }

    #[test]
    fn combined_is_ncsa_with_the_cache_fields_after() {
        assert_eq!(
            entry("http://o.test/a", Some("curl/8.5")).render(Format::Combined),
            "10.1.2.3 - - [10/Oct/2000:13:55:36 +0000] \"GET http://o.test/a HTTP/1.1\" 200 4096 \
             \"-\" \"curl/8.5\" cache=\"larder; hit; ttl=59\" ms=4900 complete=false"
        );
    }

    #[test]
    fn a_hostile_field_cannot_forge_a_line() {
        let line =
            entry("http://o.test/\"x\n", Some("a\" \"b\r\n1.2.3.4 - -")).render(Format::Combined);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        assert!(
            line.contains("\\\"x\\x0a") && line.contains("a\\\" \\\"b"),
            "{line}"
        );
        let json = entry("http://o.test/\"x\n", None).render(Format::Json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["url"], "http://o.test/\"x\n");
        assert_eq!(
            (v["status"].as_u64(), v["ms"].as_u64()),
            (Some(200), Some(4900))
        );
        assert_eq!(v["client"], "10.1.2.3");
        assert!(v["user_agent"].is_null());
    }
}
