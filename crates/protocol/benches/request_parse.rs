//! Parsing a large fetch request: 50,000 `have` lines, as a long-diverged client sends them.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gitcache_protocol::ObjectId;
use gitcache_protocol::request::{
    Capabilities, Command, Fetch, Limits, Request, RequestParser, Status, parse_request,
};

fn body(haves: usize) -> Vec<u8> {
    let oid = |i: usize| {
        let mut bytes = [0u8; 20];
        bytes[..8].copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        ObjectId::from_bytes_or_panic(&bytes)
    };
    let request = Request {
        capabilities: Capabilities {
            agent: Some("git/2.47.3".into()),
            ..Capabilities::default()
        },
        command: Command::Fetch(Fetch {
            wants: (0..10).map(|i| oid(1_000_000 + i)).collect(),
            haves: (0..haves).map(oid).collect(),
            thin_pack: true,
            ofs_delta: true,
            no_progress: true,
            ..Fetch::default()
        }),
    };
    let mut out = Vec::new();
    request.write_to(&mut out).unwrap();
    out
}

fn parse(c: &mut Criterion) {
    let body = body(50_000);
    let mut group = c.benchmark_group("request_parse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("fetch_50k_haves_whole", |b| {
        b.iter(|| parse_request(black_box(&body), Limits::default()).unwrap())
    });
    // As it arrives over HTTP: 16 KiB pieces.
    group.bench_function("fetch_50k_haves_16k_chunks", |b| {
        b.iter(|| {
            let mut parser = RequestParser::new(Limits::default());
            let mut done = None;
            for chunk in black_box(&body).chunks(16 << 10) {
                if let Status::Complete(r) = parser.feed(chunk).unwrap() {
                    done = Some(r);
                }
            }
            done.unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
