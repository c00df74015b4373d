//! A caching git proxy in a few lines: `cargo run -p gitcache-examples --example
//! embedded_proxy -- https://github.com 127.0.0.1:8080 ./cache`, then
//! `git clone http://127.0.0.1:8080/rust-lang/log.git`. Stops on Ctrl-C.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let upstream = args.next().unwrap_or_else(|| "https://github.com".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let data_dir = args.next().unwrap_or_else(|| "./gitcache-example".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("proxying {upstream} on http://{}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    gitcache_examples::embedded_proxy(listener, &upstream, data_dir.as_ref(), shutdown).await
}
