//! How a custom runtime drives the Larder engine: read a request, hand it in with `now`,
//! then carry out every output until the engine is drained. Plain `std::net`, blocking,
//! one request at a time (HTTP/1.1, `http://` origins, Content-Length bodies).

use bytes::Bytes;
use larder_core::{
    ClientId, Config, Engine, FetchId, Input, MemoryTier, Output, ResponseBody, Route, Tier,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::SystemTime;

/// Reads one HTTP/1.1 head: the start line and the header fields.
/// A start line and its header fields.
type Head = (String, Vec<(String, String)>);

fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let start = line.trim_end().to_owned();
    let mut fields = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            fields.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(Some((start, fields)))
}

fn content_length(fields: &[(String, String)]) -> Option<usize> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
}

/// Makes the upstream request the engine asked for and feeds the answer back in.
fn fetch(engine: &mut Engine, id: FetchId, req: &http::request::Parts) -> Vec<Output> {
    let mut feed = |input| {
        engine.handle_input(SystemTime::now(), input);
        std::iter::from_fn(|| engine.poll_output()).collect::<Vec<_>>()
    };
    let (host, port) = match (req.uri.host(), req.uri.scheme_str()) {
        (Some(h), Some("http")) => (h.to_owned(), req.uri.port_u16().unwrap_or(80)),
        _ => {
            return feed(Input::UpstreamError {
                fetch: id,
                error: larder_core::engine::UpstreamError::Connect,
            });
        }
    };
    let result = (|| -> std::io::Result<(http::response::Parts, Vec<u8>)> {
        let mut s = TcpStream::connect((host.as_str(), port))?;
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = format!(
            "{} {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\n",
            req.method
        );
        for (k, v) in &req.headers {
            out.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or("")));
        }
        s.write_all(format!("{out}\r\n").as_bytes())?;
        let mut r = BufReader::new(s);
        let (start, fields) = read_head(&mut r)?.ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let status: u16 = start
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let mut head = http::Response::builder()
            .status(status)
            .body(())
            .map_err(std::io::Error::other)?
            .into_parts()
            .0;
        for (k, v) in &fields {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                head.headers.append(k, v);
            }
        }
        let mut body = Vec::new();
        match content_length(&fields) {
            Some(n) => {
                body.resize(n, 0);
                r.read_exact(&mut body)?;
            }
            None => {
                r.read_to_end(&mut body)?;
            }
        }
        Ok((head, body))
    })();
    match result {
        Err(_) => feed(Input::UpstreamError {
            fetch: id,
            error: larder_core::engine::UpstreamError::Connect,
        }),
        Ok((head, body)) => {
            let mut outs = feed(Input::UpstreamHead { fetch: id, head });
            outs.extend(feed(Input::UpstreamBody {
                fetch: id,
                chunk: Bytes::from(body),
            }));
            outs.extend(feed(Input::UpstreamEnd { fetch: id }));
            outs
        }
    }
}

/// Serves one client connection (one request). `memory` is the hot tier: the bodies the
/// engine tells this runtime to keep (`Output::Write`) and later to serve or drop.
pub fn serve_connection(
    engine: &mut Engine,
    memory: &mut MemoryTier,
    client: ClientId,
    stream: TcpStream,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let Some((start, fields)) = read_head(&mut reader)? else {
        return Ok(());
    };
    let mut parts = start.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("GET"), parts.next().unwrap_or("/"));
    let mut req = match http::Request::builder().method(method).uri(target).body(()) {
        Ok(r) => r.into_parts().0,
        Err(_) => return out.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
    };
    for (k, v) in &fields {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            req.headers.append(k, v);
        }
    }
    // One mutation, then drain: this is the whole contract with the engine.
    engine.handle_input(
        SystemTime::now(),
        Input::Request {
            client,
            head: req,
            route: Route::Local,
        },
    );
    let mut queue: std::collections::VecDeque<Output> =
        std::iter::from_fn(|| engine.poll_output()).collect();
    while let Some(o) = queue.pop_front() {
        match o {
            Output::Fetch { fetch: id, request } => queue.extend(fetch(engine, id, &request)),
            // A single node has no peers to ask: the fetch fails, and the engine serves its
            // clients itself (it asks only with a hot cache of remote keys, never here).
            Output::FetchFromPeers { fetch: id, .. } => {
                engine.handle_input(
                    SystemTime::now(),
                    Input::UpstreamError {
                        fetch: id,
                        error: larder_core::engine::UpstreamError::Connect,
                    },
                );
                queue.extend(std::iter::from_fn(|| engine.poll_output()));
            }
            // `outcome` (hit, miss, error ...) is what a runtime counts in its metrics.
            Output::Respond {
                client: c,
                head,
                body,
                ..
            } if c == client => {
                let mut text = format!("HTTP/1.1 {}\r\nconnection: close\r\n", head.status);
                for (k, v) in &head.headers {
                    text.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or("")));
                }
                out.write_all(format!("{text}\r\n").as_bytes())?;
                match body {
                    ResponseBody::Full(b) => out.write_all(&b)?,
                    // No disk tier here: stored bodies are all in memory.
                    ResponseBody::Stored(s) => {
                        out.write_all(&memory.read(&s).unwrap_or_default())?
                    }
                    ResponseBody::Empty | ResponseBody::Stream => {}
                }
            }
            Output::Write {
                entry,
                tier: Tier::Memory,
                body,
                ..
            } => memory.insert(entry, body),
            Output::Delete {
                entry,
                tier: Tier::Memory,
                ..
            } => drop(memory.remove(entry)),
            Output::Body { client: c, chunk } if c == client => out.write_all(&chunk)?,
            Output::Abort { client: c } if c == client => return Ok(()), // closing mid-body tells the client
            Output::Pass { client: c, .. } | Output::Forward { client: c, .. } if c == client => {
                out.write_all(b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 23\r\n\r\nthis proxy caches only\n")?;
            }
            _ => {} // End, CancelFetch: nothing to do in this blocking runtime.
        }
    }
    out.flush()
}

/// Accepts `limit` connections (None: forever) on `listener`.
pub fn serve(listener: TcpListener, limit: Option<usize>) -> std::io::Result<()> {
    let mut engine = Engine::new(Config::default()).map_err(std::io::Error::other)?;
    let mut memory = MemoryTier::new();
    for (n, stream) in listener.incoming().enumerate() {
        if limit.is_some_and(|l| n >= l) {
            break;
        }
        let _ = serve_connection(&mut engine, &mut memory, ClientId(n as u64), stream?);
    }
    Ok(())
}
