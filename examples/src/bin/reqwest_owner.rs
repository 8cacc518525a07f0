//! Routing reqwest through the owner peer with `reqwest::Proxy::custom`: reqwest sends each
//! `http://` request as an absolute-form proxy request to the peer that owns the URL.
//! (For `https://` URLs reqwest would open a CONNECT tunnel; use `larder_peer::Client` to
//! have HTTPS content cached.)
//!
//! cargo run -p larder-examples --bin reqwest_owner -- PEER[,PEER...] URL [URL...]

use larder_core::ring::RingKind;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let peers: Vec<String> = args
        .next()
        .ok_or("usage: reqwest_owner PEER[,PEER...] URL...")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let larder = larder_peer::Client::new(&peers, RingKind::Rendezvous)?;
    let route = larder.clone();
    let proxy = reqwest::Proxy::custom(move |url| {
        if url.scheme() != "http" {
            return None;
        }
        route
            .owner_for(url.as_str())
            .and_then(|owner| reqwest::Url::parse(&owner).ok())
    });
    let http = reqwest::Client::builder().proxy(proxy).build()?;
    for url in args {
        let resp = http.get(&url).send().await?;
        let cache = resp
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        println!(
            "{url} -> owner {}: {}, cache-status: {cache}",
            larder.owner_for(&url).unwrap_or_default(),
            resp.status()
        );
    }
    Ok(())
}
