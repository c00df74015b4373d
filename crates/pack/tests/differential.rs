//! Differential tests: the same request body goes to our planner and to
//! `git upload-pack --stateless-rpc` on the same repository.
//!
//! For every case:
//! - `acknowledgments`, `wanted-refs` and `shallow-info` equal git's, line for line;
//! - our pack passes `git index-pack --strict` (with `--fix-thin`) in a repository holding
//!   exactly what the client has;
//! - the objects our pack adds to the client equal the objects git's pack adds;
//! - the client, with our pack and the new shallow boundary, passes `git fsck`.

mod common;

use common::{Case, Fixture, fetch, git, index_ids, refs_of, run, shallow_of, upload_pack};
use gitcache_pack::{Options, Plan, Repository, plan};
use gitcache_protocol::filter::{Filter, ObjectType};
use gitcache_protocol::{ObjectFormat, ObjectId};
use gitcache_testkit::repo::{self, RepoSpec};

fn clone_cases(spec: RepoSpec) {
    let fx = Fixture::new(spec);
    let all_refs = refs_of(&fx.src, "refs/");
    let main = fx.rev("refs/heads/main");
    for (name, thin, ofs, tags) in [
        ("full", true, true, false),
        ("no-ofs", false, false, false),
        ("include-tag", true, true, true),
    ] {
        let mut f = fetch(all_refs.clone());
        (f.thin_pack, f.ofs_delta, f.include_tag) = (thin, ofs, tags);
        run(Case {
            name,
            fixture: &fx,
            client: fx.empty_client(&format!("c-{name}")),
            fetch: f,
        });
    }
    let mut single = fetch(vec![main]);
    single.include_tag = true;
    run(Case {
        name: "single-branch",
        fixture: &fx,
        client: fx.empty_client("c-single"),
        fetch: single,
    });
    for depth in [1, 3] {
        let mut f = fetch(vec![main]);
        f.deepen = Some(depth);
        f.include_tag = true;
        let (m, _) = run(Case {
            name: "depth",
            fixture: &fx,
            client: fx.empty_client(&format!("c-depth{depth}")),
            fetch: f,
        });
        assert!(!m.shallow.is_empty());
    }
    let mut all_depth = fetch(all_refs.clone());
    all_depth.deepen = Some(2);
    run(Case {
        name: "depth-2-all-refs",
        fixture: &fx,
        client: fx.empty_client("c-depth-all"),
        fetch: all_depth,
    });
}

#[test]
fn clones_sha1() {
    clone_cases(RepoSpec::small(21));
}

#[test]
fn clones_sha256() {
    clone_cases(
        RepoSpec {
            commits: 40,
            ..RepoSpec::small(22)
        }
        .sha256(),
    );
}

#[test]
fn shallow_since_and_not() {
    let fx = Fixture::new(RepoSpec::small(23));
    let main = fx.rev("refs/heads/main");
    let since: u64 = git(&fx.src, &["log", "-1", "--format=%ct", "main~10"])
        .trim()
        .parse()
        .unwrap();
    let mut f = fetch(vec![main]);
    f.deepen_since = Some(since);
    run(Case {
        name: "deepen-since",
        fixture: &fx,
        client: fx.empty_client("since"),
        fetch: f,
    });
    // `deepen-since 0`: every commit, as git reads it.
    let mut f = fetch(vec![main]);
    f.deepen_since = Some(0);
    run(Case {
        name: "deepen-since-0",
        fixture: &fx,
        client: fx.empty_client("since-0"),
        fetch: f,
    });
    let mut f = fetch(vec![main]);
    f.deepen_not = vec!["v1.0".into()];
    run(Case {
        name: "deepen-not",
        fixture: &fx,
        client: fx.empty_client("not"),
        fetch: f,
    });
    let mut f = fetch(vec![main]);
    f.deepen_not = vec!["refs/tags/v3.0".into(), "light-4".into()];
    run(Case {
        name: "deepen-not-two",
        fixture: &fx,
        client: fx.empty_client("not2"),
        fetch: f,
    });
}

#[test]
fn deepening_a_shallow_clone() {
    let fx = Fixture::new(RepoSpec::small(24));
    let main = fx.rev("refs/heads/main");
    let client = fx.clone_client("shallow", &["--depth=2", "--single-branch"]);
    let client_shallow = shallow_of(&client);
    assert!(!client_shallow.is_empty());

    let mut f = fetch(vec![main]);
    (f.haves, f.shallows, f.deepen, f.deepen_relative) =
        (vec![main], client_shallow.clone(), Some(3), true);
    run(Case {
        name: "deepen-relative",
        fixture: &fx,
        client: client.clone(),
        fetch: f,
    });

    let mut f = fetch(vec![main]);
    (f.haves, f.shallows, f.deepen) = (vec![main], client_shallow.clone(), Some(5));
    run(Case {
        name: "deepen-absolute",
        fixture: &fx,
        client: client.clone(),
        fetch: f,
    });

    let mut f = fetch(vec![main]);
    (f.haves, f.shallows, f.deepen) = (vec![main], client_shallow.clone(), Some(0x7fff_ffff));
    let (m, _) = run(Case {
        name: "unshallow",
        fixture: &fx,
        client: client.clone(),
        fetch: f,
    });
    assert_eq!(m.unshallow.len(), client_shallow.len());

    // `deepen-since 0` deepens a shallow client to every commit, as git reads it.
    let mut f = fetch(vec![main]);
    (f.haves, f.shallows, f.deepen_since) = (vec![main], client_shallow.clone(), Some(0));
    let (m, _) = run(Case {
        name: "deepen-since-0-unshallows",
        fixture: &fx,
        client: client.clone(),
        fetch: f,
    });
    assert_eq!(m.unshallow.len(), client_shallow.len());

    // A shallow client fetching new commits without deepening.
    let new_tip = repo::append_commits(&fx.src, "main", 4, 3).unwrap();
    let new_tip = ObjectId::from_hex(new_tip.as_bytes()).unwrap();
    let mut f = fetch(vec![new_tip]);
    (f.haves, f.shallows, f.thin_pack) = (vec![main], client_shallow, true);
    run(Case {
        name: "shallow-incremental",
        fixture: &fx,
        client,
        fetch: f,
    });
}

#[test]
fn incremental_fetches_and_negotiation() {
    let fx = Fixture::new(RepoSpec::small(25));
    let old_main = fx.rev("refs/heads/main");
    let far = fx.clone_client("far", &[]);
    repo::append_commits(&fx.src, "main", 50, 4).unwrap();
    let mid_main = fx.rev("refs/heads/main");
    let near = fx.clone_client("near", &[]);
    repo::append_commits(&fx.src, "main", 3, 5).unwrap();
    let new_main = fx.rev("refs/heads/main");

    for (name, client, have, thin) in [
        ("near-thin", &near, mid_main, true),
        ("near-fat", &near, mid_main, false),
        ("far-thin", &far, old_main, true),
        ("far-fat", &far, old_main, false),
    ] {
        let mut f = fetch(vec![new_main]);
        f.haves = refs_of(client, "refs/heads/");
        assert!(f.haves.contains(&have));
        f.thin_pack = thin;
        run(Case {
            name,
            fixture: &fx,
            client: client.clone(),
            fetch: f,
        });
    }

    // Haves the server lacks are not acknowledged; the known one is.
    let unknown = ObjectId::from_hex(b"0123456789012345678901234567890123456789").unwrap();
    let mut f = fetch(vec![new_main]);
    f.haves = vec![unknown, mid_main];
    f.thin_pack = true;
    run(Case {
        name: "unknown-have-done",
        fixture: &fx,
        client: near.clone(),
        fetch: f,
    });

    // Regression: a repeated have, and a have that is the parent of an earlier one, are
    // acknowledged once (git lists a commit it already knows the client has only once).
    let parent = fx.rev(&format!("{mid_main}^"));
    let mut f = fetch(vec![new_main]);
    (f.done, f.haves) = (false, vec![mid_main, mid_main, parent, old_main]);
    let (m, _) = run(Case {
        name: "repeated-and-parent-haves",
        fixture: &fx,
        client: near.clone(),
        fetch: f,
    });
    assert_eq!(m.acks, vec![mid_main, old_main]);

    // Negotiation rounds without done: not ready with only unknown haves, ready with a common one.
    let mut f = fetch(vec![new_main]);
    (f.done, f.haves) = (false, vec![unknown]);
    let (m, _) = run(Case {
        name: "negotiate-unknown",
        fixture: &fx,
        client: near.clone(),
        fetch: f,
    });
    assert!(m.nak && !m.ready && m.pack.is_none());
    let mut f = fetch(vec![new_main]);
    (f.done, f.haves) = (false, vec![unknown, mid_main]);
    let (m, _) = run(Case {
        name: "negotiate-ready",
        fixture: &fx,
        client: near.clone(),
        fetch: f,
    });
    assert!(m.ready && m.pack.is_some());
    // Issue 12: wants along one chain, newest first, with one old have and no done (each
    // want's walk used to start over: quadratic). Git's answer, acknowledgments and readiness
    // alike.
    let chain: Vec<ObjectId> = git(&fx.src, &["rev-list", "--first-parent", "-n", "40", "main"])
        .lines()
        .map(|l| ObjectId::from_hex(l.as_bytes()).unwrap())
        .collect();
    for (name, done) in [("chained-wants", false), ("chained-wants-done", true)] {
        let mut f = fetch(chain.clone());
        (f.done, f.haves) = (done, vec![old_main]);
        let (m, _) = run(Case {
            name,
            fixture: &fx,
            client: far.clone(),
            fetch: f,
        });
        assert!(m.ready || done, "{name}: ready with a common have");
    }
    let mut f = fetch(vec![new_main]);
    (f.done, f.haves, f.wait_for_done) = (false, vec![mid_main], true);
    let (m, _) = run(Case {
        name: "wait-for-done",
        fixture: &fx,
        client: near,
        fetch: f,
    });
    assert!(!m.ready && m.pack.is_none());
}

/// `commit` objects written by hand into `repo` with the given committer time: its tree and
/// parents.
fn dated_commit(repo: &std::path::Path, tree: &str, parents: &[&ObjectId], time: u64) -> ObjectId {
    let mut text = format!("tree {tree}\n");
    for parent in parents {
        text.push_str(&format!("parent {parent}\n"));
    }
    text.push_str(&format!(
        "author A <a@example.com> {time} +0000\ncommitter A <a@example.com> {time} +0000\n\nc\n"
    ));
    let out = gitcache_testkit::git::git_with_input(
        repo,
        &["hash-object", "-t", "commit", "-w", "--stdin"],
        text.as_bytes(),
    );
    ObjectId::from_hex(String::from_utf8(out).unwrap().trim().as_bytes()).unwrap()
}

/// `deepen-since` alone walks as git's rev-list does without anything to leave out: a
/// commit older than the cutoff hides only itself, so a newer commit below it that another
/// path reaches is still sent (clock skew: a parent newer than its child).
#[test]
fn deepen_since_alone_hides_only_the_older_commits() {
    let fx = Fixture::new(RepoSpec::tiny(29));
    let tree = git(&fx.src, &["rev-parse", "main^{tree}"])
        .trim()
        .to_owned();
    let t = 1_700_000_000;
    let root = dated_commit(&fx.src, &tree, &[], t + 50);
    let skewed = dated_commit(&fx.src, &tree, &[&root], t + 10);
    let side = dated_commit(&fx.src, &tree, &[&root], t + 90);
    let tip = dated_commit(&fx.src, &tree, &[&skewed, &side], t + 100);
    git(
        &fx.src,
        &["update-ref", "refs/heads/skewed", &tip.to_string()],
    );
    git(
        &fx.src,
        &["update-ref", "refs/heads/side", &side.to_string()],
    );
    for (name, wants) in [
        ("since-skewed-both", vec![tip, side]),
        ("since-skewed-tip", vec![tip]),
    ] {
        let mut f = fetch(wants);
        f.deepen_since = Some(t + 40);
        let (m, _) = run(Case {
            name,
            fixture: &fx,
            client: fx.empty_client(name),
            fetch: f,
        });
        assert_eq!(m.shallow, vec![tip], "{name}");
    }
}

/// Readiness does not hang on the order of the wants: one that reaches the client's commit
/// only through another want, whose date is older than the client's oldest have, is found
/// to reach it when the wants are taken oldest first, as git takes them.
#[test]
fn readiness_takes_the_wants_oldest_first() {
    let fx = Fixture::new(RepoSpec::tiny(28));
    let tree = git(&fx.src, &["rev-parse", "main^{tree}"])
        .trim()
        .to_owned();
    let base = dated_commit(&fx.src, &tree, &[], 1_700_000_050);
    let have = dated_commit(&fx.src, &tree, &[&base], 1_700_000_100);
    git(
        &fx.src,
        &["update-ref", "refs/heads/have", &have.to_string()],
    );
    let client = fx.clone_client("skewed", &[]);
    let older = dated_commit(&fx.src, &tree, &[&base], 1_700_000_070);
    let newer = dated_commit(&fx.src, &tree, &[&older], 1_700_000_110);
    git(
        &fx.src,
        &["update-ref", "refs/heads/older", &older.to_string()],
    );
    git(
        &fx.src,
        &["update-ref", "refs/heads/newer", &newer.to_string()],
    );
    for (name, wants) in [
        ("skewed-newest-first", vec![newer, older]),
        ("skewed-oldest-first", vec![older, newer]),
    ] {
        let mut f = fetch(wants);
        (f.done, f.haves) = (false, vec![have]);
        let (m, _) = run(Case {
            name,
            fixture: &fx,
            client: client.clone(),
            fetch: f,
        });
        assert!(m.ready && m.pack.is_some(), "{name}");
    }
}

#[test]
fn filters_tags_and_want_ref() {
    let fx = Fixture::new(RepoSpec::small(26));
    let all_refs = refs_of(&fx.src, "refs/");
    let main = fx.rev("refs/heads/main");
    let filters = [
        Filter::BlobNone,
        Filter::BlobLimit(1000),
        Filter::Tree(0),
        Filter::Tree(1),
        Filter::Tree(2),
        Filter::Combine(vec![Filter::BlobLimit(5000), Filter::Tree(3)]),
        // Repeated and nested sub-filters: one seen map for all, repeats kept once.
        Filter::Combine(vec![
            Filter::Tree(2),
            Filter::BlobLimit(5000),
            Filter::Tree(2),
            Filter::Combine(vec![Filter::BlobLimit(5000), Filter::Tree(3)]),
            Filter::BlobLimit(5000),
        ]),
        Filter::ObjectType(gitcache_protocol::filter::ObjectType::Blob),
        Filter::ObjectType(gitcache_protocol::filter::ObjectType::Tree),
    ];
    for (i, filter) in filters.into_iter().enumerate() {
        let name = format!("filter {filter}");
        let mut f = fetch(all_refs.clone());
        f.filter = Some(filter);
        run(Case {
            name: &name,
            fixture: &fx,
            client: fx.empty_client(&format!("filter{i}")),
            fetch: f,
        });
    }
    // A blob wanted by id under blob:none (what a partial clone's lazy fetch sends) is sent.
    let blob = ObjectId::from_hex(
        git(&fx.src, &["rev-parse", "main:scripts/build.sh"])
            .trim()
            .as_bytes(),
    )
    .unwrap();
    let mut f = fetch(vec![blob]);
    f.filter = Some(Filter::BlobNone);
    run(Case {
        name: "lazy-blob",
        fixture: &fx,
        client: fx.empty_client("lazy"),
        fetch: f,
    });

    let mut f = fetch(Vec::new());
    f.want_refs = [
        "refs/heads/main",
        "refs/tags/v1.0",
        "refs/heads/feature/1",
        "refs/heads/feature/2",
        "refs/tags/light-2",
    ]
    .into_iter()
    .map(Into::into)
    .collect();
    let (m, _) = run(Case {
        name: "want-ref",
        fixture: &fx,
        client: fx.empty_client("wantref"),
        fetch: f,
    });
    assert_eq!(m.wanted_refs.len(), 5);

    // include-tag over an incremental fetch brings the new annotated tag (and a tag of a tag).
    let client = fx.clone_client("tagged", &["--no-tags", "--single-branch"]);
    let mut f = fetch(vec![main]);
    f.include_tag = true;
    f.haves = refs_of(&client, "refs/heads/");
    run(Case {
        name: "include-tag-incremental",
        fixture: &fx,
        client,
        fetch: f,
    });
}

#[test]
fn errors_come_with_gits_wording() {
    let fx = Fixture::new(RepoSpec::tiny(27));
    let repo = Repository::open(&fx.src).unwrap();
    let missing = ObjectId::from_hex(b"1111111111111111111111111111111111111111").unwrap();
    let err = plan(
        &repo,
        &fetch(vec![missing]),
        ObjectFormat::Sha1,
        &Options::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.wire_message(),
        format!("upload-pack: not our ref {missing}")
    );
    assert!(err.is_client_error());
    // Names as git reads them (`read_ref`): exactly, a short name or one git refuses naming
    // no ref.
    for name in ["refs/heads/nope", "main", "heads/main", "refs/heads/a..b"] {
        let mut f = fetch(Vec::new());
        f.want_refs = vec![name.into()];
        let err = plan(&repo, &f, ObjectFormat::Sha1, &Options::default()).unwrap_err();
        assert_eq!(err.wire_message(), format!("unknown ref {name}"));
    }
    // `deepen-not` names that name no ref (one git refuses among them) are ambiguous to git;
    // what the message quotes of the client's name is cut and escaped.
    for (name, shown) in [
        ("nope", "nope"),
        ("a..b", "a..b"),
        ("refs/heads/a..b", "refs/heads/a..b"),
        ("main\nforged", "main\\nforged"),
    ] {
        let mut f = fetch(vec![fx.rev("main")]);
        f.deepen_not = vec![name.into()];
        let err = plan(&repo, &f, ObjectFormat::Sha1, &Options::default()).unwrap_err();
        assert!(err.is_client_error(), "{name}: {err}");
        assert_eq!(
            err.wire_message(),
            format!("git upload-pack: ambiguous deepen-not: deepen-not {shown}")
        );
    }
    let mut f = fetch(Vec::new());
    f.want_refs = vec!["refs/heads/main".into(), "refs/heads/main".into()];
    let err = plan(&repo, &f, ObjectFormat::Sha1, &Options::default()).unwrap_err();
    assert_eq!(err.wire_message(), "duplicate want-ref refs/heads/main");
    let err = plan(
        &repo,
        &fetch(vec![fx.rev("main")]),
        ObjectFormat::Sha256,
        &Options::default(),
    )
    .unwrap_err();
    assert!(err.wire_message().starts_with("mismatched object format"));
    let mut f = fetch(vec![fx.rev("main")]);
    f.filter = Some(Filter::SparseOid("main:sparse".into()));
    let err = plan(&repo, &f, ObjectFormat::Sha1, &Options::default()).unwrap_err();
    assert_eq!(err.wire_message(), "filter 'sparse:oid' not supported");
    // No wants: git answers nothing.
    assert!(matches!(
        plan(
            &repo,
            &fetch(Vec::new()),
            ObjectFormat::Sha1,
            &Options::default()
        )
        .unwrap(),
        Plan::Nothing
    ));
    assert!(upload_pack(&fx.src, &fx.body(fetch(Vec::new()))).is_empty());
}

/// With reachability bitmaps on both sides (git's `repack -b` here, which our planner reads
/// as it reads the ones mirrors write): clones, `blob:none` and incremental fetches give the
/// same objects as git's bitmap answer.
#[test]
fn with_reachability_bitmaps() {
    for spec in [RepoSpec::small(31), RepoSpec::small(32).sha256()] {
        let fx = Fixture::new(spec);
        let old_main = fx.rev("refs/heads/main");
        let far = fx.clone_client("far", &[]);
        repo::append_commits(&fx.src, "main", 30, 6).unwrap();
        let mid_main = fx.rev("refs/heads/main");
        let near = fx.clone_client("near", &[]);
        repo::append_commits(&fx.src, "main", 3, 7).unwrap();
        git(&fx.src, &["repack", "-adb", "-q"]);
        assert!(
            std::fs::read_dir(fx.src.join("objects/pack"))
                .unwrap()
                .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "bitmap"))
        );
        let all_refs = refs_of(&fx.src, "refs/");
        let main = fx.rev("refs/heads/main");
        for (name, wants, tags, filter) in [
            ("bitmap-full", all_refs.clone(), false, None),
            ("bitmap-include-tag", all_refs.clone(), true, None),
            ("bitmap-single", vec![main], true, None),
            (
                "bitmap-blob-none",
                all_refs.clone(),
                true,
                Some(Filter::BlobNone),
            ),
            (
                "bitmap-blob-none-single",
                vec![main],
                false,
                Some(Filter::BlobNone),
            ),
            (
                "bitmap-tree-0",
                all_refs.clone(),
                true,
                Some(Filter::Tree(0)),
            ),
            (
                "bitmap-tree-0-single",
                vec![main],
                false,
                Some(Filter::Tree(0)),
            ),
            (
                "bitmap-blob-limit",
                all_refs.clone(),
                true,
                Some(Filter::BlobLimit(1000)),
            ),
            (
                "bitmap-type-blob",
                all_refs.clone(),
                false,
                Some(Filter::ObjectType(ObjectType::Blob)),
            ),
            (
                "bitmap-type-tree",
                vec![main],
                false,
                Some(Filter::ObjectType(ObjectType::Tree)),
            ),
            (
                "bitmap-type-commit",
                all_refs.clone(),
                true,
                Some(Filter::ObjectType(ObjectType::Commit)),
            ),
            (
                "bitmap-type-tag",
                all_refs.clone(),
                false,
                Some(Filter::ObjectType(ObjectType::Tag)),
            ),
            (
                "bitmap-combine",
                all_refs.clone(),
                false,
                Some(Filter::Combine(vec![
                    Filter::BlobLimit(5000),
                    Filter::ObjectType(ObjectType::Blob),
                ])),
            ),
        ] {
            bitmap_clone(&fx, name, wants, tags, filter);
        }
        for (name, client, have, thin) in [
            ("bitmap-near-thin", &near, mid_main, true),
            ("bitmap-near-fat", &near, mid_main, false),
            ("bitmap-far-thin", &far, old_main, true),
        ] {
            bitmap_fetch(&fx, name, vec![main], (client, have), thin, None);
        }
    }
}

/// A mirror between two consolidations: its bitmapped pack, and packs fetched since that
/// hold newer commits, a new branch and a new annotated tag. Answers are still taken from the
/// bitmaps, the objects beyond the bitmapped pack found by id as the walk meets them (git's
/// extended index), and are git's: clones, filters, `include-tag`, and incremental fetches
/// whose haves lie in the bitmapped pack or beyond it.
#[test]
fn with_bitmaps_and_packs_fetched_since() {
    for spec in [RepoSpec::small(36), RepoSpec::small(37).sha256()] {
        let fx = Fixture::new(spec);
        git(&fx.src, &["repack", "-adb", "-q"]);
        let old_main = fx.rev("refs/heads/main");
        let far = fx.clone_client("far", &[]);
        // Each append packed on its own (`repack -d` without `-a` packs the loose objects
        // alone), beside the bitmapped pack.
        repo::append_commits(&fx.src, "main", 6, 11).unwrap();
        git(&fx.src, &["repack", "-dq"]);
        let mid_main = fx.rev("refs/heads/main");
        let near = fx.clone_client("near", &[]);
        let near_only = fx.clone_client("near-only", &[]);
        repo::append_commits(&fx.src, "main", 4, 12).unwrap();
        git(&fx.src, &["repack", "-dq"]);
        git(&fx.src, &["branch", "topic", "main~2"]);
        repo::append_commits(&fx.src, "topic", 3, 13).unwrap();
        git(
            &fx.src,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@e",
                "tag",
                "-a",
                "-m",
                "release beyond the bitmaps",
                "v-beyond",
                "topic",
            ],
        );
        git(&fx.src, &["repack", "-dq"]);
        let packs = std::fs::read_dir(fx.src.join("objects/pack"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "pack")
            })
            .count();
        assert_eq!(packs, 4, "the bitmapped pack and three fetched since");
        let all_refs = refs_of(&fx.src, "refs/");
        let main = fx.rev("refs/heads/main");
        let tag = fx.rev("refs/tags/v-beyond");
        // Not a blob of the tree named too, and no commit of that tree with `tree:0`: git
        // leaves a named object out under a filter when its walk met it first through another
        // want beyond the pack (the filter marks it seen there), which gitcache does not copy:
        // it sends every object a want names.
        let named = vec![fx.rev("main^{tree}"), fx.rev("topic:appended/LAST"), main];
        for (name, wants, tags, filter) in [
            ("beyond-full", all_refs.clone(), false, None),
            (
                "beyond-include-tag",
                vec![main, fx.rev("refs/heads/topic")],
                true,
                None,
            ),
            ("beyond-single", vec![main], true, None),
            ("beyond-tag", vec![tag], false, None),
            // A tree and a blob beyond the pack named by wants: sent whatever the filter.
            ("beyond-named", named.clone(), false, Some(Filter::BlobNone)),
            (
                "beyond-named-tree-0",
                named[..2].to_vec(),
                false,
                Some(Filter::Tree(0)),
            ),
            (
                "beyond-blob-none",
                all_refs.clone(),
                true,
                Some(Filter::BlobNone),
            ),
            (
                "beyond-blob-none-single",
                vec![main],
                false,
                Some(Filter::BlobNone),
            ),
            (
                "beyond-tree-0",
                all_refs.clone(),
                true,
                Some(Filter::Tree(0)),
            ),
            ("beyond-tree-0-tag", vec![tag], false, Some(Filter::Tree(0))),
            (
                "beyond-blob-limit",
                all_refs.clone(),
                true,
                Some(Filter::BlobLimit(200)),
            ),
            (
                "beyond-type-blob",
                all_refs.clone(),
                false,
                Some(Filter::ObjectType(ObjectType::Blob)),
            ),
            (
                "beyond-type-commit",
                all_refs.clone(),
                true,
                Some(Filter::ObjectType(ObjectType::Commit)),
            ),
            (
                "beyond-type-tag",
                all_refs.clone(),
                false,
                Some(Filter::ObjectType(ObjectType::Tag)),
            ),
        ] {
            bitmap_clone(&fx, name, wants, tags, filter);
        }
        for (name, client, have, thin, filter) in [
            ("beyond-near-thin", &near, mid_main, true, None),
            ("beyond-near-fat", &near, mid_main, false, None),
            ("beyond-far-thin", &far, old_main, true, None),
            (
                "beyond-near-blob-none",
                &near,
                mid_main,
                true,
                Some(Filter::BlobNone),
            ),
            (
                "beyond-near-tree-0",
                &near,
                mid_main,
                true,
                Some(Filter::Tree(0)),
            ),
            (
                "beyond-far-blob-limit",
                &far,
                old_main,
                false,
                Some(Filter::BlobLimit(200)),
            ),
        ] {
            let wants = vec![main, fx.rev("refs/heads/topic")];
            bitmap_fetch(&fx, name, wants, (client, have), thin, filter);
        }
        // Every have beyond the bitmapped pack (the client's other branches, which lie in it,
        // not told): walked down to them, as git does, the packs beyond holding more than a
        // 32nd of the bitmapped pack's objects here (the other side of that line is
        // `haves_a_push_past_the_bitmapped_pack_are_answered_from_the_bitmaps`).
        let (bitmapped, beyond) = objects_in_packs(&fx.src);
        assert!(
            bitmapped > 0 && beyond * 32 > bitmapped,
            "{beyond} beyond, {bitmapped} in the pack"
        );
        let wants = vec![main, fx.rev("refs/heads/topic")];
        for (name, filter) in [
            ("beyond-haves-only", None),
            ("beyond-haves-only-blob-none", Some(Filter::BlobNone)),
        ] {
            let mut f = fetch_of(wants.clone(), (&near_only, mid_main), true, filter);
            f.haves = vec![mid_main];
            let repo = Repository::open(&fx.src).unwrap();
            let Plan::Pack(plan) =
                plan(&repo, &f, repo.object_format(), &Options::default()).unwrap()
            else {
                panic!("{name}: a pack");
            };
            assert!(!plan.used_bitmaps(), "{name}: answered from the bitmaps");
            run(Case {
                name,
                fixture: &fx,
                client: near_only.clone(),
                fetch: f,
            });
        }
    }
}

/// The objects of `repo`'s pack that has bitmaps, and those of its other packs.
fn objects_in_packs(repo: &std::path::Path) -> (usize, usize) {
    let format = git(repo, &["rev-parse", "--show-object-format"]);
    let format = format.trim();
    let (mut bitmapped, mut beyond) = (0, 0);
    for entry in std::fs::read_dir(repo.join("objects/pack")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "idx") {
            continue;
        }
        let count = index_ids(&path, format).len();
        match path.with_extension("bitmap").exists() {
            true => bitmapped += count,
            false => beyond += count,
        }
    }
    (bitmapped, beyond)
}

/// A mirror a push or two past its consolidation (a pack of 120 commits and two packs of a
/// commit each fetched since): a fetch whose every have lies beyond the bitmapped pack is
/// answered from the bitmaps (the walk down to the pack's commits is short), and is git's,
/// thin or not, with a filter or not, SHA-1 and SHA-256.
#[test]
fn haves_a_push_past_the_bitmapped_pack_are_answered_from_the_bitmaps() {
    for spec in [RepoSpec::small(38), RepoSpec::small(39).sha256()] {
        let fx = Fixture::new(spec);
        git(&fx.src, &["repack", "-adb", "-q"]);
        repo::append_commits(&fx.src, "main", 1, 21).unwrap();
        git(&fx.src, &["repack", "-dq"]);
        let pushed = fx.rev("refs/heads/main");
        let client = fx.clone_client("pushed", &[]);
        repo::append_commits(&fx.src, "main", 1, 22).unwrap();
        git(&fx.src, &["repack", "-dq"]);
        let main = fx.rev("refs/heads/main");
        for (name, thin, filter) in [
            ("push-past-thin", true, None),
            ("push-past-fat", false, None),
            ("push-past-blob-none", true, Some(Filter::BlobNone)),
        ] {
            let mut f = fetch_of(vec![main], (&client, pushed), thin, filter);
            f.haves = vec![pushed];
            let repo = Repository::open(&fx.src).unwrap();
            let Plan::Pack(plan) =
                plan(&repo, &f, repo.object_format(), &Options::default()).unwrap()
            else {
                panic!("{name}: a pack");
            };
            assert!(plan.used_bitmaps(), "{name}: walked");
            run(Case {
                name,
                fixture: &fx,
                client: client.clone(),
                fetch: f,
            });
        }
    }
}

/// A clone of `wants` into an empty client, answered from the bitmaps, against git's.
fn bitmap_clone(
    fx: &Fixture,
    name: &str,
    wants: Vec<ObjectId>,
    include_tag: bool,
    filter: Option<Filter>,
) {
    let mut f = fetch(wants);
    f.include_tag = include_tag;
    f.filter = filter;
    assert_bitmaps(fx, &f, name);
    run(Case {
        name,
        fixture: fx,
        client: fx.empty_client(&format!("c-{name}")),
        fetch: f,
    });
}

/// A fetch of `wants` by `client`, which has its branches (`have` among them), answered
/// from the bitmaps, with `include-tag`, against git's.
fn bitmap_fetch(
    fx: &Fixture,
    name: &str,
    wants: Vec<ObjectId>,
    (client, have): (&std::path::PathBuf, ObjectId),
    thin: bool,
    filter: Option<Filter>,
) {
    let f = fetch_of(wants, (client, have), thin, filter);
    assert_bitmaps(fx, &f, name);
    run(Case {
        name,
        fixture: fx,
        client: client.clone(),
        fetch: f,
    });
}

/// A fetch of `wants`, with `include-tag`, by `client`, which has its branches (`have`
/// among them).
fn fetch_of(
    wants: Vec<ObjectId>,
    (client, have): (&std::path::PathBuf, ObjectId),
    thin: bool,
    filter: Option<Filter>,
) -> gitcache_protocol::request::Fetch {
    let mut f = fetch(wants);
    f.haves = refs_of(client, "refs/heads/");
    assert!(f.haves.contains(&have));
    f.thin_pack = thin;
    f.filter = filter;
    f.include_tag = true;
    f
}

/// Our planner answers `f` from the bitmaps (or from a whole stored pack, which needs no
/// selection at all).
fn assert_bitmaps(fx: &Fixture, f: &gitcache_protocol::request::Fetch, name: &str) {
    let repo = Repository::open(&fx.src).unwrap();
    let Plan::Pack(plan) = plan(&repo, f, repo.object_format(), &Options::default()).unwrap()
    else {
        panic!("{name}: a pack");
    };
    assert!(
        plan.used_bitmaps() || plan.is_whole_pack(),
        "{name}: walked instead of using the bitmaps"
    );
}

/// With the pack's commit graph written (walks read commits from it instead of inflating
/// them), negotiation, shallow and incremental answers are git's; a damaged graph is written
/// again by maintenance, and one cut short is not read, answers still git's.
#[test]
fn with_a_commit_graph() {
    let fx = Fixture::new(RepoSpec::small(33));
    let old_main = fx.rev("refs/heads/main");
    let far = fx.clone_client("far", &[]);
    repo::append_commits(&fx.src, "main", 30, 8).unwrap();
    let mid_main = fx.rev("refs/heads/main");
    let near = fx.clone_client("near", &[]);
    repo::append_commits(&fx.src, "main", 3, 9).unwrap();
    git(&fx.src, &["repack", "-adq"]);
    let main = fx.rev("refs/heads/main");
    let repo = Repository::open(&fx.src).unwrap();
    let pack = std::fs::read_dir(fx.src.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .unwrap();
    let graph = repo.write_commit_graph(&pack).unwrap().expect("a graph");
    let commits = git(&fx.src, &["rev-list", "--all", "--count"]);
    assert_eq!(
        repo.commits_in_graphs().unwrap(),
        commits.trim().parse::<usize>().unwrap()
    );
    let since: u64 = git(&fx.src, &["log", "-1", "--format=%ct", "main~10"])
        .trim()
        .parse()
        .unwrap();
    let cases = |suffix: &str| {
        let mut thin = fetch(vec![main]);
        thin.haves = refs_of(&near, "refs/heads/");
        thin.thin_pack = true;
        let mut far_fat = fetch(vec![main]);
        far_fat.haves = refs_of(&far, "refs/heads/");
        let mut rounds = fetch(vec![main]);
        (rounds.done, rounds.haves) = (false, vec![mid_main, old_main]);
        let mut depth = fetch(vec![main]);
        depth.deepen = Some(3);
        let mut since_f = fetch(vec![main]);
        since_f.deepen_since = Some(since);
        let mut not = fetch(vec![main]);
        not.deepen_not = vec!["v1.0".into()];
        [
            (format!("graph-near-thin{suffix}"), near.clone(), thin),
            (format!("graph-far-fat{suffix}"), far.clone(), far_fat),
            (format!("graph-rounds{suffix}"), near.clone(), rounds),
            (
                format!("graph-depth{suffix}"),
                fx.empty_client(&format!("d{suffix}")),
                depth,
            ),
            (
                format!("graph-since{suffix}"),
                fx.empty_client(&format!("s{suffix}")),
                since_f,
            ),
            (
                format!("graph-not{suffix}"),
                fx.empty_client(&format!("n{suffix}")),
                not,
            ),
        ]
    };
    for (name, client, f) in cases("") {
        run(Case {
            name: &name,
            fixture: &fx,
            client,
            fetch: f,
        });
    }
    // A changed byte: loads do not read the checksum (as for bitmaps); maintenance does and
    // writes the file again.
    let good = std::fs::read(&graph).unwrap();
    let mut bytes = good.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::remove_file(&graph).unwrap();
    std::fs::write(&graph, &bytes).unwrap();
    assert_eq!(repo.write_commit_graph(&pack).unwrap(), Some(graph.clone()));
    assert_eq!(std::fs::read(&graph).unwrap(), good);
    // Cut short: refused at load, commits read from their objects.
    std::fs::remove_file(&graph).unwrap();
    std::fs::write(&graph, &good[..good.len() / 2]).unwrap();
    assert_eq!(
        Repository::open(&fx.src)
            .unwrap()
            .commits_in_graphs()
            .unwrap(),
        0
    );
    for (name, client, f) in cases("-damaged") {
        run(Case {
            name: &name,
            fixture: &fx,
            client,
            fetch: f,
        });
    }
}
