//! Decode a captured protocol v2 request body (what `git` POSTs to `git-upload-pack`) and print
//! what it asks for: handy when reading `GIT_TRACE_CURL` dumps or the testkit's recordings.
//!
//! ```sh
//! cargo run -p gitcache-examples --example decode_request -- \
//!     crates/protocol/tests/fixtures/transcripts/depth-1/03-fetch.request
//! ```

use std::io::Read;

use gitcache_protocol::request::{Command, Limits, RequestParser, Status};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut body = Vec::new();
    match std::env::args().nth(1) {
        Some(path) => body = std::fs::read(path)?,
        None => {
            std::io::stdin().read_to_end(&mut body)?;
        }
    }
    let mut parser = RequestParser::new(Limits::default());
    let request = match parser.feed(&body)? {
        Status::Complete(request) => request,
        Status::Empty => {
            println!("empty request: the client is done");
            return Ok(());
        }
        Status::Incomplete => {
            parser.finish()?;
            unreachable!("finish fails on an incomplete request")
        }
    };
    let caps = &request.capabilities;
    println!("command:       {}", request.command.name());
    println!("agent:         {}", caps.agent.as_deref().unwrap_or("-"));
    println!("object format: {}", caps.object_format());
    match &request.command {
        Command::Fetch(f) => {
            println!(
                "wants:         {} (+{} want-ref)",
                f.wants.len(),
                f.want_refs.len()
            );
            println!("haves:         {}", f.haves.len());
            println!("done:          {}", f.done);
            if let Some(depth) = f.deepen {
                println!(
                    "deepen:        {depth}{}",
                    if f.deepen_relative { " (relative)" } else { "" }
                );
            }
            if let Some(since) = f.deepen_since {
                println!("deepen-since:  {since}");
            }
            for name in &f.deepen_not {
                println!("deepen-not:    {name}");
            }
            if let Some(filter) = &f.filter {
                println!("filter:        {filter}");
            }
            let flags: Vec<&str> = [
                (f.thin_pack, "thin-pack"),
                (f.ofs_delta, "ofs-delta"),
                (f.include_tag, "include-tag"),
                (f.no_progress, "no-progress"),
                (f.sideband_all, "sideband-all"),
                (f.wait_for_done, "wait-for-done"),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            println!("options:       {}", flags.join(" "));
        }
        Command::LsRefs(l) => {
            println!("symrefs/peel/unborn: {}/{}/{}", l.symrefs, l.peel, l.unborn);
            for prefix in &l.ref_prefixes {
                println!("ref-prefix:    {prefix}");
            }
        }
        Command::ObjectInfo(o) => println!("object-info:   {} ids, size={}", o.oids.len(), o.size),
        Command::BundleUri => println!("bundle-uri:    no arguments"),
    }
    Ok(())
}
