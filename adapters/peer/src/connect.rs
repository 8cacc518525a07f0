//! CONNECT (RFC 9110 §9.3.6) for allowed clients to allowed ports, through the destination
//! guard. What the client sends first inside the tunnel decides what it becomes:
//!
//! - a TLS handshake to a host chosen for interception: terminated here with a certificate
//!   from Larder's CA, and the requests inside served by the cache as `https://` requests;
//! - a plain HTTP request (undici's `ProxyAgent` tunnels `http://` URLs too): served by the
//!   cache as `http://` requests, no certificate needed;
//! - anything else: bytes relayed to the destination, uncached (squid's `TCP_TUNNEL`).
//!
//! Requests served from inside a tunnel are keyed by the CONNECT target, never by their own
//! `Host`: one that names another host is refused (421), so no tunnel can fill another
//! host's cache entries.

use crate::body::ClientBody;
use crate::server::State;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use larder_core::door::Refused;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// How long a tunnel may stay silent before its first bytes decide what it is.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(30);

/// What the first bytes inside a tunnel are.
#[derive(Debug, PartialEq, Eq)]
enum Inside {
    Tls,
    Http,
    Other,
}

fn inside(first: &[u8]) -> Inside {
    if first.first() == Some(&0x16) {
        // A TLS record of type handshake.
        return Inside::Tls;
    }
    // A request line: an upper-case method token, then a space (`SSH-2.0-...` is not one).
    let method = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match first.get(method) {
        Some(b' ') if method > 0 => Inside::Http,
        None if method > 0 && method < 16 => Inside::Http,
        _ => Inside::Other,
    }
}

pub async fn connect(
    state: &Arc<State>,
    remote: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ClientBody>, Refused> {
    let counts = &state.metrics.connect;
    let refuse = |code: StatusCode, why: String| {
        counts.refused.inc();
        Refused(code, why)
    };
    let target = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    if !crate::server::allowed(&state.live(), &remote) {
        let why = format!("{} may not use this proxy (see --allow)", remote.ip());
        return Err(refuse(StatusCode::FORBIDDEN, why));
    }
    let (host, port) = match req.uri().authority().map(|a| (a.host(), a.port_u16())) {
        Some((host, Some(port))) => (host.to_owned(), port),
        _ => {
            let why = format!("CONNECT target {target:?} must be host:port");
            return Err(refuse(StatusCode::BAD_REQUEST, why));
        }
    };
    let s = state.live();
    let listed = s
        .connect_allow
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&target));
    if !listed && !s.connect_ports.contains(&port) {
        let ports: Vec<String> = s.connect_ports.iter().map(u16::to_string).collect();
        let why = format!(
            "CONNECT to port {port} is not allowed (allowed: {}; see --connect-port)",
            ports.join(", ")
        );
        return Err(refuse(StatusCode::FORBIDDEN, why));
    }
    let intercept = s.ca.clone().filter(|_| s.intercept.matches(&host));
    // A tunnel that may be relayed is connected first, so a failure is a clear 502/403
    // rather than a tunnel that closes. One to be intercepted needs no connection of its own.
    let upstream = match &intercept {
        Some(_) => None,
        None => Some(
            state
                .guard
                .connect(&host, port, state.settings.connect_timeout)
                .await
                .map_err(|e| {
                    let kind = crate::failure::classify(&*e);
                    if kind == larder_core::engine::UpstreamError::DestinationNotAllowed {
                        refuse(StatusCode::FORBIDDEN, e.to_string())
                    } else {
                        counts.failed.inc();
                        tracing::warn!(%target, detail = kind.as_str(), "CONNECT failed: {e}");
                        Refused(kind.status(), format!("{}: {e}", kind.explain()))
                    }
                })?,
        ),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let state = state.clone();
    tokio::spawn(async move {
        let up = match upgrade.await {
            Ok(up) => up,
            Err(e) => {
                tracing::debug!("CONNECT upgrade failed: {e}");
                return;
            }
        };
        let mut client = TokioIo::new(up);
        let mut first = vec![0u8; 4096];
        let n = match tokio::time::timeout(FIRST_BYTES_WAIT, client.read(&mut first)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        first.truncate(n);
        let kind = inside(&first);
        let client = Prefixed {
            prefix: Bytes::from(first),
            io: client,
            read_total: 0,
        };
        let authority = match port {
            443 => host.clone(),
            _ => format!("{host}:{port}"),
        };
        match (kind, intercept, upstream) {
            (Inside::Tls, Some(ca), _) => {
                let config = match ca.server_config(&host) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%target, "cannot make a certificate: {e}");
                        state.metrics.connect.failed.inc();
                        return;
                    }
                };
                let tls = match tokio_rustls::TlsAcceptor::from(config).accept(client).await {
                    Ok(t) => t,
                    Err(e) => {
                        state.metrics.connect.failed.inc();
                        tracing::info!(
                            %target,
                            "the client's TLS failed inside the tunnel ({e}): it must trust \
                             Larder's CA (larder ca-cert)"
                        );
                        return;
                    }
                };
                state.metrics.connect.intercepted.inc();
                let base = format!("https://{authority}");
                crate::server::serve_tunnel(state, remote, tls, base).await;
            }
            (Inside::Http, _, _) => {
                state.metrics.connect.http.inc();
                let base = match port {
                    80 => format!("http://{host}"),
                    _ => format!("http://{host}:{port}"),
                };
                crate::server::serve_tunnel(state, remote, client, base).await;
            }
            (_, _, Some(upstream)) => {
                state.metrics.connect.tunnelled.inc();
                relay(&state, remote, &target, client, upstream).await;
            }
            (_, _, None) => {
                // Chosen for interception, but not TLS nor HTTP: nothing to relay it to.
                state.metrics.connect.failed.inc();
                tracing::info!(%target, "intercepted tunnel carries neither TLS nor HTTP: closed");
            }
        }
    });
    Ok(Response::new(ClientBody::empty()))
}

/// Relays a tunnel's bytes both ways until either side closes; logged and counted.
async fn relay(
    state: &Arc<State>,
    remote: SocketAddr,
    target: &str,
    mut client: Prefixed<TokioIo<hyper::upgrade::Upgraded>>,
    mut upstream: tokio::net::TcpStream,
) {
    let (start, time) = (Instant::now(), std::time::SystemTime::now());
    let (up, down) = tokio::io::copy_bidirectional(&mut client, &mut upstream)
        .await
        .unwrap_or((client.read_total, 0));
    state.metrics.tunnel_up.inc_by(up);
    state.metrics.tunnel_down.inc_by(down);
    let entry = crate::access::Entry {
        time,
        client: remote,
        method: "CONNECT",
        url: crate::access::Url::text(target),
        version: http::Version::HTTP_11,
        status: 200,
        bytes: down,
        referer: None,
        user_agent: None,
        cache: "tunnel",
        duration: start.elapsed(),
        complete: true,
    };
    crate::access::write(state.live().log_format, &entry);
    tracing::debug!(%target, up, down, "tunnel closed");
}

/// A stream whose first bytes were already read: they are read again first.
pub struct Prefixed<I> {
    prefix: Bytes,
    io: I,
    /// Bytes read through this wrapper (for the log when a relay ends in an error).
    read_total: u64,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            self.read_total += n as u64;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        self.read_total += (buf.filled().len() - before) as u64;
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_byte_tells_tls_from_http() {
        assert_eq!(inside(&[0x16, 0x03, 0x01]), Inside::Tls);
        assert_eq!(inside(b"GET / HTTP/1.1\r\n"), Inside::Http);
        assert_eq!(inside(b"OPTIONS * HTTP/1.1"), Inside::Http);
        assert_eq!(inside(b"SSH-2.0-OpenSSH"), Inside::Other);
        assert_eq!(inside(&[0x00, 0x01]), Inside::Other);
    }
}
