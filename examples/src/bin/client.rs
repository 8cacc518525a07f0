//! The Larder client library from a tower/hyper program: each request goes straight to the
//! peer that owns its URL, failing over in preference order.
//!
//! cargo run -p larder-examples --bin client -- PEER[,PEER...] URL [URL...]
//! e.g. cargo run -p larder-examples --bin client -- http://127.0.0.1:4001,http://127.0.0.1:4002 http://127.0.0.1:8000/

use http_body_util::{BodyExt, Empty};
use larder_core::ring::RingKind;
use tower_service::Service;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let peers: Vec<String> = args
        .next()
        .ok_or("usage: client PEER[,PEER...] URL...")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut client = larder_peer::Client::new(&peers, RingKind::Rendezvous)?;
    for url in args {
        std::future::poll_fn(|cx| {
            Service::<http::Request<Empty<bytes::Bytes>>>::poll_ready(&mut client, cx)
        })
        .await?;
        let owner = client.owner_for(&url).unwrap_or_default();
        let resp = client
            .call(http::Request::get(url.as_str()).body(Empty::<bytes::Bytes>::new())?)
            .await?;
        let status = resp.status();
        let cache = resp
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body = resp.into_body().collect().await?.to_bytes();
        println!(
            "{url} -> owner {owner}: {status}, {} bytes, cache-status: {cache}",
            body.len()
        );
    }
    Ok(())
}
