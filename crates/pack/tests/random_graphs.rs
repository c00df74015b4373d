//! Property tests: random commit graphs, random requests, every answer checked against git's
//! (same acknowledgments, shallow lines and objects added to the client; a valid pack; fsck),
//! half of them with commits read from a commit-graph file.

mod common;

use common::{Case, Fixture, fetch, git, run};
use gitcache_protocol::ObjectId;
use gitcache_protocol::filter::Filter;
use gitcache_testkit::repo::{self, RepoSpec};
use proptest::prelude::*;

/// What the client asks for, as indices into the repository's commits.
#[derive(Debug, Clone)]
struct Shape {
    spec: RepoSpec,
    wants: Vec<prop::sample::Index>,
    haves: Vec<prop::sample::Index>,
    depth: Option<u32>,
    filter: Option<Filter>,
    thin: bool,
    ofs: bool,
    include_tag: bool,
    done: bool,
    /// Walks read commits from the pack's commit graph.
    graph: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        (
            any::<u64>(),
            3usize..50,
            0usize..4,
            2usize..9,
            2usize..7,
            any::<bool>(),
        ),
        (
            prop::collection::vec(any::<prop::sample::Index>(), 1..4),
            prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        ),
        prop::option::of(1u32..6),
        prop::option::of(prop_oneof![
            Just(Filter::BlobNone),
            Just(Filter::Tree(1)),
            (10u64..2000).prop_map(Filter::BlobLimit)
        ]),
        any::<[bool; 5]>(),
    )
        .prop_map(
            |(
                (seed, commits, branches, merge_every, tag_every, sha256),
                (wants, haves),
                depth,
                filter,
                flags,
            )| {
                let spec = RepoSpec {
                    seed,
                    commits,
                    branches,
                    merge_every,
                    tag_every,
                    files: 4,
                    binary_every: 5,
                    binary_bytes: 2048,
                    large_every: 0,
                    large_bytes: 1 << 20,
                    depth: 0,
                    moved_dirs: 0,
                    most_files: 0,
                    object_format: if sha256 { "sha256" } else { "sha1" },
                };
                Shape {
                    spec,
                    wants,
                    haves,
                    depth,
                    filter,
                    thin: flags[0],
                    ofs: flags[1],
                    include_tag: flags[2],
                    done: flags[3],
                    graph: flags[4],
                }
            },
        )
}

fn commits(fx: &Fixture) -> Vec<ObjectId> {
    git(&fx.src, &["rev-list", "--all", "--topo-order"])
        .lines()
        .map(|l| ObjectId::from_hex(l.as_bytes()).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_on_random_graphs_answer_as_git(shape in shape()) {
        let fx = Fixture::new(shape.spec.clone());
        if shape.graph {
            git(&fx.src, &["repack", "-adq"]);
            let repo = gitcache_pack::Repository::open(&fx.src).unwrap();
            let pack = std::fs::read_dir(fx.src.join("objects/pack"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "pack"))
                .unwrap();
            prop_assert!(repo.write_commit_graph(&pack).unwrap().is_some());
            prop_assert!(repo.commits_in_graphs().unwrap() > 0);
        }
        let all = commits(&fx);
        let wants: Vec<ObjectId> = shape.wants.iter().map(|i| *i.get(&all)).collect();
        let mut haves: Vec<ObjectId> = shape.haves.iter().map(|i| *i.get(&all)).collect();
        haves.retain(|h| !wants.contains(h));
        // The client really has its haves (with their history).
        let client = fx.empty_client("client");
        if !haves.is_empty() {
            let url = format!("file://{}", fx.src.display());
            let mut args = vec!["fetch".to_owned(), "--quiet".to_owned(), url];
            args.extend(haves.iter().enumerate().map(|(i, h)| format!("{h}:refs/heads/h{i}")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            fx.client.run(&client, &args).unwrap().expect_success();
        }
        let mut f = fetch(wants);
        f.haves = haves;
        f.deepen = shape.depth;
        f.filter = shape.filter.clone();
        (f.thin_pack, f.ofs_delta, f.include_tag, f.done) = (shape.thin, shape.ofs, shape.include_tag, shape.done);
        run(Case { name: &format!("{shape:?}"), fixture: &fx, client, fetch: f });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Whether the histories of two sets of commits meet, as git's `rev-list` finds it: on a
    /// graph with branches and merges, beside an unrelated history, either side taken from
    /// both.
    #[test]
    fn histories_are_found_to_meet_as_git_finds_them(
        seed in any::<u64>(),
        tips in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        known in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        tips_from_other in any::<bool>(),
    ) {
        let fx = Fixture::new(RepoSpec::small(seed));
        let other = fx.dir.path().join("other.git");
        repo::generate(&other, &RepoSpec::tiny(seed.wrapping_add(1))).unwrap();
        let other = other.display().to_string();
        git(&fx.src, &["fetch", "-q", &other, "+refs/heads/*:refs/other/*"]);
        let all = commits(&fx);
        // Half the time the tips are all in the unrelated history, so that histories that
        // never meet come up as often as those that do.
        let others: Vec<ObjectId> = git(&fx.src, &["rev-list", "--glob=refs/other"])
            .lines()
            .map(|l| ObjectId::from_hex(l.as_bytes()).unwrap())
            .collect();
        let tips_among = if tips_from_other { &others } else { &all };
        let tips: Vec<ObjectId> = tips.iter().map(|i| *i.get(tips_among)).collect();
        let known: Vec<ObjectId> = known.iter().map(|i| *i.get(&all)).collect();
        let reached = |ids: &[ObjectId]| -> std::collections::BTreeSet<String> {
            if ids.is_empty() {
                return Default::default();
            }
            let mut args = vec!["rev-list".to_owned()];
            args.extend(ids.iter().map(ToString::to_string));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            git(&fx.src, &args).lines().map(str::to_owned).collect()
        };
        let meet = !reached(&tips).is_disjoint(&reached(&known));
        let repo = gitcache_pack::Repository::open(&fx.src).unwrap();
        prop_assert_eq!(repo.shares_history(&tips, &known).unwrap(), meet);
        prop_assert_eq!(repo.shares_history(&known, &tips).unwrap(), meet);
    }
}
