//! The access log: one line per request, written when its response ends (so the duration,
//! the bytes sent and whether it completed are what happened), on standard output; the
//! diagnostic log goes to standard error.
//!
//! `combined` is NCSA's combined format, which log tools ingest, with Larder's fields
//! appended as `key="value"`; `json` is one object per line.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

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

/// One request, as its line says it.
#[derive(Debug)]
pub struct Entry<'a> {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub method: &'a str,
    pub url: &'a str,
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
        match format {
            Format::Combined => self.combined(),
            Format::Json => self.json(),
            Format::Off => String::new(),
        }
    }

    fn combined(&self) -> String {
        let quoted = |v: Option<&str>| v.map_or_else(|| "-".to_owned(), escape);
        format!(
            "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" cache=\"{}\" ms={} complete={}",
            self.client.ip(),
            clf_time(self.time),
            escape(self.method),
            escape(self.url),
            self.version,
            self.status,
            self.bytes,
            quoted(self.referer),
            quoted(self.user_agent),
            escape(self.cache),
            self.duration.as_millis(),
            self.complete
        )
    }

    fn json(&self) -> String {
        let secs = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        serde_json::json!({
            "time": (secs * 1000.0).round() / 1000.0,
            "client": self.client.ip().to_string(),
            "method": self.method,
            "url": self.url,
            "version": format!("{:?}", self.version),
            "status": self.status,
            "bytes": self.bytes,
            "referer": self.referer,
            "user_agent": self.user_agent,
            "cache": self.cache,
            "ms": self.duration.as_millis() as u64,
            "complete": self.complete,
        })
        .to_string()
    }
}

/// Writes `entry` as one line in `format` (nothing when off).
pub fn write(format: Format, entry: &Entry<'_>) {
    if format == Format::Off {
        return;
    }
    let mut line = entry.render(format);
    line.push('\n');
    // One write per line: lines from concurrent requests never interleave.
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
}

/// Quotes and control bytes escaped, so a hostile URL or User-Agent cannot forge a line.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `10/Oct/2000:13:55:36 +0000`.
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let d =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        d.day(),
        MONTHS[usize::from(u8::from(d.month())) - 1],
        d.year(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(url: &'a str, ua: Option<&'a str>) -> Entry<'a> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(971_186_136),
            client: "10.1.2.3:5555".parse().unwrap(),
            method: "GET",
            url,
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
