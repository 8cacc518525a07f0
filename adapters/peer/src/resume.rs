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
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Full};
use larder_core::resume::Resumable;
use larder_core::{ResponseBody, Route};
use std::sync::Arc;

/// Relays `body`, the answer to `request` from one of `peers`, continuing it once from the
/// next choice (or from this peer) if it breaks off before its end.
pub fn relay_resuming(
    state: Arc<State>,
    body: Body,
    request: request::Parts,
    peers: Vec<String>,
    resumable: Resumable,
) -> Body {
    // A few frames of slack: the client's reading paces the relay.
    let (tx, rx) = Channel::new(4);
    tokio::spawn(pump(state, body, tx, request, peers, resumable));
    rx.boxed()
}

async fn pump(
    state: Arc<State>,
    mut body: Body,
    mut tx: Sender<Bytes, BoxError>,
    request: request::Parts,
    peers: Vec<String>,
    resumable: Resumable,
) {
    let mut sent = 0u64;
    let mut resumed = false;
    loop {
        match body.frame().await {
            None => return,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                sent += data.len() as u64;
                if tx.send_data(data).await.is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                if !resumed && sent < resumable.total() {
                    resumed = true;
                    tracing::warn!(
                        url = %request.uri,
                        sent,
                        "forwarded response cut mid-body ({e}): asking for the rest"
                    );
                    if let Some(rest) = rest_of(&state, &request, &peers, &resumable, sent).await {
                        state.metrics.resumed.inc();
                        body = rest;
                        continue;
                    }
                }
                tx.abort(e);
                return;
            }
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
