//! How one cached response lives in Spin key-value: the request that fetched it, the
//! response head, when it arrived, and the body. The policy is rebuilt from these on every
//! read (`Policy::storable` is deterministic for the same inputs), so nothing but plain
//! HTTP data is persisted and any runtime can read what another wrote.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, request, response};

const MAGIC: &[u8] = b"LARDER-KV 1\n";

#[derive(Debug)]
pub struct Entry {
    /// When the response arrived, in seconds since the epoch.
    pub time: u64,
    pub request: request::Parts,
    pub response: response::Parts,
    pub body: Bytes,
}

fn put_headers(out: &mut Vec<u8>, h: &HeaderMap) {
    out.extend_from_slice(format!("{}\n", h.len()).as_bytes());
    for (k, v) in h {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn line(&mut self) -> Option<&'a [u8]> {
        let i = self.0.iter().position(|b| *b == b'\n')?;
        let (l, rest) = self.0.split_at(i);
        self.0 = &rest[1..];
        Some(l)
    }
    fn text(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.line()?).ok()
    }
    fn headers(&mut self) -> Option<HeaderMap> {
        let n: usize = self.text()?.parse().ok()?;
        let mut h = HeaderMap::with_capacity(n);
        for _ in 0..n {
            let l = self.line()?;
            let i = l.windows(2).position(|w| w == b": ")?;
            h.append(
                HeaderName::from_bytes(&l[..i]).ok()?,
                HeaderValue::from_bytes(&l[i + 2..]).ok()?,
            );
        }
        Some(h)
    }
}

impl Entry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 512);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(
            format!(
                "{}\n{}\n{}\n",
                self.time,
                self.request.uri,
                self.response.status.as_u16()
            )
            .as_bytes(),
        );
        put_headers(&mut out, &self.request.headers);
        put_headers(&mut out, &self.response.headers);
        out.extend_from_slice(&self.body);
        out
    }

    /// `None` for anything that is not an entry of this version (it is then a miss).
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader(bytes.strip_prefix(MAGIC)?);
        let time = r.text()?.parse().ok()?;
        let uri: http::Uri = r.text()?.parse().ok()?;
        let status: u16 = r.text()?.parse().ok()?;
        let mut request = http::Request::get(uri).body(()).ok()?.into_parts().0;
        request.headers = r.headers()?;
        let mut response = http::Response::builder()
            .status(status)
            .body(())
            .ok()?
            .into_parts()
            .0;
        response.headers = r.headers()?;
        Some(Entry {
            time,
            request,
            response,
            body: Bytes::copy_from_slice(r.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut request = http::Request::get("http://o.test/a?b")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        request
            .headers
            .insert("accept-language", "en".parse().unwrap());
        let mut response = http::Response::builder()
            .status(404)
            .body(())
            .unwrap()
            .into_parts()
            .0;
        response.headers.append("x-a", "1".parse().unwrap());
        response.headers.append("x-a", "2".parse().unwrap());
        let e = Entry {
            time: 1_700_000_000,
            request,
            response,
            body: Bytes::from_static(b"bin\n\x00ary"),
        };
        let d = Entry::decode(&e.encode()).unwrap();
        assert_eq!(d.time, e.time);
        assert_eq!(d.request.uri, "http://o.test/a?b");
        assert_eq!(d.request.headers, e.request.headers);
        assert_eq!(d.response.status, 404);
        assert_eq!(d.response.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(d.body, e.body);
        assert!(Entry::decode(b"garbage").is_none());
    }
}
