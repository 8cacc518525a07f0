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
    match &command {
        Some(larder_peer::config::Command::Completions { shell }) => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut cmd = larder_peer::Args::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "larder", &mut script);
            // A reader that stops early (`| head`) is not an error.
            let _ = std::io::stdout().write_all(&script);
            return;
        }
        Some(larder_peer::config::Command::Man) => {
            use clap::CommandFactory;
            use std::io::Write;
            let man = clap_mangen::Man::new(larder_peer::Args::command());
            let mut page = Vec::new();
            if let Err(e) = man.render(&mut page) {
                eprintln!("larder: {e}");
                std::process::exit(1);
            }
            let _ = std::io::stdout().write_all(&page);
            return;
        }
        _ => {}
    }
    // Kept to resolve again on a live reload (the config file is re-read).
    let flags = args.clone();
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
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, log_level) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
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
    {
        let state = std::sync::Arc::downgrade(&running.state);
        let (flags, log_level) = (flags.clone(), log_level.clone());
        running.on_reload(move || match state.upgrade() {
            Some(st) => reload(&flags, |s| st.reload(s), &log_level),
            None => Err("shutting down".into()),
        });
    }
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
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .expect("SIGHUP handler");
        let stop = shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = hup.recv() => {
                    let _ = reload(&flags, |s| running.reload(s), &log_level);
                }
            }
        }
    }
    #[cfg(not(unix))]
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight responses");
    running.shutdown(Duration::from_secs(30)).await;
}

/// SIGHUP: the flags resolved again with the config file re-read; applied whole, or refused
/// whole with the running configuration kept.
/// What a reload ran: applied (a summary) or refused (why).
type Reloaded = Result<String, String>;

fn reload<S>(
    flags: &larder_peer::Args,
    apply: impl Fn(&larder_peer::Settings) -> Result<Vec<&'static str>, String>,
    log_level: &tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> Reloaded {
    let refused = |why: String| {
        tracing::error!("reload refused, the running configuration stays: {why}");
        Err(why)
    };
    let new = match flags.clone().resolve() {
        Ok(s) => s,
        Err(e) => return refused(e),
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&new.log_level) {
        Ok(f) => f,
        Err(e) => return refused(format!("bad log-level {:?}: {e}", new.log_level)),
    };
    match apply(&new) {
        Ok(fixed) => {
            let _ = log_level.reload(filter);
            tracing::info!(
                rules = new.engine.policy.rules.len(),
                peers = new.peers.len(),
                "reloaded: peers, allow-lists, destinations, mirrors, tunnels, freshness rules, passthrough and log settings"
            );
            let mut said = "reloaded".to_owned();
            for name in fixed {
                tracing::warn!("{name} changed: it takes effect at the next restart");
                said.push_str(&format!(
                    "; {name} changed: it takes effect at the next restart"
                ));
            }
            Ok(said)
        }
        Err(e) => refused(e),
    }
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
