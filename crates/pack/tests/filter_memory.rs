//! A `combine:` filter's walk holds memory that does not grow with its number of
//! sub-filters: git keeps one seen set per sub-filter, we keep one map of bits for all.
//!
//! This file holds one test on purpose: the allocator below counts the bytes the whole
//! process holds, so nothing else may run beside it.

use std::process::Command;

use gitcache_pack::{Options, Plan, Repository, plan};
use gitcache_protocol::ObjectId;
use gitcache_protocol::filter::Filter;
use gitcache_protocol::request::Fetch;
use gitcache_testkit::heap::{Counting, Peak};
use gitcache_testkit::repo::{self, RepoSpec};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most bytes held above the starting level while planning `filter` over `wants`.
fn peak_while_planning(repo: &Repository, wants: &[ObjectId], filter: Filter) -> (usize, usize) {
    let fetch = Fetch {
        wants: wants.to_vec(),
        done: true,
        ofs_delta: true,
        no_progress: true,
        filter: Some(filter),
        ..Fetch::default()
    };
    let peak = Peak::start();
    let planned = plan(repo, &fetch, repo.object_format(), &Options::default()).unwrap();
    let Plan::Pack(pack) = planned else {
        panic!("a fetch with wants and done gets a pack")
    };
    let objects = pack.object_count();
    drop(pack);
    (peak.grown(), objects)
}

#[test]
fn a_combined_filter_walk_holds_the_same_memory_for_2_or_32_sub_filters() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.git");
    let spec = RepoSpec {
        commits: 800,
        files: 60,
        ..RepoSpec::small(1301)
    };
    let generated = repo::generate(&src, &spec).unwrap();
    let wants: Vec<ObjectId> = generated
        .branches
        .iter()
        .map(|branch| {
            let out = Command::new("git")
                .arg("--git-dir")
                .arg(&src)
                .args(["rev-parse", &format!("refs/heads/{branch}")])
                .output()
                .unwrap();
            assert!(out.status.success());
            ObjectId::from_hex(String::from_utf8(out.stdout).unwrap().trim().as_bytes()).unwrap()
        })
        .collect();
    let repo = Repository::open(&src).unwrap();
    // Distinct sub-filters (identical ones are kept once, which would prove nothing). Every
    // blob is larger than 0 bytes, so each one is left out by each sub-filter and asked
    // about by all of them.
    let limits = |n: u64| Filter::Combine((0..n).map(Filter::BlobLimit).collect());
    // Once to warm what the repository caches on first use, then measured.
    peak_while_planning(&repo, &wants, limits(2));
    let (two, two_objects) = peak_while_planning(&repo, &wants, limits(2));
    let (many, many_objects) = peak_while_planning(&repo, &wants, limits(32));
    assert_eq!(two_objects, many_objects, "the same objects are left out");
    assert!(two_objects > 1000, "a walk over {two_objects} objects");
    // One seen set per sub-filter would hold 16 times as many entries; the shared map
    // holds the same, and the rest of the walk does not depend on the filter.
    assert!(
        many <= two + two / 4,
        "planning with 32 sub-filters held {many} bytes, with 2 held {two}"
    );
}
