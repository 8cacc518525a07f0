//! `larder`: run one peer. With no arguments: a single-node, in-memory forward proxy on
//! 127.0.0.1:3128.

use clap::Parser;
use std::time::Duration;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .init();
    let settings = match larder_peer::Args::parse().resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("larder: {e}");
            std::process::exit(2);
        }
    };
    if !settings.peers.is_empty() && settings.peer_secret.is_none() {
        tracing::warn!("no --peer-secret: peer traffic is accepted from loopback only");
    }
    let mode = match &settings.mirror {
        Some(m) => format!("mirror of {m}"),
        None => "forward proxy".into(),
    };
    let running = match larder_peer::start(settings.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("larder: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(
        listen = %running.addr,
        peers = settings.peers.len(),
        memory = settings.engine.memory,
        "larder ready: {mode} (try: curl -x http://{} http://example.com/)",
        running.addr
    );
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight responses");
    running.shutdown(Duration::from_secs(30)).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
