//! The front doors: which absolute URL a request names, and whether this client may ask.
//!
//! - forward proxy: absolute-form `GET http://host/path` (curl -x, HTTP_PROXY), https too;
//! - forwardcache door: `GET /proxy?q=<escaped absolute URL>`;
//! - mirror: origin-form `GET /path?q` served from `--mirror` + `/path?q`.

use http::Uri;
use http::request::Parts;

/// Which door a request came in by: the mirror serves one configured origin to anyone,
/// the other two name any origin and are for allowed clients only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// Absolute-form target (`GET http://host/path`): the client uses this as its proxy.
    Forward,
    /// `/proxy?q=<escaped URL>`: forwardcache's door, for clients that cannot set a proxy.
    ProxyPath,
    /// Origin-form target joined to the `--mirror` URL.
    Mirror,
}

/// A request the doors refuse, with the status and a one-line reason.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub http::StatusCode, pub String);

fn absolute(u: &str) -> Option<Uri> {
    let uri: Uri = u.parse().ok()?;
    matches!(uri.scheme_str(), Some("http" | "https")).then_some(())?;
    uri.authority()?;
    Some(uri)
}

/// An absolute target whose port is out of range (`h:99999` is not port 80) is refused.
fn check_port(uri: &Uri) -> Result<(), Refused> {
    match uri.authority().map(crate::key::port) {
        Some(Err(e)) => Err(Refused(
            http::StatusCode::BAD_REQUEST,
            format!("bad port in {uri}: {e}"),
        )),
        _ => Ok(()),
    }
}

/// One upstream served in mirror mode: origin-form requests under `prefix` (a path, or
/// empty for everything) go to `base` with the prefix replaced by `base`'s path. Several
/// mirrors let one Larder serve a team's package mirrors (`/debian`, `/pypi`, `/npm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    prefix: String,
    base: Uri,
}

impl Mirror {
    /// `PREFIX=URL` (`/debian=http://deb.example/debian`), or a bare `URL` for every path.
    pub fn parse(spec: &str) -> Result<Mirror, String> {
        let spec = spec.trim();
        let (prefix, url) = match spec.split_once('=') {
            Some((p, u)) if p.starts_with('/') => (p.trim_end_matches('/'), u),
            _ => ("", spec),
        };
        if prefix.contains(['?', '#', '=']) {
            return Err(format!("mirror prefix {prefix:?} must be a plain path"));
        }
        let base: Uri = url
            .trim_end_matches('/')
            .parse()
            .map_err(|e| format!("bad mirror URL {url:?}: {e}"))?;
        if !matches!(base.scheme_str(), Some("http" | "https")) || base.authority().is_none() {
            return Err(format!("mirror {url:?} must be an http(s) URL"));
        }
        if base.query().is_some() {
            return Err(format!("mirror {url:?} must not have a query"));
        }
        Ok(Mirror {
            prefix: prefix.to_owned(),
            base,
        })
    }

    /// The upstream URL.
    pub fn base(&self) -> &Uri {
        &self.base
    }

    /// The path it serves (empty: every path).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The rest of `path` when this mirror serves it (a whole segment must match:
    /// `/debian` serves `/debian/x`, not `/debian-security/x`).
    fn rest<'a>(&self, pq: &'a str) -> Option<&'a str> {
        let rest = pq.strip_prefix(self.prefix.as_str())?;
        (rest.is_empty() || rest.starts_with(['/', '?'])).then_some(rest)
    }
}

/// Resolves the target URL of a request, with at most one mirror for every path.
pub fn resolve(
    parts: &Parts,
    mirror: Option<&Uri>,
    proxy_path: &str,
) -> Result<(Uri, Door), Refused> {
    let mirrors: Vec<Mirror> = mirror
        .map(|base| Mirror {
            prefix: String::new(),
            base: base.clone(),
        })
        .into_iter()
        .collect();
    resolve_in(parts, &mirrors, proxy_path)
}

/// Resolves the target URL of a request; an origin-form one goes to the mirror with the
/// longest prefix that serves its path.
pub fn resolve_in(
    parts: &Parts,
    mirrors: &[Mirror],
    proxy_path: &str,
) -> Result<(Uri, Door), Refused> {
    let bad = |m: String| Refused(http::StatusCode::BAD_REQUEST, m);
    if parts.uri.scheme().is_some() {
        let ok = matches!(parts.uri.scheme_str(), Some("http" | "https"))
            && parts.uri.authority().is_some();
        return if ok {
            check_port(&parts.uri)?;
            Ok((parts.uri.clone(), Door::Forward))
        } else {
            Err(bad(format!(
                "unsupported scheme in {}: only http and https are proxied",
                parts.uri
            )))
        };
    }
    let path = parts.uri.path();
    if path == proxy_path {
        let q = parts
            .uri
            .query()
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "q")
                    .map(|(_, v)| v.into_owned())
            })
            .ok_or_else(|| {
                bad(format!(
                    "missing q: use {proxy_path}?q=<escaped absolute URL>"
                ))
            })?;
        let uri = absolute(&q)
            .ok_or_else(|| bad(format!("bad q {q:?}: expected an absolute http(s) URL")))?;
        check_port(&uri)?;
        return Ok((uri, Door::ProxyPath));
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    // Only origin-form joins a mirror URL: `*` would make `http://host:port*` (port 80).
    if !pq.starts_with('/') {
        if mirrors.is_empty() {
            return Err(bad(NO_MIRROR.into()));
        }
        return Err(bad(format!(
            "{pq:?} is not an origin-form target (a path starting with /)"
        )));
    }
    let Some((m, rest)) = mirrors
        .iter()
        .filter_map(|m| Some((m, m.rest(pq)?)))
        .max_by_key(|(m, _)| m.prefix.len())
    else {
        if mirrors.is_empty() {
            return Err(bad(NO_MIRROR.into()));
        }
        let served: Vec<&str> = mirrors.iter().map(|m| m.prefix.as_str()).collect();
        return Err(Refused(
            http::StatusCode::NOT_FOUND,
            format!("no mirror serves {pq:?} (mirrored: {})", served.join(", ")),
        ));
    };
    let rest = if rest.is_empty() || rest.starts_with('?') {
        format!("/{rest}")
    } else {
        rest.to_owned()
    };
    let joined = format!(
        "{}://{}{}{}",
        m.base.scheme_str().unwrap_or("http"),
        m.base.authority().map(|a| a.as_str()).unwrap_or(""),
        m.base.path().trim_end_matches('/'),
        rest
    );
    absolute(&joined)
        .map(|u| (u, Door::Mirror))
        .ok_or_else(|| bad(format!("cannot build a mirror URL from {pq:?}")))
}

const NO_MIRROR: &str = "origin-form request without --mirror: send absolute-form (curl -x http://this-proxy URL) or use /proxy?q=";

/// The query of the forwardcache door for a target: `q=<escaped URL>`.
pub fn proxy_query(target: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("q", target)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn three_doors() {
        let m: Uri = "https://mirror.test/debian".parse().unwrap();
        assert_eq!(
            resolve(&parts("http://o.test/a?b"), None, "/proxy").unwrap(),
            ("http://o.test/a?b".parse().unwrap(), Door::Forward)
        );
        assert_eq!(
            resolve(
                &parts("/proxy?q=https%3A%2F%2Fo.test%2Fx%3Fy%3D1"),
                None,
                "/proxy"
            )
            .unwrap(),
            ("https://o.test/x?y=1".parse().unwrap(), Door::ProxyPath)
        );
        assert_eq!(
            resolve(&parts("/dists/stable/Release?x=1"), Some(&m), "/proxy").unwrap(),
            (
                "https://mirror.test/debian/dists/stable/Release?x=1"
                    .parse()
                    .unwrap(),
                Door::Mirror
            )
        );
    }

    #[test]
    fn ports_and_asterisk_form_are_refused_not_guessed() {
        let m: Uri = "http://mirror.test:8080".parse().unwrap();
        for bad in [
            "http://o.test:99999/a",
            "/proxy?q=http%3A%2F%2Fo.test%3A0%2F",
        ] {
            let r = resolve(&parts(bad), None, "/proxy").unwrap_err();
            assert!(r.1.contains("port"), "{bad}: {}", r.1);
        }
        let star = http::Request::options("*").body(()).unwrap().into_parts().0;
        assert_eq!(
            resolve(&star, Some(&m), "/proxy").unwrap_err().0,
            http::StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn several_mirrors_by_prefix() {
        let ms: Vec<Mirror> = [
            "/debian=http://deb.test/debian/",
            "/pypi=https://pypi.test",
            "/debian-security=http://sec.test/ds",
        ]
        .iter()
        .map(|s| Mirror::parse(s).unwrap())
        .collect();
        let to = |p: &str| resolve_in(&parts(p), &ms, "/proxy").map(|(u, _)| u.to_string());
        assert_eq!(
            to("/debian/pool/a.deb"),
            Ok("http://deb.test/debian/pool/a.deb".into())
        );
        assert_eq!(
            to("/debian-security/x?y"),
            Ok("http://sec.test/ds/x?y".into())
        );
        assert_eq!(to("/pypi"), Ok("https://pypi.test/".into()));
        assert_eq!(to("/pypi?x=1"), Ok("https://pypi.test/?x=1".into()));
        let miss = to("/debianx/a").unwrap_err();
        assert_eq!(miss.0, http::StatusCode::NOT_FOUND);
        assert!(miss.1.contains("/debian"), "{}", miss.1);
        // A root mirror takes what no prefix serves; the longest prefix wins.
        let mut with_root = ms.clone();
        with_root.push(Mirror::parse("http://all.test").unwrap());
        let (u, _) = resolve_in(&parts("/other/x"), &with_root, "/proxy").unwrap();
        assert_eq!(u.to_string(), "http://all.test/other/x");
        let (u, _) = resolve_in(&parts("/debian/x"), &with_root, "/proxy").unwrap();
        assert_eq!(u.to_string(), "http://deb.test/debian/x");
        for bad in ["/x=ftp://a", "/x=http://a/?q", "not a url"] {
            assert!(Mirror::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_say_why() {
        assert!(
            resolve(&parts("/proxy"), None, "/proxy")
                .unwrap_err()
                .1
                .contains("missing q")
        );
        assert!(
            resolve(&parts("/proxy?q=ftp%3A%2F%2Fx"), None, "/proxy")
                .unwrap_err()
                .1
                .contains("bad q")
        );
        assert!(
            resolve(&parts("/a"), None, "/proxy")
                .unwrap_err()
                .1
                .contains("without --mirror")
        );
    }
}
