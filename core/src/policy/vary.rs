//! Vary matching (RFC 9111 §4.1).
//!
//! `http-cache-semantics` compares only the first value of each varied header; a stored
//! variant here records *every* value of each header it varies on, so
//! `Accept-Encoding: gzip` + `Accept-Encoding: br` never matches a variant stored for `gzip`.

use http::{HeaderMap, HeaderName};

/// The request's values for the headers a stored response varies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaryKey {
    /// No Vary header: matches every request.
    None,
    /// `Vary: *`: matches no request.
    Star,
    /// Header name and its combined, whitespace-normalized values (None when absent).
    Fields(Vec<(HeaderName, Option<String>)>),
}

fn vary_names(res: &HeaderMap) -> Result<Vec<HeaderName>, ()> {
    let mut names = Vec::new();
    for v in res.get_all(http::header::VARY) {
        let Ok(v) = v.to_str() else { return Err(()) };
        for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if n == "*" {
                return Err(());
            }
            if let Ok(name) = HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(names)
}

/// Combines all values of `name`, normalizing the whitespace around commas (RFC 9111 §4.1
/// allows normalizing that does not change meaning).
fn field_value(req: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for v in req.get_all(name) {
        let v = String::from_utf8_lossy(v.as_bytes());
        parts.extend(
            v.split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty()),
        );
    }
    if req.get(name).is_none() {
        None
    } else {
        Some(parts.join(","))
    }
}

impl VaryKey {
    /// What a response with these headers varies on, as seen in this request.
    pub fn of(req: &HeaderMap, res: &HeaderMap) -> Self {
        match vary_names(res) {
            Err(()) => VaryKey::Star,
            Ok(names) if names.is_empty() => VaryKey::None,
            Ok(names) => VaryKey::Fields(
                names
                    .into_iter()
                    .map(|n| {
                        let v = field_value(req, &n);
                        (n, v)
                    })
                    .collect(),
            ),
        }
    }

    /// Whether a new request selects the variant this key was recorded for.
    pub fn matches(&self, req: &HeaderMap) -> bool {
        match self {
            VaryKey::None => true,
            VaryKey::Star => false,
            VaryKey::Fields(fields) => fields.iter().all(|(n, v)| field_value(req, n) == *v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn every_value_counts() {
        let res = h(&[("vary", "Accept-Encoding")]);
        let k = VaryKey::of(&h(&[("accept-encoding", "gzip")]), &res);
        assert!(k.matches(&h(&[("accept-encoding", "gzip")])));
        assert!(!k.matches(&h(&[
            ("accept-encoding", "gzip"),
            ("accept-encoding", "br")
        ])));
        assert!(!k.matches(&h(&[])));
    }

    #[test]
    fn whitespace_is_normalized_and_absence_matches_absence() {
        let res = h(&[("vary", "accept-encoding, X-Foo")]);
        let k = VaryKey::of(&h(&[("accept-encoding", "gzip,  br")]), &res);
        assert!(k.matches(&h(&[("accept-encoding", "gzip, br")])));
        assert!(k.matches(&h(&[
            ("accept-encoding", "gzip"),
            ("accept-encoding", "br")
        ])));
        assert!(!k.matches(&h(&[("accept-encoding", "gzip, br"), ("x-foo", "1")])));
    }

    #[test]
    fn star_never_matches() {
        let k = VaryKey::of(&h(&[]), &h(&[("vary", "accept, *")]));
        assert_eq!(k, VaryKey::Star);
        assert!(!k.matches(&h(&[])));
    }
}
