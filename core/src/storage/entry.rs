//! The one entry format every persistent tier shares (a disk file, a Spin key-value value):
//! a fixed header, the metadata, then the body.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "LRDR"
//! 4       2     format version (little-endian), VERSION
//! 6       2     reserved, zero
//! 8       4     metadata length
//! 12      4     CRC-32 of the metadata
//! 16      8     body length
//! 24      4     CRC-32 of the body
//! 28      4     CRC-32 of bytes 0..28
//! 32      ...   metadata, then the body
//! ```
//!
//! Every length is checked against what is there and every field is bounded, so a torn,
//! truncated, foreign or hostile file decodes to [`Corrupt`], never a panic or a wrong answer:
//! the caller treats it as a miss and deletes it. Writers put the whole record in place
//! atomically (write elsewhere, then rename), so a complete header always describes a
//! complete record; the checksums catch what goes wrong afterwards (a flipped byte).

use super::EntryId;
use crate::key::CacheKey;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, request, response};
use std::time::{Duration, SystemTime};

/// The format written today. Readers refuse every other version (an old file is a miss).
pub const VERSION: u16 = 1;
/// Bytes before the metadata.
pub const HEADER_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"LRDR";
/// Metadata larger than this is refused (heads are capped far below it by any server).
pub const META_MAX: u32 = 1 << 20;
/// Most header fields one head may carry in an entry.
const FIELDS_MAX: u32 = 4096;

/// A record that cannot be used: wrong magic or version, a length that does not add up, a
/// checksum that does not match, or metadata that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt(pub &'static str);

impl core::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "corrupt entry: {}", self.0)
    }
}

impl std::error::Error for Corrupt {}

/// What a stored response is, apart from its body.
#[derive(Debug)]
pub struct Meta {
    /// The record's id: a record found under another name is not trusted.
    pub id: EntryId,
    /// The key it answers for, so a restart can index it without the engine's memory.
    pub key: CacheKey,
    /// When the response (or the last 304 that refreshed it) arrived.
    pub response_time: SystemTime,
    /// The request as the policy judged it (method, URI, and the fields it reads later:
    /// Cache-Control, Pragma, Authorization, Host and those named by Vary).
    pub request: request::Parts,
    /// The response head as stored (hop-by-hop fields removed, its own Content-Length).
    pub response: response::Parts,
    /// For a segment: the whole object's length.
    pub total: Option<u64>,
}

/// The fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes of metadata after the header.
    pub meta_len: u32,
    /// CRC-32 of the metadata.
    pub meta_crc: u32,
    /// Bytes of body after the metadata.
    pub body_len: u64,
    /// CRC-32 of the body, checked as it is read.
    pub body_crc: u32,
}

impl Header {
    /// The header for `meta` and `body`.
    pub fn of(meta: &[u8], body: &[u8]) -> Header {
        Header {
            meta_len: meta.len() as u32,
            meta_crc: crc32fast::hash(meta),
            body_len: body.len() as u64,
            body_crc: crc32fast::hash(body),
        }
    }

    /// The header as written at the start of a record (with its own checksum).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.meta_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.meta_crc.to_le_bytes());
        b[16..24].copy_from_slice(&self.body_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads the first [`HEADER_LEN`] bytes of a record; refuses foreign or damaged ones.
    pub fn parse(b: &[u8]) -> Result<Header, Corrupt> {
        let b: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Corrupt("short header"))?;
        if &b[0..4] != MAGIC {
            return Err(Corrupt("not a larder entry"));
        }
        if u16::from_le_bytes([b[4], b[5]]) != VERSION {
            return Err(Corrupt("unknown format version"));
        }
        if u32::from_le_bytes(b[28..32].try_into().expect("4")) != crc32fast::hash(&b[..28]) {
            return Err(Corrupt("header checksum"));
        }
        let h = Header {
            meta_len: u32::from_le_bytes(b[8..12].try_into().expect("4")),
            meta_crc: u32::from_le_bytes(b[12..16].try_into().expect("4")),
            body_len: u64::from_le_bytes(b[16..24].try_into().expect("8")),
            body_crc: u32::from_le_bytes(b[24..28].try_into().expect("4")),
        };
        if h.meta_len > META_MAX {
            return Err(Corrupt("metadata too large"));
        }
        Ok(h)
    }

    /// The header of the same body under other metadata.
    pub fn with_meta(&self, meta: &[u8]) -> Header {
        Header {
            meta_len: meta.len() as u32,
            meta_crc: crc32fast::hash(meta),
            ..*self
        }
    }

    /// Where the body starts.
    pub fn body_offset(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.meta_len)
    }

    /// Length of the whole record.
    pub fn record_len(&self) -> u64 {
        self.body_offset().saturating_add(self.body_len)
    }

    /// Checks metadata read back against its length and checksum.
    pub fn check_meta(&self, meta: &[u8]) -> Result<(), Corrupt> {
        if meta.len() as u64 != u64::from(self.meta_len) || crc32fast::hash(meta) != self.meta_crc {
            return Err(Corrupt("metadata checksum"));
        }
        Ok(())
    }
}

/// Checks a body read in pieces against its header.
#[derive(Default)]
pub struct BodyCheck {
    crc: crc32fast::Hasher,
    len: u64,
}

impl BodyCheck {
    /// Adds the next piece read.
    pub fn update(&mut self, piece: &[u8]) {
        self.crc.update(piece);
        self.len = self.len.saturating_add(piece.len() as u64);
    }

    /// Whether the pieces were the whole body `header` describes, unchanged.
    pub fn finish(self, header: &Header) -> Result<(), Corrupt> {
        if self.len != header.body_len || self.crc.finalize() != header.body_crc {
            return Err(Corrupt("body checksum"));
        }
        Ok(())
    }
}

/// The whole record as one buffer (a key-value value, a test).
pub fn encode(meta: &[u8], body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + meta.len() + body.len());
    out.put_slice(&Header::of(meta, body).to_bytes());
    out.put_slice(meta);
    out.put_slice(body);
    out.freeze()
}

/// A whole record with its metadata replaced and its body kept (`Output::UpdateMeta` for a
/// tier that keeps records as one value). The body is moved, not checked: a damaged body is
/// still caught when the record is read.
pub fn replace_meta(record: &Bytes, meta: &[u8]) -> Result<Bytes, Corrupt> {
    let h = Header::parse(record)?;
    if record.len() as u64 != h.record_len() {
        return Err(Corrupt("length does not match the header"));
    }
    let body = &record[h.body_offset() as usize..];
    let mut out = BytesMut::with_capacity(HEADER_LEN + meta.len() + body.len());
    out.put_slice(&h.with_meta(meta).to_bytes());
    out.put_slice(meta);
    out.put_slice(body);
    Ok(out.freeze())
}

/// Splits and checks a whole record: its metadata (still encoded) and its body.
pub fn decode(record: &Bytes) -> Result<(Bytes, Bytes), Corrupt> {
    let h = Header::parse(record)?;
    if record.len() as u64 != h.record_len() {
        return Err(Corrupt("length does not match the header"));
    }
    let body_at = h.body_offset() as usize;
    let meta = record.slice(HEADER_LEN..body_at);
    h.check_meta(&meta)?;
    let body = record.slice(body_at..);
    let mut check = BodyCheck::default();
    check.update(&body);
    check.finish(&h)?;
    Ok((meta, body))
}

// ---- metadata ----------------------------------------------------------------------------

impl Meta {
    /// The metadata's bytes: fields in a fixed order, each length-prefixed.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(512);
        b.put_u64_le(self.id.0);
        put_str(&mut b, self.key.as_str());
        let since = self
            .response_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        b.put_u64_le(since.as_secs());
        b.put_u32_le(since.subsec_nanos());
        match self.total {
            Some(t) => {
                b.put_u8(1);
                b.put_u64_le(t);
            }
            None => b.put_u8(0),
        }
        put_str(&mut b, self.request.method.as_str());
        put_str(&mut b, &self.request.uri.to_string());
        put_fields(&mut b, &self.request.headers);
        b.put_u16_le(self.response.status.as_u16());
        put_fields(&mut b, &self.response.headers);
        // Optional, last: records written before it existed still read.
        if let Some(reason) = self.response.extensions.get::<crate::heads::Reason>() {
            put_bytes(&mut b, reason.as_bytes());
        }
        b.freeze()
    }

    /// Parses metadata; anything that does not add up is [`Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Meta, Corrupt> {
        let mut r = Reader(bytes);
        let id = EntryId(r.u64()?);
        let key = CacheKey::from_normalized(r.str()?);
        let secs = r.u64()?;
        let nanos = r.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(Corrupt("response time"));
        }
        let response_time = crate::time::after(
            SystemTime::UNIX_EPOCH,
            Duration::new(secs.min(crate::time::DELTA_SECONDS_MAX * 64), nanos),
        );
        let total = match r.u8()? {
            0 => None,
            1 => Some(r.u64()?),
            _ => return Err(Corrupt("total flag")),
        };
        let method = Method::from_bytes(r.str()?.as_bytes()).map_err(|_| Corrupt("method"))?;
        let uri: http::Uri = r.str()?.parse().map_err(|_| Corrupt("uri"))?;
        let mut request = http::Request::new(()).into_parts().0;
        request.method = method;
        request.uri = uri;
        request.headers = r.fields()?;
        let mut response = http::Response::new(()).into_parts().0;
        response.status = StatusCode::from_u16(r.u16()?).map_err(|_| Corrupt("status"))?;
        response.headers = r.fields()?;
        if !r.0.is_empty() {
            let phrase = Bytes::copy_from_slice(r.bytes()?);
            let reason = crate::heads::Reason::new(phrase).ok_or(Corrupt("reason phrase"))?;
            response.extensions.insert(reason);
        }
        if !r.0.is_empty() {
            return Err(Corrupt("trailing bytes in metadata"));
        }
        Ok(Meta {
            id,
            key,
            response_time,
            request,
            response,
            total,
        })
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    put_bytes(b, s.as_bytes());
}

fn put_bytes(b: &mut BytesMut, s: &[u8]) {
    b.put_u32_le(s.len() as u32);
    b.put_slice(s);
}

fn put_fields(b: &mut BytesMut, h: &HeaderMap) {
    b.put_u32_le(h.len() as u32);
    for (name, value) in h {
        b.put_u32_le(name.as_str().len() as u32);
        b.put_slice(name.as_str().as_bytes());
        b.put_u32_le(value.len() as u32);
        b.put_slice(value.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.0.len() < n {
            return Err(Corrupt("metadata ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Corrupt> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, Corrupt> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, Corrupt> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Corrupt> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, Corrupt> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Corrupt("text is not UTF-8"))
    }

    fn fields(&mut self) -> Result<HeaderMap, Corrupt> {
        let n = self.u32()?;
        if n > FIELDS_MAX {
            return Err(Corrupt("too many fields"));
        }
        let mut h = HeaderMap::with_capacity(n.min(64) as usize);
        for _ in 0..n {
            let name = HeaderName::from_bytes(self.bytes()?).map_err(|_| Corrupt("field name"))?;
            let value =
                HeaderValue::from_bytes(self.bytes()?).map_err(|_| Corrupt("field value"))?;
            h.append(name, value);
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        let req = http::Request::get("http://example.test/a?b=1")
            .header("accept-encoding", "gzip")
            .header("host", "example.test")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let res = http::Response::builder()
            .status(200)
            .header("cache-control", "max-age=60")
            .header("vary", "accept-encoding")
            .header("etag", "\"v1\"")
            .header("set-thing", "a")
            .header("set-thing", "b")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        Meta {
            id: EntryId(42),
            key: CacheKey::from_normalized("http://example.test/a?b=1"),
            response_time: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            request: req,
            response: res,
            total: Some(9),
        }
    }

    #[test]
    fn a_record_round_trips() {
        let m = meta();
        let record = encode(&m.encode(), b"hello body");
        let (meta, body) = decode(&record).unwrap();
        assert_eq!(&body[..], b"hello body");
        let back = Meta::decode(&meta).unwrap();
        assert_eq!(back.id, m.id);
        assert_eq!(back.key, m.key);
        assert_eq!(back.response_time, m.response_time);
        assert_eq!(back.total, Some(9));
        assert_eq!(back.request.uri, m.request.uri);
        assert_eq!(back.request.headers, m.request.headers);
        assert_eq!(back.response.status, m.response.status);
        assert_eq!(back.response.headers, m.response.headers);
        assert!(
            back.response
                .extensions
                .get::<crate::heads::Reason>()
                .is_none()
        );
    }

    #[test]
    fn an_unusual_reason_phrase_is_kept_and_a_forged_one_refused() {
        let mut m = meta();
        let reason = crate::heads::Reason::new(Bytes::from_static(b"Fine By Me")).unwrap();
        m.response.extensions.insert(reason.clone());
        let back = Meta::decode(&m.encode()).unwrap();
        assert_eq!(
            back.response.extensions.get::<crate::heads::Reason>(),
            Some(&reason)
        );
        // A phrase that would split a head when written out is a corrupt record.
        let mut forged = meta().encode().to_vec();
        forged.extend_from_slice(&4u32.to_le_bytes());
        forged.extend_from_slice(b"a\r\nb");
        assert_eq!(Meta::decode(&forged).unwrap_err(), Corrupt("reason phrase"));
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_detected() {
        let record = encode(&meta().encode(), b"0123456789abcdef");
        for i in 0..record.len() {
            let mut bad = record.to_vec();
            bad[i] ^= 0x20;
            assert!(decode(&Bytes::from(bad)).is_err(), "flip at {i}");
            assert!(decode(&record.slice(..i)).is_err(), "cut at {i}");
        }
    }

    #[test]
    fn replacing_the_metadata_keeps_the_body() {
        let record = encode(b"old", b"the body");
        let new = replace_meta(&record, b"newer metadata").unwrap();
        let (meta, body) = decode(&new).unwrap();
        assert_eq!(
            (&meta[..], &body[..]),
            (&b"newer metadata"[..], &b"the body"[..])
        );
        assert!(replace_meta(&record.slice(..record.len() - 1), b"x").is_err());
    }

    #[test]
    fn other_versions_are_refused() {
        let mut record = encode(&meta().encode(), b"x").to_vec();
        record[4] = 2;
        let crc = crc32fast::hash(&record[..28]);
        record[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&Bytes::from(record)),
            Err(Corrupt("unknown format version"))
        );
    }
}
