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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Could not connect, TLS failed, or the connection was refused.
    Connect,
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
    pub fn as_str(&self) -> &'static str {
        match self {
            UpstreamError::Connect => "origin-unreachable",
            UpstreamError::Timeout => "origin-timeout",
            UpstreamError::Truncated => "origin-truncated",
            UpstreamError::Protocol => "origin-protocol-error",
            UpstreamError::DestinationNotAllowed => "destination-not-allowed",
        }
    }
}

#[derive(Debug)]
pub enum Input {
    /// A client request head (GET/HEAD served here; others pass through). The URI must be
    /// absolute: the adapter resolves mirror and `/proxy?q=` doors first.
    Request {
        client: ClientId,
        head: request::Parts,
        route: Route,
    },
    /// The head of an upstream response to `Output::Fetch`.
    UpstreamHead {
        fetch: FetchId,
        head: response::Parts,
    },
    /// A piece of its body.
    UpstreamBody { fetch: FetchId, chunk: Bytes },
    /// The body ended normally.
    UpstreamEnd { fetch: FetchId },
    /// The fetch failed (before or after the head).
    UpstreamError {
        fetch: FetchId,
        error: UpstreamError,
    },
    /// The client went away; it gets no more outputs.
    ClientGone { client: ClientId },
    /// The head of the upstream answer to an `Output::Pass` (unsafe methods invalidate on
    /// success).
    PassResponse {
        client: ClientId,
        head: response::Parts,
    },
    /// Cluster membership changed.
    PeersChanged { peers: Vec<String> },
    /// The disk tier holds this entry (found at start-up, or, in Spin, listed for the
    /// request's key): the engine indexes it and loads it when a request needs it.
    Restored {
        entry: EntryId,
        key: CacheKey,
        /// Bytes the record takes in the tier.
        bytes: u64,
    },
    /// The answer to `Output::Load`: the record's metadata (checked against its checksum,
    /// still encoded) and, when asked for, its checked body.
    Loaded {
        entry: EntryId,
        meta: Bytes,
        body: Option<Bytes>,
    },
    /// `Output::Load` found nothing usable (missing, unreadable or corrupt): a miss. Also
    /// sent, unasked, for an entry whose body could not be read while serving it: the
    /// engine forgets it.
    LoadFailed { entry: EntryId },
    /// A tier could not carry out `Output::Write`.
    WriteFailed {
        entry: EntryId,
        tier: Tier,
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

#[derive(Debug)]
pub enum Output {
    /// Send this head (Cache-Status and Age already set) to the client.
    Respond {
        client: ClientId,
        head: response::Parts,
        body: ResponseBody,
        /// How this request counts (hit, stale, miss, error ...), derived from the
        /// Cache-Status in `head` and its status: count this, never the header text.
        outcome: Outcome,
        /// The request waited on another request's fetch (`collapsed` in Cache-Status).
        collapsed: bool,
    },
    /// Next piece of a streamed body.
    Body { client: ClientId, chunk: Bytes },
    /// The streamed body is complete.
    End { client: ClientId },
    /// The streamed body cannot be completed: close the connection so the client sees a
    /// truncated response, never a short one that looks whole.
    Abort { client: ClientId },
    /// Another peer owns the key: forward the request (`head`, normalized) to `peers[0]`,
    /// falling back in order; when all fail, hand it back with `Route::Local`.
    Forward {
        client: ClientId,
        key: CacheKey,
        peers: Vec<String>,
        head: request::Parts,
    },
    /// Not for the cache: send the request (and its body) upstream unchanged and relay the
    /// answer, adding `status` as Cache-Status. Unsafe methods were already invalidated.
    /// `head` is the request as given (URI normalized). The adapter sets
    /// `status.fwd_status` to the upstream's status and counts `status.outcome(...)` of
    /// the status it relays (an [`Outcome::Pass`] unless the proxy made an error).
    Pass {
        client: ClientId,
        status: CacheStatus,
        head: request::Parts,
    },
    /// Make this upstream request and report its head, body, end or error.
    Fetch {
        fetch: FetchId,
        request: request::Parts,
    },
    /// Nobody needs this fetch any more: stop it and send no further inputs for it.
    CancelFetch { fetch: FetchId },
    /// Put this entry in `tier`. `body` is the whole body; `meta` is the encoded
    /// [`crate::storage::entry::Meta`] for the disk tier (empty for memory, whose entries
    /// the engine describes itself). Report failure with `Input::WriteFailed`.
    Write {
        entry: EntryId,
        tier: Tier,
        key: CacheKey,
        meta: Bytes,
        body: Bytes,
    },
    /// Replace the metadata of an entry `tier` holds, keeping its body: a 304 refreshed it
    /// (RFC 9111 §4.3.4). Without this a restart would bring back the entry as it was before
    /// the revalidation. A tier that cannot do it may leave the old record: it is older, not
    /// wrong (it revalidates again). Nothing is reported back.
    UpdateMeta {
        entry: EntryId,
        tier: Tier,
        key: CacheKey,
        meta: Bytes,
    },
    /// Drop this entry from `tier` (evicted, replaced, invalidated or found corrupt).
    Delete {
        entry: EntryId,
        tier: Tier,
        key: CacheKey,
    },
    /// Read this entry from the disk tier and answer with `Input::Loaded` (with the body
    /// when `body`, after checking it) or `Input::LoadFailed`.
    Load { entry: EntryId, body: bool },
}
