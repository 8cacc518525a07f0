//! What a `PURGE` drops besides one URL: every URL under a prefix, or every response tagged
//! with a surrogate key (Fastly's `Surrogate-Key`, Cloudflare's `Cache-Tag`), cluster-wide.
//!
//! `PURGE <url>` with `Larder-Purge: prefix` drops every key that starts with the URL;
//! `PURGE <any url>` with `Larder-Purge-Tag: a b` drops every stored response whose
//! `Surrogate-Key` or `Cache-Tag` names `a` or `b`. The same fields travel to the peers.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `Larder-Purge: prefix`.
pub const MODE: &str = "larder-purge";
/// `Larder-Purge-Tag: <tags>` (space- or comma-separated).
pub const TAG: &str = "larder-purge-tag";
/// Most tags one purge may name.
pub const TAGS_MAX: usize = 64;

/// Which stored responses a purge selects, besides the exact URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Selector {
    /// Every key starting with the request's URL.
    Prefix,
    /// Every response tagged with one of these.
    Tags(Vec<String>),
}

fn split(v: &str) -> impl Iterator<Item = &str> {
    v.split([' ', ',', '\t']).filter(|t| !t.is_empty())
}

/// The tags a stored response carries (`Surrogate-Key`, `Cache-Tag`).
pub fn tags(h: &HeaderMap) -> impl Iterator<Item = &str> {
    ["surrogate-key", "cache-tag"]
        .into_iter()
        .flat_map(move |n| h.get_all(n).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(split)
}

impl Selector {
    /// The selector a purge request's fields ask for (`None`: the exact URL).
    pub fn of(h: &HeaderMap) -> Option<Selector> {
        if let Some(v) = h.get(TAG).and_then(|v| v.to_str().ok()) {
            let mut tags: Vec<String> = split(v).take(TAGS_MAX).map(str::to_owned).collect();
            tags.sort();
            tags.dedup();
            return (!tags.is_empty()).then_some(Selector::Tags(tags));
        }
        h.get(MODE)
            .filter(|v| v.as_bytes().eq_ignore_ascii_case(b"prefix"))
            .map(|_| Selector::Prefix)
    }

    /// The fields that ask for this selector, for the peers.
    pub fn fields(&self) -> Vec<(HeaderName, HeaderValue)> {
        match self {
            Selector::Prefix => vec![(
                HeaderName::from_static(MODE),
                HeaderValue::from_static("prefix"),
            )],
            Selector::Tags(t) => HeaderValue::from_str(&t.join(" "))
                .map(|v| vec![(HeaderName::from_static(TAG), v)])
                .unwrap_or_default(),
        }
    }

    /// Whether a stored response under `key` (head `head`, when known) is selected by a
    /// purge of `url`.
    pub fn selects(&self, url: &str, key: &str, head: Option<&HeaderMap>) -> bool {
        match self {
            Selector::Prefix => key.starts_with(url),
            Selector::Tags(wanted) => {
                head.is_some_and(|h| tags(h).any(|t| wanted.iter().any(|w| w == t)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn selectors_and_tags() {
        assert_eq!(Selector::of(&fields(&[])), None);
        assert_eq!(
            Selector::of(&fields(&[("larder-purge", "PREFIX")])),
            Some(Selector::Prefix)
        );
        let t = Selector::of(&fields(&[("larder-purge-tag", "b a,  b")])).unwrap();
        assert_eq!(t, Selector::Tags(vec!["a".into(), "b".into()]));
        let stored = fields(&[("surrogate-key", "x a"), ("cache-tag", "c,d")]);
        assert!(t.selects("", "http://o/k", Some(&stored)));
        assert!(!t.selects("", "http://o/k", Some(&fields(&[("cache-tag", "ab")]))));
        assert!(!t.selects("", "http://o/k", None));
        assert!(Selector::Prefix.selects("http://o/a/", "http://o/a/b#seg=1", None));
        assert!(!Selector::Prefix.selects("http://o/a/", "http://o/ab", None));
        let many = (0..100)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let Some(Selector::Tags(t)) = Selector::of(&fields(&[("larder-purge-tag", &many)])) else {
            panic!()
        };
        assert_eq!(t.len(), TAGS_MAX);
        assert_eq!(Selector::of(&fields(&[("larder-purge-tag", " , ")])), None);
    }
}
