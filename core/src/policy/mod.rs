//! RFC 9111 storability and reuse, built on `http-cache-semantics`, plus the proxy's rules.
//!
//! The crate does the RFC arithmetic (freshness lifetime, age, heuristics, revalidation
//! requests, 304 merging). This module adds what a shared proxy needs and the crate lacks:
//! injected time only (`CachePolicy::new` reads the clock and traps on wasm32), reasons for
//! every refusal, `stale-while-revalidate` / `stale-if-error` (RFC 5861), full-value Vary
//! matching, HEAD answered from a stored GET, a minimum TTL, a size limit, and a guard
//! against the request-`max-stale` leak of kornelski/http-cache-semantics#56.

pub mod conditional;
pub mod directives;
pub mod rules;
pub mod vary;
pub mod vectors;

use crate::heads;
use core::fmt;
use directives::Directives;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode, request, response};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};
use std::time::{Duration, SystemTime};
use vary::VaryKey;

/// Shared (a proxy for many users, the default) or private (one tenant: stores `private`
/// and authorized responses, as forwardcache does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// A cache for many users: nothing for one user alone is stored (`private`, `Set-Cookie`).
    #[default]
    Shared,
    /// One tenant's cache: what is private to that tenant may be stored.
    Private,
}

/// The proxy's storage rules on top of RFC 9111.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Shared or private cache semantics.
    pub mode: CacheMode,
    /// The least freshness lifetime a stored 200 gets (squid's `refresh_pattern` minimum),
    /// where no rule sets its own: a `max-age=60` page under a 1-day minimum is stored and
    /// fresh for a day. Default 0.
    pub min_ttl: Duration,
    /// Bodies larger than this are streamed through, never stored.
    pub max_object_size: u64,
    /// Fraction of (Date − Last-Modified) used as heuristic freshness (RFC 9111 §4.2.2).
    pub heuristic_fraction: f32,
    /// How stale a stored response may be served when the origin cannot be reached at all
    /// (RFC 9111 §4.2.4: refused, reset, closed, silent); zero: never. `stale-if-error`
    /// bounds it instead when the response or request has one.
    pub stale_if_unreachable: Duration,
    /// Targeted cache-control fields (RFC 9213), lower-case, first wins: the first present
    /// with a valid value decides this cache's policy instead of `Cache-Control` and
    /// `Expires` (all are passed on unchanged). Default: `cdn-cache-control`.
    pub targeted: Vec<String>,
    /// The operator's freshness rules, first match wins (see [`rules`]).
    pub rules: Vec<rules::FreshnessRule>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: CacheMode::Shared,
            min_ttl: Duration::ZERO,
            max_object_size: 64 << 20,
            heuristic_fraction: 0.1,
            stale_if_unreachable: Duration::from_secs(24 * 3600),
            targeted: vec!["cdn-cache-control".into()],
            rules: Vec::new(),
        }
    }
}

/// Why a response was not stored.
///
/// `#[non_exhaustive]`: new rules bring new reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotStored {
    /// Only GET responses are stored (HEAD is answered from them).
    Method,
    /// A status the cache does not store (e.g. 500, or 206 outside segment fetching).
    Status(u16),
    /// The request said `no-store`.
    RequestNoStore,
    /// The response said `no-store`.
    NoStore,
    /// `private` in a shared cache.
    Private,
    /// A request with `Authorization`, and the response did not allow sharing it.
    Authorization,
    /// `Set-Cookie` in a shared cache: one user's cookie must never reach another.
    SetCookie,
    /// `Vary: *` can never be matched.
    VaryStar,
    /// No explicit freshness, no heuristic and not cacheable by default.
    NotCacheable,
    /// Stale on arrival and no validator to revalidate it with: storing it could not help.
    StaleNoValidator,
    /// A freshness rule says not to cache it (`cache = false`).
    Rule,
    /// Larger than the maximum object size.
    TooLarge,
    /// The body ended before its declared length, or the transfer failed.
    Incomplete,
}

impl NotStored {
    /// A short token for `Cache-Status: ...; detail=` and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status(_) => "status",
            NotStored::RequestNoStore => "request-no-store",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary-star",
            NotStored::NotCacheable => "not-cacheable",
            NotStored::StaleNoValidator => "stale-no-validator",
            NotStored::Rule => "rule",
            NotStored::TooLarge => "too-large",
            NotStored::Incomplete => "incomplete",
        }
    }
}

impl fmt::Display for NotStored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a stored response was not used as is.
///
/// `#[non_exhaustive]`: new rules bring new reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotServed {
    /// Only GET and HEAD are answered from cache.
    Method,
    /// The request's varied headers select another variant.
    VaryMismatch,
    /// Stale, or the request demands validation (`no-cache`, `max-age`, `min-fresh`).
    Stale,
}

/// What the cache keeps beside a body to judge its reuse.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Heap bytes this value holds (the crate's copies of both heads, parsed directives,
    /// validators), estimated when made, so entries are weighed by what they cost.
    footprint: u64,
    policy: CachePolicy,
    vary: VaryKey,
    res_cc: Directives,
    /// Freshness lifetime, fixed when stored or refreshed (Age counts against it).
    max_age: Duration,
    /// When it stops being fresh (for requests without directives of their own).
    fresh_until: SystemTime,
    has_validator: bool,
    validators: Vec<(HeaderName, http::HeaderValue)>,
    shared: bool,
    set_cookie: bool,
    /// A rule made it immutable: served while fresh even to requests asking to revalidate.
    immutable: bool,
    /// When the response (or the 304 that last refreshed it) arrived: with the stored
    /// request and head, all a persistent tier needs to rebuild this value.
    response_time: SystemTime,
}

/// How a stored response may be used for a request.
#[derive(Debug)]
pub enum Reuse {
    /// Serve it as is.
    Fresh,
    /// Validate first with `revalidate` (conditional when the response had validators).
    Stale {
        /// The request to send upstream.
        revalidate: Box<request::Parts>,
        /// RFC 5861: the stored copy may be served now while the validation runs behind it.
        while_revalidate: bool,
    },
    /// Another variant, or a request the entry cannot answer.
    NoMatch(NotServed),
}

impl Reuse {
    /// A short name for logs, bindings and the shared vectors: `fresh`, `stale`,
    /// `stale-while-revalidate`, `vary-mismatch` or `method`.
    pub fn token(&self) -> &'static str {
        match self {
            Reuse::Fresh => "fresh",
            Reuse::Stale {
                while_revalidate: true,
                ..
            } => "stale-while-revalidate",
            Reuse::Stale { .. } => "stale",
            Reuse::NoMatch(NotServed::VaryMismatch) => "vary-mismatch",
            Reuse::NoMatch(_) => "method",
        }
    }
}

/// The outcome of a validation response.
#[derive(Debug)]
pub enum Revalidated {
    /// 304 matched: keep the body, use the refreshed headers and policy.
    NotModified {
        /// The entry's policy, refreshed by the 304.
        stored: Box<Stored>,
        /// The stored head with the 304's fields merged in (RFC 9111 §3.2).
        head: response::Parts,
    },
    /// The origin sent something else: store/serve it as a new response.
    Modified,
}

/// Methods a cache may answer from storage.
pub fn is_cacheable_method(m: &Method) -> bool {
    *m == Method::GET || *m == Method::HEAD
}

/// Unsafe methods invalidate the target URI (RFC 9111 §4.4).
pub fn invalidates(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Request headers that must not reach the origin on a cache fill: the fill asks for the
/// whole, unconditional representation so it can be stored; the client's own conditions and
/// ranges are then applied by the cache.
const CLIENT_ONLY: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Hop-by-hop fields (RFC 9110 §7.6.1), removed before storing or forwarding.
/// (Names, not strings: removing by name skips parsing it again for every response.)
pub const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Fields a 304 never changes in the stored response (RFC 9111 §3.2): they frame or encode
/// the stored body, which the 304 does not carry.
const NOT_UPDATED_BY_304: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::TRANSFER_ENCODING,
    header::CONTENT_RANGE,
];

/// Removes hop-by-hop fields, including those the Connection header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

/// The request a cache fill sends upstream for a client request: GET (HEAD fills the
/// cache too, as Varnish does), no client preconditions or ranges, no hop-by-hop fields.
pub fn fill_request(client: &request::Parts) -> request::Parts {
    let mut r = request::Request::new(());
    *r.method_mut() = Method::GET;
    *r.uri_mut() = client.uri.clone();
    *r.version_mut() = http::Version::HTTP_11;
    let mut h = client.headers.clone();
    strip_hop_by_hop(&mut h);
    // The absolute URI names the authority; a Host that differs only in spelling must not
    // split one entry into many.
    h.remove(header::HOST);
    for n in &CLIENT_ONLY {
        h.remove(n);
    }
    // A peer's segment request names a version for the peer it asks, never for an origin.
    h.remove(crate::hop::SEGMENT);
    *r.headers_mut() = h;
    r.into_parts().0
}

impl PolicyConfig {
    fn options(&self) -> CacheOptions {
        CacheOptions {
            shared: self.mode == CacheMode::Shared,
            cache_heuristic: self.heuristic_fraction,
            ..CacheOptions::default()
        }
    }
}

/// The policy engine. Stateless apart from its configuration.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The rules it applies.
    pub config: PolicyConfig,
}

impl Policy {
    /// A policy applying `config`.
    pub fn new(config: PolicyConfig) -> Self {
        Policy { config }
    }

    fn shared(&self) -> bool {
        self.config.mode == CacheMode::Shared
    }

    /// Prepares an upstream head for storing and serving: `Age` reduced to the first value
    /// of the first line (RFC 9111 §5.1; an invalid one is dropped), and the fields named by
    /// `no-cache="..."` and (in a shared cache) `private="..."` removed (§5.2.2.4, §5.2.2.7).
    /// `Cache-Control` itself is passed on as the origin wrote it (RFC 9111 §5.2: a cache
    /// forwards directives, it does not rewrite them); the policy judges the canonical form
    /// ([`Policy::canonical_response`]) on its own copy.
    pub fn prepare_response(&self, res: &mut response::Parts) {
        normalize_age(&mut res.headers);
        for f in self.fields_to_strip(&res.headers) {
            res.headers.remove(f.as_str());
        }
    }

    /// The names `no-cache="..."` and, in a shared cache, `private="..."` list.
    fn fields_to_strip(&self, headers: &http::HeaderMap) -> Vec<String> {
        let mut strip = Vec::new();
        for v in headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for d in directives::directives(v) {
                match (d.name.as_str(), &d.value) {
                    ("no-cache", Some(fields)) => strip.extend(field_names(fields)),
                    ("private", Some(fields)) if self.shared() => strip.extend(field_names(fields)),
                    _ => {}
                }
            }
        }
        strip.retain(|f| !f.is_empty());
        strip
    }

    /// The first targeted field (RFC 9213) of `headers` with a valid value, as the
    /// Cache-Control directives it stands for.
    fn targeted(&self, headers: &HeaderMap) -> Option<String> {
        self.config.targeted.iter().find_map(|name| {
            let values: Vec<&str> = headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.to_str().ok())
                .collect::<Option<_>>()?;
            if values.is_empty() {
                return None;
            }
            targeted_directives(&values.join(", "))
        })
    }

    /// The head as the policy (and `http-cache-semantics`) judges it: [`prepared`](
    /// Policy::prepare_response), with `Cache-Control` rewritten canonically. The field-
    /// qualified forms of `no-cache` and `private` are applied (left in place, the crate
    /// would read `no-cache="a"` as a bare `no-cache`); names are lower-cased, delta-seconds
    /// past 2^31 become 2^31 (RFC 9111 §1.2.2), so no lifetime the crate or this module
    /// computes can overflow, whatever the origin wrote.
    pub fn canonical_response(&self, res: &response::Parts) -> response::Parts {
        let mut res = crate::heads::clone_response(res);
        self.canonicalize(&mut res);
        res
    }

    fn canonicalize(&self, res: &mut response::Parts) {
        normalize_age(&mut res.headers);
        normalize_dates(&mut res.headers);
        if let Some(cc) = self.targeted(&res.headers) {
            // RFC 9213 §2.2: the targeted field replaces Cache-Control and Expires here.
            res.headers.remove(header::EXPIRES);
            res.headers.remove(header::CACHE_CONTROL);
            if let Ok(v) = cc.parse() {
                res.headers.insert(header::CACHE_CONTROL, v);
            }
        }
        let values: Vec<String> = res
            .headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        // Already canonical (bare lower-case flags): nothing to rewrite.
        if !values.iter().any(|v| {
            v.bytes()
                .any(|b| b == b'=' || b == b'"' || b.is_ascii_uppercase())
        }) {
            return;
        }
        for f in self.fields_to_strip(&res.headers) {
            res.headers.remove(f.as_str());
        }
        let mut keep = Vec::new();
        for d in values.iter().flat_map(|v| directives::directives(v)) {
            match (d.name.as_str(), &d.value) {
                // An empty list names no field: the directive applies whole (RFC 9111
                // §5.2.2.4 and §5.2.2.7 qualify it with one or more names).
                ("no-cache" | "private", Some(fields)) if field_names(fields).next().is_none() => {
                    keep.push(d.name.clone())
                }
                // Applied above: the named fields are gone, the rest stays usable.
                ("no-cache", Some(_)) => {}
                ("private", Some(_)) if self.shared() => {}
                // A private cache may keep it all; downstream still sees `private`.
                ("private", Some(_)) => keep.push(d.name.clone()),
                _ => keep.extend(canonical(&d)),
            }
        }
        res.headers.remove(header::CACHE_CONTROL);
        let keep = first_of_each(keep);
        if let Ok(v) = keep.join(", ").parse() {
            if !keep.is_empty() {
                res.headers.insert(header::CACHE_CONTROL, v);
            }
        }
    }

    /// Decides from the head alone whether a response may be stored. `req` is the request
    /// that was sent upstream (see [`fill_request`]); `now` is when the head arrived.
    pub fn storable(
        &self,
        req: &request::Parts,
        res: &response::Parts,
        now: SystemTime,
    ) -> Result<Stored, NotStored> {
        let now = crate::time::clamp(now);
        if req.method != Method::GET {
            return Err(NotStored::Method);
        }
        let url = req.uri.to_string();
        let rule = self.config.rules.iter().find(|r| r.matches(&url));
        if rule.is_some_and(|r| !r.cache) {
            return Err(NotStored::Rule);
        }
        let mut res = self.canonical_response(res);
        let req_cc = Directives::parse(&req.headers);
        let mut res_cc = Directives::parse(&res.headers);
        if req_cc.no_store() {
            return Err(NotStored::RequestNoStore);
        }
        // RFC 9111 §5.2.2.3: `must-understand` stores only a status this cache implements,
        // and then its `no-store` (there for caches that do not understand) is ignored.
        if res_cc.must_understand() {
            if !is_understood_status(res.status) {
                return Err(NotStored::Status(res.status.as_u16()));
            }
            if res_cc.no_store() {
                without_directive(&mut res.headers, "no-store");
                res_cc = Directives::parse(&res.headers);
            }
        }
        let res = &res;
        if res_cc.no_store() {
            return Err(NotStored::NoStore);
        }
        let shared = self.shared();
        if shared && res_cc.private() {
            return Err(NotStored::Private);
        }
        if shared
            && req.headers.contains_key(header::AUTHORIZATION)
            && !(res_cc.public() || res_cc.has_s_maxage() || res_cc.must_revalidate())
        {
            return Err(NotStored::Authorization);
        }
        let set_cookie = res.headers.contains_key(header::SET_COOKIE);
        if shared && set_cookie {
            return Err(NotStored::SetCookie);
        }
        if res.status == StatusCode::PARTIAL_CONTENT {
            return Err(NotStored::Status(206));
        }
        let vary = VaryKey::of(&req.headers, &res.headers);
        if vary == VaryKey::Star {
            return Err(NotStored::VaryStar);
        }
        if let Some(len) = content_length(&res.headers) {
            if len > self.config.max_object_size {
                return Err(NotStored::TooLarge);
            }
        }
        let kept = policy_request(req, &vary);
        // RFC 9111 §3: any final status may be stored with explicit freshness; the crate
        // knows a fixed list only. Its copy of such a response is judged as a 200 (its
        // rules are otherwise the same); the stored head keeps the real status, and without
        // explicit freshness nothing changes (heuristics stay with the codes RFC 9110 §15.1
        // allows them for).
        let explicit = res_cc.has_max_age()
            || (shared && res_cc.has_s_maxage())
            || res.headers.contains_key(header::EXPIRES);
        let as_judged;
        let judged = match res.status.as_u16() {
            s @ 200..=599
                if explicit && s != 206 && s != 304 && !is_understood_status(res.status) =>
            {
                as_judged = {
                    let mut r = crate::heads::clone_response(res);
                    r.status = StatusCode::OK;
                    r
                };
                &as_judged
            }
            _ => res,
        };
        // The operator's rules and `min_ttl` lengthen only what is a plain success (a 404 or
        // a 500 made to live a year would outlive the fix); a `max_ttl` shortens anything.
        let success = matches!(res.status.as_u16(), 200 | 203);
        let mut ruled;
        let judged = match rule.and_then(|r| r.default_ttl) {
            Some(ttl) if success && !rules::has_explicit_lifetime(&judged.headers, shared) => {
                ruled = crate::heads::clone_response(judged);
                rules::with_lifetime(&mut ruled.headers, ttl, shared);
                &ruled
            }
            _ => judged,
        };
        let mut policy = CachePolicy::new_options(&kept, judged, now, self.config.options());
        let lifetime = bounded_ttl(&policy, now).saturating_add(policy.age(now));
        let clamped = match rule {
            Some(r) if success => r.clamp(lifetime, self.config.min_ttl),
            Some(r) => r.max_ttl.map_or(lifetime, |high| lifetime.min(high)),
            None if success => lifetime.max(self.config.min_ttl),
            None => lifetime,
        };
        if clamped != lifetime && !res_cc.no_cache() {
            ruled = crate::heads::clone_response(judged);
            rules::with_lifetime(&mut ruled.headers, clamped, shared);
            policy = CachePolicy::new_options(&kept, &ruled, now, self.config.options());
        }
        if !policy.is_storable() {
            return Err(if is_understood_status(res.status) {
                NotStored::NotCacheable
            } else {
                NotStored::Status(res.status.as_u16())
            });
        }
        let ttl = bounded_ttl(&policy, now);
        let has_validator = res.headers.contains_key(header::ETAG)
            || res.headers.contains_key(header::LAST_MODIFIED);
        if ttl.is_zero() && !has_validator {
            return Err(NotStored::StaleNoValidator);
        }
        let max_age = ttl.saturating_add(policy.age(now));
        let footprint = heads::fields_footprint(&kept.headers)
            + heads::fields_footprint(&res.headers)
            + kept.uri.to_string().len() as u64
            + 2 * cc_len(&res.headers)
            + STORED_FIXED;
        Ok(Stored {
            footprint,
            policy,
            vary,
            res_cc,
            max_age,
            fresh_until: crate::time::after(now, ttl),
            has_validator,
            validators: validators_of(&res.headers),
            shared,
            set_cookie,
            immutable: rule.is_some_and(|r| r.immutable),
            response_time: now,
        })
    }

    /// Decides how a stored response may serve `req` at `now`.
    pub fn reuse(&self, stored: &Stored, req: &request::Parts, now: SystemTime) -> Reuse {
        let now = crate::time::clamp(now);
        if !is_cacheable_method(&req.method) {
            return Reuse::NoMatch(NotServed::Method);
        }
        if !stored.vary.matches(&req.headers) {
            return Reuse::NoMatch(NotServed::VaryMismatch);
        }
        // An operator's `immutable`: a fresh entry answers even a reload's `no-cache`.
        if stored.immutable && now < stored.fresh_until {
            return Reuse::Fresh;
        }
        // The common case, without the crate's header copies: a request with no directives
        // of its own, and a response still inside the lifetime computed when it was stored
        // (Age grows one second per second, so freshness ends at a fixed instant).
        if now < stored.fresh_until
            && !req.headers.contains_key(header::CACHE_CONTROL)
            && !req.headers.contains_key(header::PRAGMA)
        {
            return Reuse::Fresh;
        }
        let view = self.reuse_view(stored, req);
        match stored.policy.before_request(&view, now) {
            BeforeRequest::Fresh(_) => Reuse::Fresh,
            BeforeRequest::Stale { request, .. } => {
                let req_cc = Directives::parse(&req.headers);
                let swr = stored
                    .res_cc
                    .stale_while_revalidate()
                    .is_some_and(|w| self.staleness(stored, now) <= w)
                    && !req_cc.no_cache()
                    && req
                        .headers
                        .get(header::PRAGMA)
                        .is_none_or(|p| p.as_bytes() != b"no-cache")
                    && !stored.must_revalidate();
                Reuse::Stale {
                    revalidate: Box::new(request),
                    while_revalidate: swr,
                }
            }
        }
    }

    /// RFC 5861 §4: may a stale response be served because the origin failed? The response's
    /// or the request's `stale-if-error=N` bounds how stale; `must-revalidate`,
    /// `proxy-revalidate` (shared) and `no-cache` forbid it.
    pub fn stale_if_error(&self, stored: &Stored, req: &request::Parts, now: SystemTime) -> bool {
        let now = crate::time::clamp(now);
        if stored.must_revalidate() || stored.res_cc.no_cache() {
            return false;
        }
        let req_cc = Directives::parse(&req.headers);
        let window = match (stored.res_cc.stale_if_error(), req_cc.stale_if_error()) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => match a.or(b) {
                Some(w) => w,
                None => return false,
            },
        };
        self.staleness(stored, now) <= window
    }

    /// RFC 9111 §4.2.4: may a stale response be served because the origin cannot be reached
    /// at all? `stale-if-error`, when present, decides (and bounds) as for an error status;
    /// otherwise `must-revalidate`, `no-cache`, and in a shared cache `proxy-revalidate`
    /// and `s-maxage`, forbid it, as does a request's `no-cache`; else up to
    /// `stale_if_unreachable` of staleness.
    pub fn stale_if_unreachable(
        &self,
        stored: &Stored,
        req: &request::Parts,
        now: SystemTime,
    ) -> bool {
        let now = crate::time::clamp(now);
        let req_cc = Directives::parse(&req.headers);
        if stored.res_cc.stale_if_error().is_some() || req_cc.stale_if_error().is_some() {
            return self.stale_if_error(stored, req, now);
        }
        if stored.must_revalidate() || stored.res_cc.no_cache() || req_cc.no_cache() {
            return false;
        }
        let limit = self.config.stale_if_unreachable;
        !limit.is_zero() && self.staleness(stored, now) <= limit
    }

    /// Merges a validation response into a stored entry (RFC 9111 §4.3.4).
    ///
    /// `stored_head` is the stored response's head. The crate selects (does the 304 match
    /// this entry?); the merge is done here, as RFC 9111 §3.2 says: every field of the 304
    /// is added, replacing all values already present (the crate keeps only fields the
    /// stored response had, and one value of each), except the framing fields. The policy
    /// is then judged again on the merged head, so a lifetime the 304 adds is used.
    pub fn revalidated(
        &self,
        stored: &Stored,
        stored_head: &response::Parts,
        sent: &request::Parts,
        res: &response::Parts,
        now: SystemTime,
    ) -> Revalidated {
        let now = crate::time::clamp(now);
        if res.status != StatusCode::NOT_MODIFIED {
            return Revalidated::Modified;
        }
        // A 304 without validators answers the conditional we sent for exactly this entry
        // (many servers send bare 304s); give it the entry's validators so it matches.
        // The 304's fields as they are merged into the stored head (Cache-Control as sent),
        // and the canonical form the crate judges.
        let mut merged_in = crate::heads::clone_response(res);
        self.prepare_response(&mut merged_in);
        if !merged_in.headers.contains_key(header::ETAG)
            && !merged_in.headers.contains_key(header::LAST_MODIFIED)
        {
            for name in [header::ETAG, header::LAST_MODIFIED] {
                if let Some(v) = stored.validator(&name) {
                    merged_in.headers.insert(name, v);
                }
            }
        }
        let res = self.canonical_response(&merged_in);
        match stored.policy.after_response(sent, &res, now) {
            AfterResponse::NotModified(policy, mut head) => {
                if let Some((stored, head)) = self.merge_304(stored_head, &merged_in, sent, now) {
                    return Revalidated::NotModified {
                        stored: Box::new(stored),
                        head,
                    };
                }
                // The merged head is not storable (the 304 added `no-store`, `private` ...):
                // the crate's narrower merge, which keeps the stored response's fields only.
                strip_hop_by_hop(&mut head.headers);
                // The crate rewrites Date and Age for a response it would send; we keep the
                // stored copy's fields and compute Age when serving (and its status: the
                // crate may have judged it as a 200).
                head.headers.remove(header::AGE);
                head.status = stored_head.status;
                let ttl = bounded_ttl(&policy, now);
                let res_cc = Directives::parse(&head.headers);
                let max_age = ttl.saturating_add(policy.age(now));
                let stored = Stored {
                    footprint: stored.footprint,
                    policy,
                    vary: stored.vary.clone(),
                    res_cc,
                    max_age,
                    fresh_until: crate::time::after(now, ttl),
                    has_validator: stored.has_validator,
                    validators: {
                        let v = validators_of(&head.headers);
                        if v.is_empty() {
                            stored.validators.clone()
                        } else {
                            v
                        }
                    },
                    shared: stored.shared,
                    set_cookie: stored.set_cookie,
                    immutable: stored.immutable,
                    response_time: now,
                };
                Revalidated::NotModified {
                    stored: Box::new(stored),
                    head,
                }
            }
            AfterResponse::Modified(..) => Revalidated::Modified,
        }
    }

    /// The stored head updated by a matching 304 (RFC 9111 §3.2), and the entry judged anew
    /// on it; `None` when the merged response is not storable.
    fn merge_304(
        &self,
        stored_head: &response::Parts,
        res: &response::Parts,
        sent: &request::Parts,
        now: SystemTime,
    ) -> Option<(Stored, response::Parts)> {
        let mut head = crate::heads::clone_response(stored_head);
        // The stored Age described the stored message; the 304's (if any) describes this one.
        head.headers.remove(header::AGE);
        let mut names: Vec<&HeaderName> = res.headers.keys().collect();
        names.retain(|n| !NOT_UPDATED_BY_304.contains(n));
        for name in names {
            head.headers.remove(name);
            for v in res.headers.get_all(name) {
                head.headers.append(name.clone(), v.clone());
            }
        }
        strip_hop_by_hop(&mut head.headers);
        let stored = self.storable(&fill_request(sent), &head, now).ok()?;
        head.headers.remove(header::AGE);
        Some((stored, head))
    }

    /// The request as the crate should judge it: method GET (HEAD is answered from a stored
    /// GET), no client preconditions (they are the cache's to answer, and must not leak into
    /// the revalidation request), and no `max-stale` where serving stale would leak (#56).
    fn reuse_view(&self, stored: &Stored, req: &request::Parts) -> request::Parts {
        let mut view = fill_request(req);
        if view.headers.contains_key(header::CACHE_CONTROL) {
            let drop_max_stale = stored.forbids_client_max_stale();
            let cc: Vec<String> = view
                .headers
                .get_all(header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(directives::directives)
                .filter(|d| !(drop_max_stale && d.name == "max-stale"))
                .filter_map(|d| canonical(&d))
                .collect();
            let cc = first_of_each(cc);
            view.headers.remove(header::CACHE_CONTROL);
            if !cc.is_empty() {
                if let Ok(v) = cc.join(", ").parse() {
                    view.headers.insert(header::CACHE_CONTROL, v);
                }
            }
        }
        view
    }

    /// How long past its freshness lifetime an entry is (zero while fresh).
    pub fn staleness(&self, stored: &Stored, now: SystemTime) -> Duration {
        stored.policy.age(now).saturating_sub(stored.max_age)
    }
}

impl Stored {
    /// When the response (or its last refresh) arrived.
    pub fn response_time(&self) -> SystemTime {
        self.response_time
    }

    /// The request as this entry keeps it (see [`crate::storage::entry::Meta::request`]):
    /// what [`Policy::storable`] needs to rebuild the entry from a persistent tier.
    pub fn kept_request(&self, sent: &request::Parts) -> request::Parts {
        policy_request(sent, &self.vary)
    }

    /// Heap bytes held by this value (not counting the body and the served head).
    pub fn footprint(&self) -> u64 {
        self.footprint
    }

    /// A validator of the stored response (ETag or Last-Modified).
    fn validator(&self, name: &header::HeaderName) -> Option<http::HeaderValue> {
        self.validators
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// Freshness left. Age grows one second per second, so this is the instant computed
    /// when the response was stored (or refreshed) minus `now`.
    pub fn ttl(&self, now: SystemTime) -> Duration {
        self.fresh_until
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    }

    /// The current Age (RFC 9111 §4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.policy.age(now)
    }

    /// Whether a stale copy can be revalidated (`ETag` or `Last-Modified`) rather than refetched.
    pub fn has_validator(&self) -> bool {
        self.has_validator
    }

    /// The variant selector this entry was stored under.
    pub fn vary(&self) -> &VaryKey {
        &self.vary
    }

    /// Stale means validation before use, and for how long past freshness an entry is still
    /// worth keeping: validators or stale-* windows make a stale entry useful.
    pub fn keep_until(&self, now: SystemTime) -> Option<SystemTime> {
        if self.has_validator {
            return None;
        }
        let extra = self
            .res_cc
            .stale_if_error()
            .max(self.res_cc.stale_while_revalidate())
            .unwrap_or(Duration::ZERO);
        Some(crate::time::after(now, self.ttl(now).saturating_add(extra)))
    }

    fn must_revalidate(&self) -> bool {
        self.res_cc.must_revalidate()
            || (self.shared && (self.res_cc.proxy_revalidate() || self.res_cc.has_s_maxage()))
    }

    fn forbids_client_max_stale(&self) -> bool {
        self.must_revalidate()
            || self.res_cc.no_cache()
            || (self.shared && self.set_cookie && !self.res_cc.public())
    }
}

/// Bytes a `Stored` holds whatever its heads: the crate's policy value, the Vary key,
/// directive and validator vectors, and their allocations' overhead.
const STORED_FIXED: u64 = 768;

/// The request as the crate keeps it inside a stored policy: only the fields it reads later
/// (`Cache-Control`, `Pragma`, `Authorization`, `Host` and the fields the response varies
/// on), in storage of their own. The whole request would pin the client's read buffer and
/// its cookies in every entry.
fn policy_request(req: &request::Parts, vary: &VaryKey) -> request::Parts {
    let mut out = crate::heads::clone_request(req);
    let mut h = HeaderMap::new();
    let keep = [
        header::CACHE_CONTROL,
        header::PRAGMA,
        header::AUTHORIZATION,
        header::HOST,
    ];
    let varied: &[(HeaderName, Option<String>)] = match vary {
        VaryKey::Fields(f) => f,
        _ => &[],
    };
    for (name, value) in &req.headers {
        if keep.contains(name) || varied.iter().any(|(n, _)| n == name) {
            h.append(name.clone(), value.clone());
        }
    }
    out.headers = crate::heads::owned_fields(&h);
    // Parsing copies: a parser's URI, like its header values, may be a slice of its buffer.
    if let Ok(uri) = req.uri.to_string().parse() {
        out.uri = uri;
    }
    out
}

/// Length of the Cache-Control field lines (kept parsed twice: by the crate and here).
fn cc_len(h: &HeaderMap) -> u64 {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .map(|v| v.len() as u64 + 64)
        .sum()
}

/// The crate's freshness left, at most 2^31 s (RFC 9111 §1.2.2). Delta-seconds are clamped
/// before the crate sees them, but its comma split is not quote-aware: a value such as
/// `s-maxage=", max-age=18446744073709551615` still reaches it whole. Bounding what it
/// returns keeps every decision consistent with the saturated instants stored.
fn bounded_ttl(policy: &CachePolicy, now: SystemTime) -> Duration {
    policy
        .time_to_live(now)
        .min(Duration::from_secs(crate::time::DELTA_SECONDS_MAX))
}

/// Directives whose argument is delta-seconds (RFC 9111 §5.2, RFC 5861).
fn is_delta_seconds_directive(name: &str) -> bool {
    matches!(
        name,
        "max-age"
            | "s-maxage"
            | "stale-while-revalidate"
            | "stale-if-error"
            | "min-fresh"
            | "max-stale"
    )
}

/// `Age`: the first value of the first line, digits only, capped at 2^31 (RFC 9111 §1.2.2).
fn normalize_age(h: &mut HeaderMap) {
    let Some(first) = h.get(header::AGE) else {
        return;
    };
    let first = first.to_str().unwrap_or("").split([',', ';']).next();
    match first.and_then(crate::time::delta_seconds) {
        Some(n) => h.insert(header::AGE, n.into()),
        None => h.remove(header::AGE),
    };
}

/// Splits a Cache-Control value at commas outside quoted strings.
/// A directive as `http-cache-semantics` can read it. Its parser splits at every comma and
/// matches names case-sensitively, so: names are lower-cased; a flag is written bare (its
/// argument means nothing to a cache, and could hold commas); delta-seconds are written as
/// the clamped number, or as `""` when invalid (the crate reads 0: stale, as RFC 9111
/// §4.2.1 allows); an extension whose quoted value holds a comma is dropped (its pieces
/// would read as directives of their own; caches ignore unknown extensions, §5.2.3).
fn canonical(d: &directives::Directive<'_>) -> Option<String> {
    let Some(value) = &d.value else {
        return is_token(&d.name).then(|| d.name.clone());
    };
    if is_delta_seconds_directive(&d.name) {
        return match crate::time::delta_seconds(value) {
            Some(n) => Some(format!("{}={n}", d.name)),
            // The crate reads an invalid `max-stale` as "any staleness": drop it (ours reads
            // it as absent).
            None if d.name == "max-stale" => None,
            None => Some(format!("{}=\"\"", d.name)),
        };
    }
    if directives::is_flag(&d.name) {
        return Some(d.name.clone());
    }
    let written = d.raw.split_once('=').map_or("", |(_, v)| v.trim());
    let inner = written
        .strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or(written);
    let plain = |s: &str| !s.contains(['"', '\\', ',']);
    (is_token(&d.name) && plain(inner)).then(|| format!("{}={written}", d.name))
}

/// The first of each directive: our parser keeps a directive's first value (RFC 9111
/// §4.2.1 allows it), while the crate reads conflicting duplicates as invalid freshness and
/// adds `must-revalidate` that the core would not know of. One copy each, they agree.
fn first_of_each(members: Vec<String>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    members
        .into_iter()
        .filter(|m| {
            let name = m.split('=').next().unwrap_or("").to_owned();
            if seen.contains(&name) {
                return false;
            }
            seen.push(name);
            true
        })
        .collect()
}

/// RFC 9110 §5.6.2 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The field names of a `no-cache="..."` or `private="..."` argument, lower-cased.
fn field_names(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
}

fn validators_of(h: &HeaderMap) -> Vec<(HeaderName, http::HeaderValue)> {
    [header::ETAG, header::LAST_MODIFIED]
        .into_iter()
        .filter_map(|n| h.get(&n).cloned().map(|v| (n, v)))
        .collect()
}

fn is_understood_status(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// RFC 9110 §5.6.7: the date fields the policy reads, in the one form its crate parses.
/// The three formats a recipient must accept (IMF-fixdate, RFC 850, asctime) are rewritten
/// as IMF-fixdate; anything else (a wrong day name, extra spaces, a zone other than GMT) is
/// invalid: an `Expires` then means "already expired" (RFC 9111 §5.3), an invalid `Date` or
/// `Last-Modified` is ignored. (The crate reads RFC 2822 leniently: `+0000` and any day name
/// pass, RFC 850 and asctime do not.)
fn normalize_dates(h: &mut http::HeaderMap) {
    for name in [header::EXPIRES, header::DATE, header::LAST_MODIFIED] {
        let Some(v) = h.get(&name) else { continue };
        let parsed = v
            .to_str()
            .ok()
            .and_then(|v| httpdate::parse_http_date(v).ok());
        match (parsed, &name) {
            (Some(t), _) => {
                let imf = httpdate::fmt_http_date(t);
                if v.as_bytes() != imf.as_bytes() {
                    h.insert(name, imf.parse().expect("an HTTP-date is a valid field"));
                }
            }
            (None, n) if *n == header::EXPIRES => {
                h.insert(
                    name,
                    http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
                );
            }
            (None, _) => {
                h.remove(name);
            }
        }
    }
}

/// RFC 9213 §2.1: a targeted field is a Structured Fields Dictionary; one that does not
/// parse is ignored whole. Its members map to Cache-Control directives: `?1` a flag, `?0`
/// absent, a non-negative integer a delta-seconds, a string or token a quoted argument;
/// parameters and other types are ignored (the directive too).
fn targeted_directives(value: &str) -> Option<String> {
    use sfv::{BareItem, ListEntry, Parser};
    let dict: sfv::Dictionary = Parser::new(value).parse().ok()?;
    let mut out = Vec::new();
    for (key, entry) in &dict {
        let ListEntry::Item(item) = entry else {
            continue;
        };
        let name = key.as_str();
        // Delta-seconds are integers here, never strings (RFC 9213 §2.1).
        let seconds = matches!(
            name,
            "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error"
        );
        match &item.bare_item {
            BareItem::Boolean(true) if !seconds => out.push(name.to_owned()),
            BareItem::Integer(n) if seconds && i64::from(*n) >= 0 => {
                out.push(format!("{name}={}", i64::from(*n)))
            }
            BareItem::String(s) if !seconds => out.push(format!("{name}=\"{}\"", s.as_str())),
            BareItem::Token(t) if !seconds => out.push(format!("{name}={}", t.as_str())),
            _ => {}
        }
    }
    Some(out.join(", "))
}

/// Drops one directive from a canonical `Cache-Control` (no quoted commas left in it).
fn without_directive(h: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.split('=').next() != Some(name))
        .map(str::to_owned)
        .collect();
    h.remove(header::CACHE_CONTROL);
    if let Ok(v) = kept.join(", ").parse() {
        if !kept.is_empty() {
            h.insert(header::CACHE_CONTROL, v);
        }
    }
}

/// A `Content-Length` that is not one valid number: it cannot frame a body (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidLength;

/// The declared body length (`None` when absent). Every field line and list member must be
/// the same valid number (RFC 9110 §8.6: `10, 10` is 10); anything else is invalid.
pub fn declared_length(h: &HeaderMap) -> Result<Option<u64>, InvalidLength> {
    let mut seen: Option<u64> = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        // The common case (every hit logs its length): one plain number.
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 19 && b.iter().all(u8::is_ascii_digit) {
            let n = b.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if seen.is_some_and(|s| s != n) {
                return Err(InvalidLength);
            }
            seen = Some(n);
            continue;
        }
        let text = v.to_str().map_err(|_| InvalidLength)?;
        for part in text.split(',').map(str::trim) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidLength);
            }
            let n = part.parse::<u64>().map_err(|_| InvalidLength)?;
            if seen.is_some_and(|s| s != n) {
                return Err(InvalidLength);
            }
            seen = Some(n);
        }
    }
    Ok(seen)
}

/// The declared body length, if any and valid.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    declared_length(h).ok().flatten()
}

#[cfg(test)]
mod tests;
