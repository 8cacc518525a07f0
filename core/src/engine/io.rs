//! The engine's inputs and outputs: plain values, nothing else crosses the boundary.

use crate::cache_status::{CacheStatus, Outcome};
use crate::key::CacheKey;
use crate::storage::{EntryId, StorageError, StoredBody, Tier};
use bytes::Bytes;
use http::{request, response};

/// One client request in flight at the adapter (a connection's current request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// One upstream request the engine asked the adapter to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FetchId(pub u64);

/// Whether the ring decides where a request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Forward to the owner unless this node is the owner.
    ByRing,
    /// Serve here: the request came from a peer (one hop at most), or every better peer failed.
    Local,
}

/// Why an upstream fetch failed.
///
/// `#[non_exhaustive]`: adapters may learn to tell more failures apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Could not connect (reset, closed, no route) for a reason not told apart below.
    Connect,
    /// The origin's name does not resolve.
    DnsNotFound,
    /// The origin refused the connection (nothing listens on the port).
    ConnectionRefused,
    /// The origin's TLS certificate chains to no trusted CA (a private CA missing from
    /// the trust store, or a TLS-inspecting gateway).
    TlsUntrustedIssuer,
    /// The certificate is not valid for the origin's name.
    TlsNameMismatch,
    /// The certificate has expired or is not valid yet.
    TlsExpired,
    /// Any other TLS failure (a handshake alert, a bad certificate, no common protocol).
    Tls,
    /// No head, or no body progress, within the adapter's timeouts.
    Timeout,
    /// The body stopped before its end (reset, or shorter than Content-Length).
    Truncated,
    /// The upstream sent something that is not HTTP.
    Protocol,
    /// The adapter's destination guard refused the address the origin resolves to.
    DestinationNotAllowed,
}

impl UpstreamError {
    /// The `detail` token of the error response's Cache-Status, and a log label.
    pub fn as_str(&self) -> &'static str {
        match self {
            UpstreamError::Connect => "origin-unreachable",
            UpstreamError::DnsNotFound => "dns-not-found",
            UpstreamError::ConnectionRefused => "connection-refused",
            UpstreamError::TlsUntrustedIssuer => "tls-untrusted-issuer",
            UpstreamError::TlsNameMismatch => "tls-name-mismatch",
            UpstreamError::TlsExpired => "tls-certificate-expired",
            UpstreamError::Tls => "tls-failed",
            UpstreamError::Timeout => "origin-timeout",
            UpstreamError::Truncated => "origin-truncated",
            UpstreamError::Protocol => "origin-protocol-error",
            UpstreamError::DestinationNotAllowed => "destination-not-allowed",
        }
    }

    /// The status a client gets for it: 504 for a timeout, 403 for a refused destination,
    /// 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::DestinationNotAllowed => http::StatusCode::FORBIDDEN,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// A sentence for the error response's body and the log.
    pub fn explain(&self) -> &'static str {
        match self {
            UpstreamError::Connect => "could not connect to the origin",
            UpstreamError::DnsNotFound => "the origin's host name does not resolve",
            UpstreamError::ConnectionRefused => "the origin refused the connection",
            UpstreamError::TlsUntrustedIssuer => {
                "the origin's TLS certificate is not issued by a trusted CA (add it with --ca-file)"
            }
            UpstreamError::TlsNameMismatch => {
                "the origin's TLS certificate is not valid for its host name"
            }
            UpstreamError::TlsExpired => "the origin's TLS certificate has expired",
            UpstreamError::Tls => "TLS with the origin failed",
            UpstreamError::Timeout => "the origin did not answer in time",
            UpstreamError::Truncated => "the origin's response ended early",
            UpstreamError::Protocol => "the origin did not answer with valid HTTP",
            UpstreamError::DestinationNotAllowed => {
                "the origin's address is not an allowed destination (loopback, link-local, \
                 unique-local, multicast and broadcast are refused; see --allow-destination)"
            }
        }
    }

    /// Every value, for tests and parsers.
    pub const ALL: [UpstreamError; 11] = [
        UpstreamError::Connect,
        UpstreamError::DnsNotFound,
        UpstreamError::ConnectionRefused,
        UpstreamError::TlsUntrustedIssuer,
        UpstreamError::TlsNameMismatch,
        UpstreamError::TlsExpired,
        UpstreamError::Tls,
        UpstreamError::Timeout,
        UpstreamError::Truncated,
        UpstreamError::Protocol,
        UpstreamError::DestinationNotAllowed,
    ];
}

/// Everything that happens to the engine: one value per [`Engine::handle_input`] call.
///
/// `#[non_exhaustive]`: new kinds of events (new tiers' answers, new upstream signals)
/// are added without breaking adapters; constructing the existing variants is unaffected.
///
/// [`Engine::handle_input`]: crate::Engine::handle_input
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// A client request head (GET/HEAD served here; others pass through). The URI must be
    /// absolute: the adapter resolves mirror and `/proxy?q=` doors first.
    Request {
        /// Names the request in every output about it.
        client: ClientId,
        /// The request head; its body, if any, stays with the adapter (for a pass).
        head: request::Parts,
        /// Whether the ring may send it to another peer.
        route: Route,
    },
    /// The head of an upstream response to `Output::Fetch`.
    UpstreamHead {
        /// The fetch this answers.
        fetch: FetchId,
        /// Status and fields as the upstream sent them.
        head: response::Parts,
    },
    /// An interim (1xx) response upstream sent before the head of its answer to
    /// `Output::Fetch`: relayed to the clients waiting on it, never stored.
    UpstreamInterim {
        /// The fetch it belongs to.
        fetch: FetchId,
        /// Its status and fields.
        head: response::Parts,
    },
    /// A piece of its body.
    UpstreamBody {
        /// The fetch the bytes belong to.
        fetch: FetchId,
        /// The next bytes, in order.
        chunk: Bytes,
    },
    /// The body ended normally.
    UpstreamEnd {
        /// The fetch that completed.
        fetch: FetchId,
    },
    /// The fetch failed (before or after the head).
    UpstreamError {
        /// The fetch that failed; it gets no further inputs.
        fetch: FetchId,
        /// Decides what waiting clients get (504 for a timeout, 403 for a refused
        /// destination, 502 otherwise).
        error: UpstreamError,
    },
    /// The client went away; it gets no more outputs.
    ClientGone {
        /// The request to forget (its fetch is cancelled when nobody else waits on it).
        client: ClientId,
    },
    /// The head of the upstream answer to an `Output::Pass` (unsafe methods invalidate on
    /// success).
    PassResponse {
        /// The client of the `Output::Pass`.
        client: ClientId,
        /// Only its status and `Location` / `Content-Location` matter (RFC 9111 §4.4).
        head: response::Parts,
    },
    /// Cluster membership changed.
    PeersChanged {
        /// The whole new peer list (not a change to the old one).
        peers: Vec<String>,
    },
    /// The disk tier holds this entry (found at start-up, or, in Spin, listed for the
    /// request's key): the engine indexes it and loads it when a request needs it.
    Restored {
        /// The record's id in the tier.
        entry: EntryId,
        /// The key it answers for: the index is by key, the record is read only when needed.
        key: CacheKey,
        /// Bytes the record takes in the tier.
        bytes: u64,
    },
    /// The answer to `Output::Load`: the record's metadata (checked against its checksum,
    /// still encoded) and, when asked for, its checked body.
    Loaded {
        /// The entry `Output::Load` asked for.
        entry: EntryId,
        /// The encoded [`Meta`](crate::storage::entry::Meta); the engine decodes it.
        meta: Bytes,
        /// The body, when the load asked for it.
        body: Option<Bytes>,
    },
    /// `Output::Load` found nothing usable (missing, unreadable or corrupt): a miss. Also
    /// sent, unasked, for an entry whose body could not be read while serving it: the
    /// engine forgets it.
    LoadFailed {
        /// The entry to forget.
        entry: EntryId,
    },
    /// A tier could not carry out `Output::Write`.
    WriteFailed {
        /// The entry that was not written: the engine drops it from that tier.
        entry: EntryId,
        /// The tier that refused it (a disk failure rests the disk tier for a while).
        tier: Tier,
        /// Why it was refused.
        error: StorageError,
    },
    /// The time handed out by `poll_timeout` has come.
    Timeout,
}

/// How the body of a `Respond` arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// No body (HEAD, 304, 416 ...).
    Empty,
    /// The whole body, made here.
    Full(Bytes),
    /// The body is in a tier: read these pieces of the stored entry. A memory read
    /// resolves at once; a disk read streams (and, should it fail, aborts the response).
    Stored(StoredBody),
    /// `Body` outputs follow for this client, then `End` or `Abort`.
    Stream,
}

/// Everything the engine decides: drained with [`Engine::poll_output`] after each input.
///
/// `#[non_exhaustive]`: the engine will ask for more kinds of work. An adapter logs and
/// ignores an output it does not know (a test driver fails on it).
///
/// [`Engine::poll_output`]: crate::Engine::poll_output
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Send this head (Cache-Status and Age already set) to the client.
    Respond {
        /// The request this answers.
        client: ClientId,
        /// Status and fields to send as they are.
        head: response::Parts,
        /// Where the body comes from.
        body: ResponseBody,
        /// How this request counts (hit, stale, miss, error ...), derived from the
        /// Cache-Status in `head` and its status: count this, never the header text.
        outcome: Outcome,
        /// The request waited on another request's fetch (`collapsed` in Cache-Status).
        collapsed: bool,
    },
    /// Send this interim (1xx) head to the client ahead of its response (RFC 9110 §15.2).
    Interim {
        /// A client still waiting for its response head.
        client: ClientId,
        /// Status and fields, hop-by-hop fields removed.
        head: response::Parts,
    },
    /// Next piece of a streamed body.
    Body {
        /// A client whose response has `ResponseBody::Stream`.
        client: ClientId,
        /// The next bytes, in order.
        chunk: Bytes,
    },
    /// Next piece of a streamed body, read from a tier: send these pieces of the stored
    /// entry next, in order with the `Body` outputs before and after it (a disk read must
    /// finish before later chunks go out). A body the tier no longer holds aborts the
    /// response. Used when a large object's response is assembled from its segments.
    BodyStored {
        /// A client whose response has `ResponseBody::Stream`.
        client: ClientId,
        /// Which entry, which tier, which bytes.
        body: StoredBody,
    },
    /// The streamed body is complete.
    End {
        /// The client whose response is now whole.
        client: ClientId,
    },
    /// The streamed body cannot be completed: close the connection so the client sees a
    /// truncated response, never a short one that looks whole.
    Abort {
        /// The client whose connection to close.
        client: ClientId,
    },
    /// Another peer owns the key: forward the request (`head`, normalized) to `peers[0]`,
    /// falling back in order; when all fail, hand it back with `Route::Local`.
    Forward {
        /// The request to forward.
        client: ClientId,
        /// The key the peers were chosen for.
        key: CacheKey,
        /// Peer ids, owner first, then the fail-over order.
        peers: Vec<String>,
        /// The request to send, URI normalized.
        head: request::Parts,
    },
    /// Not for the cache: send the request (and its body) upstream unchanged and relay the
    /// answer, adding `status` as Cache-Status. Unsafe methods were already invalidated.
    /// `head` is the request as given (URI normalized). The adapter sets
    /// `status.fwd_status` to the upstream's status and counts `status.outcome(...)` of
    /// the status it relays (an [`Outcome::Pass`] unless the proxy made an error).
    Pass {
        /// The request to relay.
        client: ClientId,
        /// The Cache-Status to add to the relayed answer.
        status: CacheStatus,
        /// The request to send upstream.
        head: request::Parts,
    },
    /// Make this upstream request and report its head, body, end or error.
    Fetch {
        /// Names this fetch in the inputs that answer it.
        fetch: FetchId,
        /// The request to send as it is (the engine added validators or `Range` itself).
        request: request::Parts,
    },
    /// Like `Fetch`, but ask the peers, in order, instead of the origin: the request goes to
    /// `peers[0]` marked as peer traffic (so it is served there, never forwarded again), and
    /// to the next when one fails before its head. Its answer is reported with the same
    /// inputs as an origin fetch; when every peer failed, report `UpstreamError::Connect`
    /// (the engine then serves its clients itself). Emitted only when the engine has a hot
    /// cache of remote keys (`Config::hot_memory`).
    FetchFromPeers {
        /// Names this fetch in the inputs that answer it.
        fetch: FetchId,
        /// Peer ids to try, best first.
        peers: Vec<String>,
        /// The request to send (URI absolute and normalized).
        request: request::Parts,
    },
    /// Have each of these peers drop its copies of `key` (hot copies, segments): send it
    /// `PURGE <key>` as peer traffic with `larder-purge-scope: local` (so it does not fan out
    /// again). Fire and forget: a peer that misses it keeps a copy until it is stale.
    InvalidatePeers {
        /// The URL to drop.
        key: CacheKey,
        /// Peer ids to tell.
        peers: Vec<String>,
        /// Also every URL under it, or every response with these tags: send
        /// [`Selector::fields`](crate::purge::Selector::fields) with the PURGE.
        selector: Option<crate::purge::Selector>,
    },
    /// Nobody needs this fetch any more: stop it and send no further inputs for it.
    CancelFetch {
        /// The fetch to stop.
        fetch: FetchId,
    },
    /// Put this entry in `tier`. `body` is the whole body; `meta` is the encoded
    /// [`crate::storage::entry::Meta`] for the disk tier (empty for memory, whose entries
    /// the engine describes itself). Report failure with `Input::WriteFailed`.
    Write {
        /// The id to store it under (never reused, so reads by id cannot mix responses).
        entry: EntryId,
        /// The tier to write to.
        tier: Tier,
        /// The key it answers for, for tiers that list entries by key (Spin).
        key: CacheKey,
        /// The encoded metadata (disk tier only).
        meta: Bytes,
        /// The whole body.
        body: Bytes,
    },
    /// Replace the metadata of an entry `tier` holds, keeping its body: a 304 refreshed it
    /// (RFC 9111 §4.3.4). Without this a restart would bring back the entry as it was before
    /// the revalidation. A tier that cannot do it may leave the old record: it is older, not
    /// wrong (it revalidates again). Nothing is reported back.
    UpdateMeta {
        /// The entry refreshed.
        entry: EntryId,
        /// The tier holding it.
        tier: Tier,
        /// The key it answers for, for tiers that list entries by key (Spin).
        key: CacheKey,
        /// The new encoded metadata.
        meta: Bytes,
    },
    /// Drop this entry from `tier` (evicted, replaced, invalidated or found corrupt).
    Delete {
        /// The entry to drop.
        entry: EntryId,
        /// The tier to drop it from (it may stay in the other).
        tier: Tier,
        /// The key it answered for, for tiers that list entries by key (Spin).
        key: CacheKey,
    },
    /// Read this entry from the disk tier and answer with `Input::Loaded` (with the body
    /// when `body`, after checking it) or `Input::LoadFailed`.
    Load {
        /// The disk entry to read.
        entry: EntryId,
        /// Read (and check) the body too: false when it is too large for the memory tier
        /// (it is then streamed from disk when served).
        body: bool,
    },
}
