//! Mirror an upstream repository, then answer a protocol v2 request from the mirror — the
//! library crates without the server.
//!
//! ```sh
//! cargo run -p gitcache-examples --example mirror_and_serve -- \
//!     http://127.0.0.1:8080/acme/widgets.git ./mirrors < request.bin > response.bin
//! ```

use std::io::Read;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: mirror_and_serve <upstream url> [mirrors folder]")?;
    let root = args.next().unwrap_or_else(|| "mirrors".into());
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    let authorization = std::env::var("UPSTREAM_AUTHORIZATION").ok();
    gitcache_examples::mirror_and_serve(
        &url,
        root.as_ref(),
        authorization,
        &body,
        &mut std::io::stdout().lock(),
    )
}
