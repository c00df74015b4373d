//! gitcache-server: wires the library crates into a binary.
//!
//! Today: `--listen ADDR` (or `GITCACHE_LISTEN`, default `127.0.0.1:8080`), health endpoints,
//! and a clean stop on SIGINT or SIGTERM.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

fn listen_addr() -> Result<SocketAddr> {
    let mut args = std::env::args().skip(1);
    let mut listen = std::env::var("GITCACHE_LISTEN").unwrap_or_else(|_| DEFAULT_LISTEN.to_owned());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "-h" | "--help" => {
                println!(
                    "gitcache-server: a caching proxy for git's smart HTTP protocol\n\n\
                     Usage: gitcache-server [--listen ADDR]\n\n\
                     Options:\n  --listen ADDR  address to listen on [env: GITCACHE_LISTEN] [default: {DEFAULT_LISTEN}]\n  -h, --help     print this help"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}' (see --help)"),
        }
    }
    listen
        .parse()
        .with_context(|| format!("invalid listen address '{listen}'"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> Result<()> {
    let addr = listen_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("gitcache listening on http://{}", listener.local_addr()?);
        gitcache_http::serve(listener, shutdown_signal()).await;
        eprintln!("gitcache stopped");
        Ok(())
    })
}
