//! A forwarded response cut mid-body (the peer relaying it died) is continued: the rest is
//! asked for with `Range` and `If-Range` from the next peer on the ring, or served here when
//! none answers, and appended only if it is exactly the rest of the same representation
//! (`larder_core::resume`). Otherwise the client sees the response cut short, as before.

use crate::body::ClientBody;
use crate::driver::{Begin, ClientEvent};
use crate::server::State;
use crate::upstream::{Body, BoxError};
use bytes::Bytes;
use http::{Method, request};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use larder_core::resume::Resumable;
use larder_core::{ResponseBody, Route};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

/// Relays `body`, the answer to `request` from one of `peers`, continuing it once from the
/// next choice (or from this peer) if it breaks off before its end.
///
/// A body polled in the client's own task, not a pump task and a channel: a forwarded hit
/// then costs no task, no channel and no extra wake-up, and a small answer already read
/// leaves with its head in one write.
pub fn relay_resuming(
    state: Arc<State>,
    body: Body,
    request: request::Parts,
    peers: Vec<String>,
    resumable: Resumable,
) -> Body {
    Resuming {
        relaying: Relaying::Body(body),
        sent: 0,
        resume: Some(Resume {
            state,
            request,
            peers,
            resumable,
        }),
    }
    .boxed()
}

/// What continuing a cut answer needs (taken once: an answer is continued at most once).
struct Resume {
    state: Arc<State>,
    request: request::Parts,
    peers: Vec<String>,
    resumable: Resumable,
}

type Asking = Pin<Box<dyn Future<Output = Option<Body>> + Send>>;

enum Relaying {
    Body(Body),
    /// Asking for the rest; the error that cut the first answer, if none continues it.
    /// (In a mutex only to be `Sync`, as a boxed body must; `get_mut` never locks.)
    Asking(std::sync::Mutex<Asking>, Option<BoxError>),
    Done,
}

struct Resuming {
    relaying: Relaying,
    sent: u64,
    resume: Option<Resume>,
}

impl http_body::Body for Resuming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.relaying {
                Relaying::Done => return Poll::Ready(None),
                Relaying::Body(body) => match ready!(Pin::new(body).poll_frame(cx)) {
                    None => {
                        this.relaying = Relaying::Done;
                        return Poll::Ready(None);
                    }
                    Some(Ok(frame)) => {
                        if let Some(d) = frame.data_ref() {
                            this.sent += d.len() as u64;
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Some(Err(e)) => {
                        let sent = this.sent;
                        match this.resume.take() {
                            Some(r) if sent < r.resumable.total() => {
                                tracing::warn!(
                                    url = %r.request.uri,
                                    sent,
                                    "forwarded response cut mid-body ({e}): asking for the rest"
                                );
                                let asking = Box::pin(async move {
                                    let rest =
                                        rest_of(&r.state, &r.request, &r.peers, &r.resumable, sent)
                                            .await;
                                    if rest.is_some() {
                                        r.state.metrics.resumed.inc();
                                    }
                                    rest
                                });
                                this.relaying =
                                    Relaying::Asking(std::sync::Mutex::new(asking), Some(e));
                            }
                            _ => {
                                this.relaying = Relaying::Done;
                                return Poll::Ready(Some(Err(e)));
                            }
                        }
                    }
                },
                Relaying::Asking(asking, cut) => {
                    let asking = asking.get_mut().unwrap_or_else(|p| p.into_inner());
                    match ready!(asking.as_mut().poll(cx)) {
                        Some(rest) => this.relaying = Relaying::Body(rest),
                        None => {
                            let e = cut.take().unwrap_or_else(|| "cut mid-body".into());
                            this.relaying = Relaying::Done;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.relaying {
            Relaying::Body(b) => b.is_end_stream(),
            Relaying::Asking(..) => false,
            Relaying::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.relaying {
            Relaying::Body(b) => b.size_hint(),
            Relaying::Asking(..) => SizeHint::default(),
            Relaying::Done => SizeHint::with_exact(0),
        }
    }
}

/// The rest of the response after its first `sent` bytes: from the peers in order (the
/// one that failed is skipped once marked down), else from this peer's engine.
async fn rest_of(
    state: &Arc<State>,
    request: &request::Parts,
    peers: &[String],
    resumable: &Resumable,
    sent: u64,
) -> Option<Body> {
    let mut head = larder_core::heads::clone_request(request);
    for (k, v) in resumable.request_fields(sent) {
        head.headers.insert(k, v);
    }
    let target = head.uri.to_string();
    let metrics = &state.metrics;
    let got = state
        .peer_link
        .forward(
            peers,
            &Method::GET,
            &target,
            &head.headers,
            &None,
            |peer, why| {
                metrics.peer_errors.inc();
                tracing::warn!(%peer, "peer failed: {why}; trying the next choice");
            },
        )
        .await;
    if let Some(resp) = got {
        let (parts, body) = resp.into_parts();
        return resumable
            .continues(sent, &parts)
            .then(|| body.map_err(|e| Box::new(e) as BoxError).boxed());
    }
    // No better peer answers: this one is the next choice.
    match state.driver.begin(head, Route::Local) {
        Begin::Answered {
            head,
            body: ResponseBody::Full(b),
            ..
        } if resumable.continues(sent, &head) => {
            Some(Full::new(b).map_err(|never| match never {}).boxed())
        }
        Begin::Answered { .. } => None,
        Begin::Pending { id, mut rx, first } => {
            let first = match first {
                Some(ev) => Some(ev),
                None => rx.recv().await,
            };
            match first {
                Some(ClientEvent::Respond {
                    head,
                    body: ResponseBody::Stream,
                    ..
                }) if resumable.continues(sent, &head) => Some(
                    ClientBody::stream(rx)
                        .guarded(state.driver.clone(), id)
                        .boxed(),
                ),
                Some(ClientEvent::Respond {
                    head,
                    body: ResponseBody::Full(b),
                    ..
                }) if resumable.continues(sent, &head) => {
                    state.driver.release(id);
                    Some(Full::new(b).map_err(|never| match never {}).boxed())
                }
                _ => {
                    state.driver.release(id);
                    None
                }
            }
        }
    }
}
