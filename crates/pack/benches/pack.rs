//! Pack generation by phase: `plan` (resolve wants, negotiate, shallow, walk and select) and
//! `write` (stream the pack). Runs on a generated repository repacked with deltas, or on
//! `$GITCACHE_BENCH_REPO`.

use gitcache_testkit::git::git_stdout as git;
use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gitcache_pack::{Options, Plan, Repository, plan};
use gitcache_protocol::ObjectId;
use gitcache_protocol::request::Fetch;

fn oid(hex: &str) -> ObjectId {
    ObjectId::from_hex(hex.trim().as_bytes()).unwrap()
}

fn repository() -> (Option<tempfile::TempDir>, PathBuf) {
    if let Some(path) = std::env::var_os("GITCACHE_BENCH_REPO") {
        return (None, PathBuf::from(path));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.git");
    gitcache_testkit::repo::generate(&path, &gitcache_testkit::repo::RepoSpec::medium(1)).unwrap();
    git(
        &path,
        &[
            "repack",
            "-a",
            "-d",
            "-f",
            "-q",
            "--depth=50",
            "--window=50",
        ],
    );
    (Some(dir), path)
}

fn phases(c: &mut Criterion) {
    let (_dir, path) = repository();
    let repo = Repository::open(&path).unwrap();
    let main = oid(&git(&path, &["rev-parse", "main"]));
    let old = oid(&git(&path, &["rev-parse", "main~50"]));
    let base = Fetch {
        done: true,
        thin_pack: true,
        ofs_delta: true,
        no_progress: true,
        ..Fetch::default()
    };
    let cases = [
        (
            "clone_main",
            Fetch {
                wants: vec![main],
                ..base.clone()
            },
        ),
        (
            "depth_1",
            Fetch {
                wants: vec![main],
                deepen: Some(1),
                ..base.clone()
            },
        ),
        (
            "incremental_50",
            Fetch {
                wants: vec![main],
                haves: vec![old],
                ..base.clone()
            },
        ),
    ];
    let count = |f: &Fetch| {
        plan(&repo, f, repo.object_format(), &Options::default())
            .unwrap()
            .object_count()
            .unwrap_or(0)
    };

    let mut group = c.benchmark_group("plan");
    for (name, fetch) in &cases {
        group.throughput(Throughput::Elements(count(fetch) as u64));
        group.bench_function(*name, |b| {
            b.iter(|| {
                plan(
                    &repo,
                    black_box(fetch),
                    repo.object_format(),
                    &Options::default(),
                )
                .unwrap()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("write");
    for (name, fetch) in &cases {
        let objects = count(fetch) as u64;
        group.throughput(Throughput::Elements(objects));
        group.bench_function(*name, |b| {
            b.iter_batched(
                || plan(&repo, fetch, repo.object_format(), &Options::default()).unwrap(),
                |plan: Plan| plan.write_to(std::io::sink()).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = phases
}
criterion_main!(benches);
