//! `upload_pack <repo>`: read one protocol v2 request on stdin, write the response on stdout,
//! like `git upload-pack --stateless-rpc <repo>` with `GIT_PROTOCOL=version=2`. Used by the
//! end-to-end benchmark to compare both as processes. The repository's reverse indexes are
//! trusted unread, as git's `upload-pack` trusts them (`Repository::trusting_reverse_indexes`:
//! one process, one answer, nothing kept); a handle opened afresh for `UPLOAD_PACK_REOPEN`
//! (`warm`, `prepared`, `fresh`; not `adopt`, which keeps the first handle's) checks them as
//! a server does.
//!
//! `UPLOAD_PACK_REPEAT=N` answers a fetch N times in the one process (all but the last into
//! nothing), as a server that keeps the repository open does: for profiling a warm answer.
//! `UPLOAD_PACK_BEFORE=a.req:b.req` answers those fetches first, into nothing (the answer
//! measured is timed from after them).
//! `UPLOAD_PACK_REOPEN=adopt|warm|prepared|fresh` then opens the repository again before the
//! answer (timed from there): keeping what the first handle read (`Repository::reopen`),
//! making it all again first (`Repository::warm_like` on a fresh handle, its time on stderr),
//! preparing a fresh handle as a server prepares a mirror asked for lately
//! (`Repository::shallow_clone_warmth` and `Repository::keep_head_trees`, likewise timed),
//! or not. `UPLOAD_PACK_ARRIVES=<pack stem>` (with a reopen) holds that pack of the repository
//! aside until the reopen, as a pack a refresh fetches arrives between two answers.
//! `UPLOAD_PACK_REMADE=MiB` gives the answers a store of objects compressed again, shared
//! by them all, as a server's are. `UPLOAD_PACK_UNCHECKED=1` opens the repository as one whose
//! objects were not checked (`Repository::open_unchecked`: its answers' sets of ids keyed).
//!
//! ```sh
//! cargo run --release -p gitcache-pack --example upload_pack -- repo.git < request > response
//! ```

use std::io::{Read, Write};

use gitcache_pack::{Options, Repository, plan};
use gitcache_protocol::pktline;
use gitcache_protocol::request::{Command, Limits, parse_request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: upload_pack <repo>")?;
    let arriving = Arriving::hold(&path)?;
    let mut repo = match std::env::var_os("UPLOAD_PACK_UNCHECKED") {
        Some(_) => Repository::open_unchecked(&path)?,
        None => Repository::open(&path)?,
    }
    .trusting_reverse_indexes();
    let options = Options {
        remade: std::env::var("UPLOAD_PACK_REMADE")
            .ok()
            .and_then(|mib| mib.parse::<usize>().ok())
            .map(|mib| std::sync::Arc::new(gitcache_pack::Remade::new(mib << 20))),
        ..Options::default()
    };
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    // With UPLOAD_PACK_PHASES set, how long planning and writing took, what was written, and
    // what the handle has read and made for its answers (its warmth) go to stderr.
    let mut started = std::time::Instant::now();
    let Some(request) = parse_request(&body, Limits::default())? else {
        return Ok(());
    };
    // With UPLOAD_PACK_BEFORE naming request files (separated by ':'), those fetches are
    // answered first, into nothing: the state a server is in after other answers (a delta
    // forest read, tables made).
    if let Ok(before) = std::env::var("UPLOAD_PACK_BEFORE") {
        for file in before.split(':').filter(|f| !f.is_empty()) {
            let body = std::fs::read(file)?;
            if let Some(earlier) = parse_request(&body, Limits::default())?
                && let Command::Fetch(fetch) = &earlier.command
            {
                let format = earlier.capabilities.object_format();
                plan(&repo, fetch, format, &options)?.write_to(std::io::sink())?;
            }
        }
        // The answer measured is timed alone, from here.
        started = std::time::Instant::now();
    }
    if let Ok(how) = std::env::var("UPLOAD_PACK_REOPEN") {
        arriving.arrive()?;
        let reopening = std::time::Instant::now();
        repo = match how.as_str() {
            "adopt" => repo.reopen()?,
            "warm" => {
                let fresh = Repository::open(&path)?;
                fresh.warm_like(&repo)?;
                eprintln!("warmed in {:.1?}", reopening.elapsed());
                fresh
            }
            "prepared" => {
                let fresh = Repository::open(&path)?;
                fresh.warm(fresh.shallow_clone_warmth())?;
                let trees = fresh.keep_head_trees()?;
                eprintln!("prepared in {:.1?} ({trees} trees)", reopening.elapsed());
                fresh
            }
            _ => Repository::open(&path)?,
        };
        started = std::time::Instant::now();
    }
    match &request.command {
        Command::LsRefs(args) => {
            let lines = repo.ls_refs(args)?;
            gitcache_protocol::ls_refs::write_response(&mut out, &lines, args)?;
        }
        Command::Fetch(fetch) => {
            let repeat = std::env::var("UPLOAD_PACK_REPEAT")
                .ok()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(1)
                .max(1);
            // Rounds counted down: the last (0) is written out. The first one's time counts
            // from the process's start, opening and loading included.
            for round in (0..repeat).rev() {
                let started = match round + 1 == repeat {
                    true => started,
                    false => std::time::Instant::now(),
                };
                let planned = plan(&repo, fetch, request.capabilities.object_format(), &options);
                let mut sink = std::io::sink();
                let mut to: &mut dyn Write = if round == 0 { &mut out } else { &mut sink };
                match planned {
                    Ok(plan) => {
                        let planned = started.elapsed();
                        let stats = plan.write_to(&mut to)?;
                        if std::env::var_os("UPLOAD_PACK_PHASES").is_some() {
                            eprintln!(
                                "planned in {planned:.1?}, written by {:.1?}: {stats:?}; {:?}",
                                started.elapsed(),
                                repo.warmth()
                            );
                        }
                    }
                    Err(err) => {
                        pktline::write_error(&mut to, err.wire_message().as_bytes())?;
                    }
                }
            }
        }
        Command::ObjectInfo(_) => {
            pktline::write_error(&mut out, b"object-info is not supported").map(drop)?
        }
        // No bundles to list: the client fetches everything.
        Command::BundleUri => pktline::write_flush(&mut out).map(drop)?,
    }
    out.flush()?;
    Ok(())
}

/// The files of the pack `UPLOAD_PACK_ARRIVES` names, held aside (renamed) until
/// [`arrive`](Self::arrive), and put back if the example ends before.
struct Arriving(Vec<(std::path::PathBuf, std::path::PathBuf)>);

impl Arriving {
    fn hold(repo: &str) -> std::io::Result<Self> {
        let Ok(stem) = std::env::var("UPLOAD_PACK_ARRIVES") else {
            return Ok(Arriving(Vec::new()));
        };
        let dir = std::path::Path::new(repo).join("objects/pack");
        let mut held = Vec::new();
        // The index first: a pack without one is not listed.
        for ext in ["idx", "pack", "rev"] {
            let at = dir.join(format!("{stem}.{ext}"));
            let aside = dir.join(format!("{stem}.{ext}.arriving"));
            if at.exists() {
                std::fs::rename(&at, &aside)?;
                held.push((at, aside));
            }
        }
        Ok(Arriving(held))
    }

    fn arrive(&self) -> std::io::Result<()> {
        for (at, aside) in self.0.iter().rev() {
            if aside.exists() {
                std::fs::rename(aside, at)?;
            }
        }
        Ok(())
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        let _ = self.arrive();
    }
}
