//! Interim (1xx) responses to clients (RFC 9110 §15.2). hyper's HTTP/1 server sends no 1xx
//! of a handler's choosing, so a client connection's IO carries them: [`InterimIo`] wraps
//! the stream, and its [`Interim`] handle queues an interim head's bytes, which go out
//! ahead of anything hyper writes next.
//!
//! Why this never splits a message: hyper calls `poll_flush` on its IO only when its own
//! write buffer is empty (`Buffered::poll_flush`), so a connection is *clean* from then until
//! hyper writes again. A head is queued only while clean: nothing of an earlier response
//! is left in hyper's buffer, and this request's final head cannot be there yet (its 1xx
//! precede it upstream, and the handler has not answered). The queued bytes are written
//! first by whichever of `poll_write` / `poll_flush` comes next, so they precede that head.
//! Not clean (hyper still writing an earlier pipelined response to a slow reader): the
//! interim head is dropped, which only loses a hint.

use http::{Version, response};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Interim bytes one connection may have queued; more (an origin flooding 1xx to a client
/// that does not read) are dropped.
const QUEUED_MAX: usize = 64 * 1024;

/// A callback for the interim heads of one upstream request.
pub type OnInterim = Arc<dyn Fn(response::Parts) + Send + Sync>;

/// Calls `on` for each 1xx the upstream sends before its answer to `req`.
pub fn watch<B>(req: &mut http::Request<B>, on: OnInterim) {
    hyper::ext::on_informational(req, move |r| {
        let mut head = http::Response::new(()).into_parts().0;
        head.status = r.status();
        head.headers = r.headers().clone();
        on(head);
    });
}

#[derive(Default)]
struct State {
    queued: Vec<u8>,
    /// Bytes of `queued` already written.
    written: usize,
    /// hyper has nothing buffered (it flushed and has not written since).
    clean: bool,
    /// The connection task's waker, to write heads queued from another task.
    waker: Option<Waker>,
}

impl State {
    fn remember(&mut self, cx: &Context<'_>) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
    }

    /// Writes what is queued; `Ready(Ok)` once nothing is.
    fn drain<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.written < self.queued.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.queued[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.queued.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// One client connection's queue of interim heads.
#[derive(Clone)]
pub struct Interim(Arc<Mutex<State>>);

impl Interim {
    /// Queues `head` (already judged by `larder_core::interim::to_forward`) to go out
    /// before the response. False when it was dropped (see the module doc).
    pub fn send(&self, head: &response::Parts) -> bool {
        let bytes = larder_core::interim::http1_bytes(head);
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !s.clean || s.queued.len() + bytes.len() > QUEUED_MAX {
            return false;
        }
        s.queued.extend_from_slice(&bytes);
        if let Some(w) = &s.waker {
            w.wake_by_ref();
        }
        true
    }

    /// A callback relaying an upstream request's 1xx to this connection's client (which
    /// speaks `version`).
    pub fn relay(&self, version: Version) -> OnInterim {
        let this = self.clone();
        Arc::new(move |head| {
            if let Some(h) = larder_core::interim::to_forward(&head, version) {
                this.send(&h);
            }
        })
    }
}

/// A client connection's stream, carrying queued interim heads ahead of hyper's writes.
pub struct InterimIo<T> {
    io: T,
    state: Arc<Mutex<State>>,
}

impl<T> InterimIo<T> {
    pub fn new(io: T) -> (InterimIo<T>, Interim) {
        let state = Arc::new(Mutex::new(State {
            clean: true,
            ..State::default()
        }));
        (
            InterimIo {
                io,
                state: state.clone(),
            },
            Interim(state),
        )
    }
}

impl<T: AsyncWrite + Unpin> InterimIo<T> {
    /// Queued interim bytes first, then hyper's (which make the connection not clean).
    fn before_write(&mut self, cx: &mut Context<'_>, writes: bool) -> Poll<io::Result<()>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.remember(cx);
        std::task::ready!(s.drain(&mut self.io, cx))?;
        if writes {
            s.clean = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for InterimIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remember(cx);
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for InterimIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.before_write(cx, !buf.is_empty()))?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let writes = bufs.iter().any(|b| !b.is_empty());
        std::task::ready!(self.before_write(cx, writes))?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        {
            let this = &mut *self;
            let mut s = this.state.lock().unwrap_or_else(|p| p.into_inner());
            // hyper flushes its IO only with its own buffer empty.
            s.clean = true;
            s.remember(cx);
            std::task::ready!(s.drain(&mut this.io, cx))?;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn hints() -> response::Parts {
        let mut h = http::Response::new(()).into_parts().0;
        h.status = http::StatusCode::EARLY_HINTS;
        h.headers.insert("link", "</a>".parse().unwrap());
        h
    }

    #[tokio::test]
    async fn queued_heads_go_before_hypers_next_write_and_only_when_clean() {
        let (io, interim) = InterimIo::new(Vec::<u8>::new());
        let mut io = io;
        assert!(interim.send(&hints()));
        io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        // Written, not flushed: not clean, so a late hint is dropped.
        assert!(!interim.send(&hints()));
        io.flush().await.unwrap();
        assert!(interim.send(&hints()));
        io.flush().await.unwrap();
        assert_eq!(
            String::from_utf8(io.io).unwrap(),
            "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
        );
    }
}
