//! The body every response to a client uses: a whole cached body, a stream fed by the
//! engine, or a relayed upstream body. It writes the access-log line and tells the engine
//! when the client goes away.

use crate::driver::{ClientEvent, Driver, Events};
use crate::upstream::{Body, BoxError};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use larder_core::ClientId;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

enum Kind {
    Full(Option<Bytes>),
    Stream(Events),
    /// An upstream body, with the longest silence allowed between two frames (the timer is
    /// armed only while the body keeps the client waiting: most frames are ready at once).
    Relay(Body, Duration, Option<Pin<Box<tokio::time::Sleep>>>, bool),
}

/// What the access log says about one request, written when its body is dropped.
pub struct LogLine {
    pub format: crate::access::Format,
    pub client: std::net::SocketAddr,
    pub method: http::Method,
    /// The request's target, after `base` (a tunnel's origin) when it names none itself.
    pub url: http::Uri,
    pub base: Option<Arc<str>>,
    pub version: http::Version,
    pub status: u16,
    /// Header values share the request's and response's bytes: nothing is copied until
    /// the line is written.
    pub cache: Option<http::HeaderValue>,
    pub start: Instant,
    /// When the request arrived.
    pub time: std::time::SystemTime,
    pub referer: Option<http::HeaderValue>,
    pub user_agent: Option<http::HeaderValue>,
    /// No body to send (HEAD, 204, 304): complete with its head.
    pub bodiless: bool,
    /// The declared length: hyper stops asking for frames once it is sent.
    pub length: Option<u64>,
}

/// Largest frame handed to the connection at once: hyper asks for the next one only as
/// the client takes the bytes, so the log's duration, bytes sent and completion are the
/// client's, not how fast a whole cached body was handed over.
const FRAME_MAX: usize = 64 * 1024;

pub struct ClientBody {
    kind: Kind,
    /// Observes the response's duration when it ends.
    timing: Option<(Arc<crate::metrics::Metrics>, larder_core::Outcome, Instant)>,
    guard: Option<(Arc<Driver>, ClientId)>,
    /// Boxed: the body is moved a few times on its way to the connection, the line is large.
    log: Option<Box<LogLine>>,
    bytes: u64,
    done: bool,
}

impl ClientBody {
    pub fn full(b: Bytes) -> Self {
        Self::of(Kind::Full(Some(b)))
    }
    pub fn empty() -> Self {
        Self::of(Kind::Full(None))
    }
    pub fn stream(rx: Events) -> Self {
        Self::of(Kind::Stream(rx))
    }
    /// Relays an upstream body; silence longer than `idle` between frames aborts it, so a
    /// peer or origin that stalls mid-body cannot hold the client forever.
    pub fn relay(b: Body, idle: Duration) -> Self {
        Self::of(Kind::Relay(b, idle, None, false))
    }
    fn of(kind: Kind) -> Self {
        ClientBody {
            kind,
            timing: None,
            guard: None,
            log: None,
            bytes: 0,
            done: false,
        }
    }
    /// Releases the engine's client when the body is dropped.
    pub fn guarded(mut self, driver: Arc<Driver>, id: ClientId) -> Self {
        self.guard = Some((driver, id));
        self
    }
    /// Observes the time to the end of the body as `outcome`'s duration.
    pub fn timed(
        mut self,
        metrics: Arc<crate::metrics::Metrics>,
        outcome: larder_core::Outcome,
        start: Instant,
    ) -> Self {
        self.timing = Some((metrics, outcome, start));
        self
    }

    pub fn logged(mut self, line: LogLine) -> Self {
        self.log = Some(Box::new(line));
        self
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        if let Some((driver, id)) = self.guard.take() {
            driver.release(id);
        }
        if let Some((metrics, outcome, start)) = self.timing.take() {
            metrics.finished(outcome, start.elapsed());
        }
        if let Some(l) = self.log.take() {
            fn text(v: &Option<http::HeaderValue>) -> Option<std::borrow::Cow<'_, str>> {
                v.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()))
            }
            let (referer, user_agent, cache) =
                (text(&l.referer), text(&l.user_agent), text(&l.cache));
            let entry = crate::access::Entry {
                time: l.time,
                client: l.client,
                method: l.method.as_str(),
                url: crate::access::Url::of(l.base.as_deref(), &l.url),
                version: l.version,
                status: l.status,
                bytes: self.bytes,
                referer: referer.as_deref(),
                user_agent: user_agent.as_deref(),
                cache: cache.as_deref().unwrap_or(""),
                duration: l.start.elapsed(),
                complete: self.done || l.bodiless || l.length == Some(self.bytes),
            };
            crate::access::write(l.format, &entry);
        }
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let out = match &mut this.kind {
            Kind::Full(Some(b)) if b.len() > FRAME_MAX => {
                Poll::Ready(Some(Ok(Frame::data(b.split_to(FRAME_MAX)))))
            }
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(rx) => loop {
                match rx.poll_recv(cx) {
                    Poll::Pending => break Poll::Pending,
                    Poll::Ready(Some(ClientEvent::Body(b) | ClientEvent::Cached(b))) => {
                        break Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    Poll::Ready(Some(ClientEvent::End)) => break Poll::Ready(None),
                    Poll::Ready(Some(ClientEvent::Abort)) | Poll::Ready(None) => {
                        break Poll::Ready(Some(Err("upstream body ended early".into())));
                    }
                    Poll::Ready(Some(_)) => continue,
                }
            },
            Kind::Relay(b, idle, timer, moved) => match Pin::new(b).poll_frame(cx) {
                Poll::Pending => {
                    let timer = match timer {
                        Some(t) if std::mem::take(moved) => {
                            t.as_mut().reset(tokio::time::Instant::now() + *idle);
                            t
                        }
                        Some(t) => t,
                        None => timer.insert(Box::pin(tokio::time::sleep(*idle))),
                    };
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err("upstream went silent mid-body".into())))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
                ready => {
                    // The silence is counted again from the next wait.
                    *moved = true;
                    ready
                }
            },
        };
        match &out {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.done = true,
            _ => {}
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Relay(b, ..) => b.is_end_stream(),
            Kind::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Relay(b, ..) => b.size_hint(),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}
