//! `larder`: run one peer. With no arguments: a single-node, in-memory forward proxy on
//! 127.0.0.1:3128.

use clap::Parser;
use std::time::Duration;

fn main() {
    // Worker threads: LARDER_THREADS, else one per core (benchmarks pin to one core).
    let threads = std::env::var("LARDER_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
    // One thread: a current-thread runtime, no work stealing or cross-thread wake-ups.
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    match rt {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("larder: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn run() {
    let args = larder_peer::Args::parse();
    let command = args.command.clone();
    let settings = match args.resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("larder: {e}");
            std::process::exit(2);
        }
    };
    // Diagnostics on standard error (the access log has standard output), coloured only
    // for a terminal.
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level).unwrap_or_else(|e| {
        eprintln!("larder: bad --log-level {:?}: {e}", settings.log_level);
        std::process::exit(2);
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if command == Some(larder_peer::config::Command::CaCert) {
        match larder_peer::intercept::Authority::load_or_create(&settings.data_dir) {
            Ok(ca) => print!("{}", ca.ca_pem()),
            Err(e) => {
                eprintln!(
                    "larder: interception CA in {}: {e}",
                    settings.data_dir.display()
                );
                std::process::exit(1);
            }
        }
        return;
    }
    if !settings.peers.is_empty() && settings.peer_secret.is_none() {
        tracing::warn!("no --peer-secret: peer traffic is accepted from loopback only");
    }
    let mode = match settings.mirrors.as_slice() {
        [] => "forward proxy".to_owned(),
        ms => {
            let each: Vec<String> = ms
                .iter()
                .map(|m| {
                    format!(
                        "{} -> {}",
                        if m.prefix().is_empty() {
                            "/"
                        } else {
                            m.prefix()
                        },
                        m.base()
                    )
                })
                .collect();
            format!("forward proxy and mirror of {}", each.join(", "))
        }
    };
    let running = match larder_peer::start(settings.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("larder: {e}");
            std::process::exit(1);
        }
    };
    match crate_roots(&settings) {
        Ok(larder_peer::tls::Roots::System(n)) => {
            tracing::info!("upstream TLS trusts the system store ({n} CAs) and --ca-file")
        }
        Ok(larder_peer::tls::Roots::Bundled) => tracing::warn!(
            "no system trust store found: upstream TLS trusts the bundled public roots and --ca-file"
        ),
        Err(_) => {}
    }
    if settings.intercept.any() {
        tracing::info!(
            data_dir = %settings.data_dir.display(),
            "intercepting CONNECT tunnels to {}: clients must trust the CA `larder ca-cert` prints",
            if settings.intercept.all { "every host".to_owned() } else { settings.intercept.hosts.join(", ") }
        );
    }
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

fn crate_roots(s: &larder_peer::Settings) -> Result<larder_peer::tls::Roots, String> {
    larder_peer::tls::roots(&s.ca_files).map(|(_, r)| r)
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
