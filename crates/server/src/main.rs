//! gitcache-server: reads the configuration, sets up logging, wires the library crates and
//! waits for a signal. No protocol logic lives here.

mod config;

use anyhow::{Context, Result};
use clap::Parser;

use config::{Config, Flags, LogFormat};

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "no SIGTERM handler; stopping on SIGINT only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("signal received, shutting down");
}

fn init_tracing(config: &Config) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(config.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match config.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> Result<()> {
    let config = Config::load(Flags::parse())?;
    init_tracing(&config);
    let proxy = gitcache_http::Proxy::new(config.proxy).context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let options = gitcache_http::ServeOptions {
        grace_period: config.shutdown_grace,
    };
    let listen = config.listen;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, upstream = %proxy.config().upstream, data_dir = %proxy.config().data_dir.display(), "gitcache listening");
        // Also on stderr as a plain line, whatever the log format: scripts wait for it.
        eprintln!("gitcache listening on http://{addr}");
        gitcache_http::serve_with(listener, proxy, shutdown_signal(), options).await;
        anyhow::Ok(())
    })?;
    // Blocking work still running after the grace period is abandoned, not waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    eprintln!("gitcache stopped");
    Ok(())
}
