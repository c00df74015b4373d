//! Consolidation: many packs become one that clones are sent as it is.

use std::time::Duration;

use gitcache_mirror::registry::Registry;
use gitcache_pack::{Options, Plan, Repository, plan};
use gitcache_protocol::ObjectId;
use gitcache_protocol::request::Fetch;
use gitcache_storage::repo::RepoKey;
use gitcache_testkit::git::git_stdout as git;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};
use gitcache_upstream::Upstream as Client;

fn tips(repo: &Repository) -> Vec<ObjectId> {
    let mut tips: Vec<ObjectId> = repo
        .refs()
        .unwrap()
        .into_iter()
        .filter(|r| r.name != "HEAD")
        .filter_map(|r| r.oid)
        .collect();
    tips.sort();
    tips.dedup();
    tips
}

fn clone_plan(repo: &Repository) -> Plan {
    let fetch = Fetch {
        wants: tips(repo),
        done: true,
        ofs_delta: true,
        no_progress: true,
        ..Fetch::default()
    };
    plan(repo, &fetch, repo.object_format(), &Options::default()).unwrap()
}

fn packs(dir: &std::path::Path) -> usize {
    pack_files_ending(dir, "pack")
}

/// How many files of `dir`'s pack folder have the extension `ext`.
fn pack_files_ending(dir: &std::path::Path, ext: &str) -> usize {
    repo::pack_files(dir, ext).unwrap().len()
}

/// Git reads the bitmaps of `dir` and finds them right for `rev`.
fn assert_git_checks_bitmaps(dir: &std::path::Path, rev: &str) {
    let check = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-list", "--test-bitmap", rev])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success() && said.contains("OK!"), "{said}");
}

/// An upstream serving a generated `acme/<name>` (kept alive by the first value), the folder
/// of a registry (the second), where the repository's generated source is, a registry of
/// mirrors (consolidating after `consolidate_after` packs, if given), and the mirror key and
/// upstream client for the repository.
fn served(
    name: &str,
    seed: u64,
    consolidate_after: Option<usize>,
) -> (
    Upstream,
    tempfile::TempDir,
    std::path::PathBuf,
    std::sync::Arc<Registry>,
    RepoKey,
    Client,
) {
    let upstream = Upstream::start().unwrap();
    let path = format!("acme/{name}");
    let source = upstream.repo_path(&path);
    repo::generate(&source, &RepoSpec::small(seed)).unwrap();
    upstream.adopt_repo(&path, Access::Public).unwrap();
    let client = Client::new(&upstream.repo_url(&path), None, Duration::from_secs(30)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::new(dir.path());
    if let Some(packs) = consolidate_after {
        registry = registry.with_consolidate_after(packs);
    }
    let key = RepoKey::new("127.0.0.1", "acme", name).unwrap();
    (
        upstream,
        dir,
        source,
        std::sync::Arc::new(registry),
        key,
        client,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_packs_become_one_that_clones_get_as_it_is() {
    let (_upstream, _dir, source, registry, key, client) = served("busy", 95, None);
    registry.refresh(&key, &client, &[]).await.unwrap();
    for seed in [1, 2] {
        repo::append_commits(&source, "main", 4, seed).unwrap();
        registry.refresh(&key, &client, &[]).await.unwrap();
    }
    // A branch deleted upstream leaves its own commits unreachable in the mirror.
    repo::append_commits(&source, "feature/2", 2, 9).unwrap();
    registry.refresh(&key, &client, &[]).await.unwrap();
    let doomed_tip = git(&source, &["rev-parse", "feature/2"]).trim().to_owned();
    git(&source, &["branch", "-D", "feature/2"]);
    registry.refresh(&key, &client, &[]).await.unwrap();
    let mirror = registry.existing(&key).unwrap();
    assert!(packs(mirror.git_dir()) >= 4);

    // A fetch planned before consolidation, written after it.
    let before = Repository::open(mirror.git_dir()).unwrap();
    let early = clone_plan(&before);

    let done = registry.consolidate(&key).await.unwrap().unwrap();
    assert!(done.packs_before >= 4);
    assert_eq!(packs(mirror.git_dir()), 1);
    let marked = done.pack.expect("the new pack is marked with its tips");
    assert!(marked.with_extension("tips").is_file());
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    let reachable = git(mirror.git_dir(), &["rev-list", "--objects", "--all"])
        .lines()
        .count();
    assert_eq!(
        done.objects as usize, reachable,
        "exactly what the refs reach"
    );
    assert!(
        std::process::Command::new("git")
            .arg("-C")
            .arg(mirror.git_dir())
            .args(["cat-file", "-e", &doomed_tip])
            .status()
            .unwrap()
            .code()
            != Some(0),
        "unreachable commits dropped"
    );

    let mut out = Vec::new();
    early.write_to(&mut out).unwrap();
    let early_pack = gitcache_protocol::response::parse_fetch_response(&out, gix_hash::Kind::Sha1)
        .unwrap()
        .pack
        .unwrap();
    assert!(early_pack.starts_with(b"PACK"));

    // Clones of all refs are now sent the stored pack as it is, with no walk.
    let repo = Repository::open(mirror.git_dir()).unwrap();
    let Plan::Pack(p) = clone_plan(&repo) else {
        panic!("a pack")
    };
    assert!(p.is_whole_pack());
    let mut raw = Vec::new();
    Plan::Pack(p).write_to(&mut raw).unwrap();
    let sent = gitcache_protocol::response::parse_fetch_response(&raw, gix_hash::Kind::Sha1)
        .unwrap()
        .pack
        .unwrap();
    assert_eq!(sent, std::fs::read(&marked).unwrap());

    // Bitmaps beside it, which git reads and checks, and which answer a fetch of one branch
    // with no walk.
    let bitmap = done.bitmap.expect("bitmaps written");
    assert_eq!(bitmap, marked.with_extension("bitmap"));
    assert_git_checks_bitmaps(mirror.git_dir(), "main");
    // And the pack's commit graph, written first: every commit, read by fetches instead of
    // the commits, and what `git commit-graph verify` accepts in git's own place.
    let graph = marked.with_extension("graph");
    assert!(graph.is_file());
    let commits: usize = git(mirror.git_dir(), &["rev-list", "--all", "--count"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(repo.commits_in_graphs().unwrap(), commits);
    std::fs::copy(&graph, mirror.git_dir().join("objects/info/commit-graph")).unwrap();
    git(
        mirror.git_dir(),
        &["commit-graph", "verify", "--no-progress"],
    );
    std::fs::remove_file(mirror.git_dir().join("objects/info/commit-graph")).unwrap();
    let main = gix_hash::ObjectId::from_hex(
        git(mirror.git_dir(), &["rev-parse", "main"])
            .trim()
            .as_bytes(),
    )
    .unwrap();
    let fetch = gitcache_protocol::request::Fetch {
        wants: vec![main],
        done: true,
        ofs_delta: true,
        no_progress: true,
        ..Default::default()
    };
    let Plan::Pack(single) =
        gitcache_pack::plan(&repo, &fetch, gix_hash::Kind::Sha1, &Default::default()).unwrap()
    else {
        panic!("a pack")
    };
    assert!(single.used_bitmaps());

    // Again: nothing to do.
    let again = registry.consolidate(&key).await.unwrap().unwrap();
    assert_eq!(again.packs_before, 1);
    assert_eq!(again.pack, Some(marked));
    assert_eq!(again.bitmap, Some(bitmap));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_consolidate_in_the_background_after_enough_packs() {
    let (_upstream, _dir, source, registry, key, client) = served("active", 96, Some(2));
    registry
        .refresh_and_maintain(&key, &client, &[])
        .await
        .unwrap();
    for seed in [1, 2] {
        repo::append_commits(&source, "main", 3, seed).unwrap();
        registry
            .refresh_and_maintain(&key, &client, &[])
            .await
            .unwrap();
    }
    // Three packs exceed the limit of two: a background consolidation leaves one.
    let mirror = registry.existing(&key).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while packs(mirror.git_dir()) != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "no consolidation happened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Wait for the background task to finish its mark, taking the per-mirror lock.
    registry.consolidate(&key).await.unwrap();
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    assert!(!registry.needs_consolidation(&key));
}

/// Issue 16: a mirror whose packs beside the consolidated one hold many objects is
/// consolidated however few those packs are (every answer from the bitmaps walks their
/// commits and trees); a few commits beside it wait for more packs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_far_past_its_consolidated_pack_is_consolidated_before_it_has_many_packs() {
    let (_upstream, _dir, source, registry, key, client) = served("far", 98, None);
    registry.refresh(&key, &client, &[]).await.unwrap();
    registry.consolidate(&key).await.unwrap().unwrap();
    assert!(!registry.needs_consolidation(&key));
    let mirror = registry.existing(&key).unwrap();

    repo::append_commits(&source, "main", 3, 1).unwrap();
    registry.refresh(&key, &client, &[]).await.unwrap();
    assert_eq!(packs(mirror.git_dir()), 2);
    assert!(!registry.needs_consolidation(&key), "a few objects beside");

    // A long absence: hundreds of commits in one refresh.
    repo::append_commits(&source, "main", 300, 2).unwrap();
    registry.refresh(&key, &client, &[]).await.unwrap();
    assert_eq!(packs(mirror.git_dir()), 3);
    let beside = git(mirror.git_dir(), &["count-objects", "-v"]);
    assert!(
        registry.needs_consolidation(&key),
        "three packs, far past the consolidated one: {beside}"
    );
    registry.consolidate(&key).await.unwrap().unwrap();
    assert_eq!(packs(mirror.git_dir()), 1);
    assert!(!registry.needs_consolidation(&key));
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// Below the free-space floor no packs are merged (that writes a pack as large as the
/// mirror's beside the others): they stay as they are until there is room. A first pack is
/// still marked and given its bitmaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_consolidation_starts_below_the_free_space_floor() {
    let (_upstream, dir, source, registry, key, client) = served("tight", 99, None);
    registry.refresh(&key, &client, &[]).await.unwrap();
    // A first pack is only marked and given its bitmaps (no pack written): that goes on.
    let tight = Registry::new(dir.path()).with_min_free(u64::MAX);
    assert!(tight.needs_consolidation(&key));
    assert!(tight.consolidate(&key).await.unwrap().is_some());
    assert!(!tight.needs_consolidation(&key), "marked, with its bitmaps");
    repo::append_commits(&source, "main", 3, 3).unwrap();
    registry.refresh(&key, &client, &[]).await.unwrap();
    let mirror = registry.existing(&key).unwrap();
    assert_eq!(packs(mirror.git_dir()), 2);
    // No disk has this much free: two packs are not merged.
    assert!(tight.consolidate(&key).await.unwrap().is_none());
    assert_eq!(packs(mirror.git_dir()), 2, "nothing written");
    let roomy = Registry::new(dir.path()).with_min_free(1);
    assert!(roomy.consolidate(&key).await.unwrap().is_some());
    assert_eq!(packs(mirror.git_dir()), 1);
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// The names in the pack folder of the repository at `git_dir`, sorted.
fn listing(git_dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(git_dir.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Below the floor, a refresh is stopped as its pack arrives (a pack is staged up to the
/// upstream's limit, more than any check before the refresh allows for): the mirror stays as
/// it was, nothing staged is left behind, and with room the same refresh goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_is_stopped_when_its_pack_takes_the_disk_below_the_floor() {
    let (_upstream, dir, source, registry, key, client) = served("floor", 98, None);
    registry.refresh(&key, &client, &[]).await.unwrap();
    let mirror = registry.existing(&key).unwrap();
    let (refs_before, packs_before) = (
        git(mirror.git_dir(), &["for-each-ref"]),
        listing(mirror.git_dir()),
    );
    let tip = repo::append_commits(&source, "main", 3, 5).unwrap();
    // No disk has this much free.
    let tight = Registry::new(dir.path()).with_min_free(u64::MAX);
    let err = tight.refresh(&key, &client, &[]).await.unwrap_err();
    assert!(
        matches!(&*err, gitcache_mirror::mirror::Error::LowDisk { keep, .. } if *keep == u64::MAX),
        "{err:?}"
    );
    assert_eq!(git(mirror.git_dir(), &["for-each-ref"]), refs_before);
    assert_eq!(
        listing(mirror.git_dir()),
        packs_before,
        "nothing staged is left"
    );
    let roomy = Registry::new(dir.path()).with_min_free(1);
    roomy.refresh(&key, &client, &[]).await.unwrap();
    assert_eq!(git(mirror.git_dir(), &["rev-parse", "main"]).trim(), tip);
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

/// Finding 49, after the download, through a refresh: a thin pack that arrived above the
/// floor but whose bases, or then whose indexes, would take the disk below it is refused,
/// nothing of it left and the refs as they were; each stop names the room a next try needs,
/// and with room the refresh goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_is_stopped_when_completing_its_pack_would_take_the_disk_below_the_floor() {
    const KEEP: u64 = 1 << 30;
    let (_upstream, dir, source, registry, key, client) = served("floor-after", 99, None);
    registry.refresh(&key, &client, &[]).await.unwrap();
    let mirror = registry.existing(&key).unwrap();
    let (refs_before, packs_before) = (
        git(mirror.git_dir(), &["for-each-ref"]),
        listing(mirror.git_dir()),
    );
    let tip = repo::append_commits(&source, "main", 3, 7).unwrap();
    let tight = Registry::new(dir.path())
        .with_min_free(KEEP)
        .with_free_space(free_as_set);
    // `free` bytes free: the refresh is stopped, what it names returned, nothing changed.
    let stopped = async |free: u64| -> (u64, u64) {
        FREE.store(free, std::sync::atomic::Ordering::SeqCst);
        let err = tight.refresh(&key, &client, &[]).await.unwrap_err();
        let gitcache_mirror::mirror::Error::LowDisk {
            free: told,
            keep,
            received,
            needed,
        } = *err
        else {
            panic!("{err:?}");
        };
        assert_eq!((told, keep), (free, KEEP));
        assert!(received > 0, "stopped after the download");
        assert_eq!(git(mirror.git_dir(), &["for-each-ref"]), refs_before);
        assert_eq!(
            listing(mirror.git_dir()),
            packs_before,
            "nothing staged is left"
        );
        (received, needed)
    };
    // A byte above the floor: the pack arrives (the floor is checked as it does), its first
    // base finds no room. More bases and the indexes were to follow: twice what arrived
    // and that base is asked for.
    let (received, needed) = stopped(KEEP + 1).await;
    assert_eq!(needed % 2, 0, "{needed}");
    let base = needed / 2 - received;
    // Room for that base (the only one), not for the indexes: exactly what arrived, the
    // base and the indexes.
    let (again, last) = stopped(KEEP + base).await;

    // With room, the same pack goes in.
    FREE.store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    tight.refresh(&key, &client, &[]).await.unwrap();
    assert_eq!(git(mirror.git_dir(), &["rev-parse", "main"]).trim(), tip);
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    // The bases were the objects of the new pack the mirror had before.
    let pack_dir = mirror.git_dir().join("objects/pack");
    let had: std::collections::HashSet<String> = packs_before
        .iter()
        .filter(|name| name.ends_with(".idx"))
        .flat_map(|name| {
            let index = std::fs::read(pack_dir.join(name)).unwrap();
            let listed = gitcache_testkit::git::git_with_input(&pack_dir, &["show-index"], &index);
            String::from_utf8(listed)
                .unwrap()
                .lines()
                .map(|line| line.split(' ').nth(1).unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    let added: Vec<String> = listing(mirror.git_dir())
        .into_iter()
        .filter(|name| !packs_before.contains(name))
        .collect();
    let size = |ext: &str| -> u64 {
        let names: Vec<&String> = added.iter().filter(|n| n.ends_with(ext)).collect();
        assert_eq!(names.len(), 1, "{added:?}");
        std::fs::metadata(pack_dir.join(names[0])).unwrap().len()
    };
    let index = added.iter().find(|n| n.ends_with(".idx")).unwrap();
    let bases: Vec<u64> = git(&pack_dir, &["verify-pack", "-v", index])
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.len() >= 5 && had.contains(fields[0]))
        .map(|fields| fields[3].parse::<u64>().unwrap())
        .collect();
    assert_eq!(bases, [base], "one base, of the size the first stop named");
    // What arrived is the pack as it was sent (its side-band's framing and progress apart),
    // completed with that base.
    assert_eq!(size(".pack"), received + base);
    assert_eq!(again, received);
    assert_eq!(
        last,
        gitcache_mirror::mirror::with_margin(again + base + size(".idx") + size(".rev")),
        "the last writes, with a margin"
    );
}

/// The disk's free space as [`free_as_set`] tells it (one test sets it: tests run at once).
static FREE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

fn free_as_set(_: &std::path::Path) -> std::io::Result<u64> {
    Ok(FREE.load(std::sync::atomic::Ordering::SeqCst))
}

/// Until the mirror of `key` no longer needs consolidating (a minute at most).
async fn until_maintained(registry: &Registry, key: &RepoKey) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while registry.needs_consolidation(key) {
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror was never maintained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 16 (a miss starts the background work after its answer): the maintenance a refresh
/// asks for waits until the answers of the clients that waited on that refresh are sent,
/// rather than taking the cores from them; a client that never reads its answer holds it
/// back for the registry's quiet wait only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_after_a_miss_waits_for_its_answers() {
    let (_upstream, dir, _, _, key, client) = served("answered", 94, None);
    // Held back for as long as the answers take (a wait past the test's own deadline, so that
    // only the last answer sent can start the work).
    let registry =
        std::sync::Arc::new(Registry::new(dir.path()).with_quiet_wait(Duration::from_secs(3600)));
    // Nothing held, as a measure: how long a refresh and its maintenance take here.
    let free_dir = tempfile::tempdir().unwrap();
    let free = std::sync::Arc::new(Registry::new(free_dir.path()));
    let started = std::time::Instant::now();
    free.refresh_and_maintain(&key, &client, &[]).await.unwrap();
    until_maintained(&free, &key).await;
    let window = (started.elapsed() * 3).max(Duration::from_secs(1));

    // Two clients waited on the miss; their answers are being sent.
    let (first, second) = (registry.answering(&key), registry.answering(&key));
    registry
        .refresh_and_maintain(&key, &client, &[])
        .await
        .unwrap();
    tokio::time::sleep(window).await;
    assert!(
        registry.needs_consolidation(&key),
        "maintained while the miss's answers were being sent"
    );
    drop(first);
    tokio::time::sleep(window).await;
    assert!(
        registry.needs_consolidation(&key),
        "maintained while one answer was still being sent"
    );
    drop(second);
    until_maintained(&registry, &key).await;
    let mirror = registry.existing(&key).unwrap();
    assert_eq!(pack_files_ending(mirror.git_dir(), "bitmap"), 1);

    // An answer never read.
    let held_dir = tempfile::tempdir().unwrap();
    let held = std::sync::Arc::new(
        Registry::new(held_dir.path()).with_quiet_wait(Duration::from_millis(200)),
    );
    let _never_sent = held.answering(&key);
    held.refresh_and_maintain(&key, &client, &[]).await.unwrap();
    until_maintained(&held, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_cut_short_is_taken_up_when_asked_again() {
    let (_upstream, _dir, _, registry, key, client) = served("restarted", 97, None);
    // A refresh without its maintenance, as when the server stopped right after it.
    registry.refresh(&key, &client, &[]).await.unwrap();
    assert!(registry.needs_consolidation(&key));
    let mirror = registry.existing(&key).unwrap();
    let pack_dir = mirror.git_dir().join("objects/pack");
    let has = |ext: &str| {
        std::fs::read_dir(&pack_dir)
            .unwrap()
            .any(|e| e.unwrap().path().extension().is_some_and(|x| x == ext))
    };
    // The first pack is marked with the tips it was fetched for; its bitmaps are not written.
    assert!(has("tips") && !has("bitmap"));
    // Asked twice at once: one background job writes them, counted as under way from when
    // it is asked for until it ends.
    assert_eq!(registry.maintenance(), Default::default());
    registry.maintain_in_background(&key);
    registry.maintain_in_background(&key);
    assert_eq!(registry.maintenance().running, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while registry.needs_consolidation(&key) || registry.maintenance().running > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror was never maintained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ended = registry.maintenance();
    assert_eq!((ended.consolidated, ended.skipped, ended.failed), (1, 0, 0));
    assert!(has("tips") && has("bitmap"));
    assert_eq!(packs(mirror.git_dir()), 1);
    // Nothing left half-written, and git reads the bitmaps.
    let leftovers: Vec<_> = std::fs::read_dir(&pack_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("incoming-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    git(mirror.git_dir(), &["rev-list", "--test-bitmap", "HEAD"]);
    git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_bitmaps_are_found_when_checked_and_written_again() {
    let (_upstream, _dir, _, registry, key, client) = served("damaged", 98, None);
    registry.refresh(&key, &client, &[]).await.unwrap();
    registry.consolidate(&key).await.unwrap().unwrap();
    let mirror = registry.existing(&key).unwrap();
    let bitmap = std::fs::read_dir(mirror.git_dir().join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "bitmap"))
        .expect("consolidation wrote bitmaps");
    let good = std::fs::read(&bitmap).unwrap();
    // A sound file is left alone.
    assert!(mirror.remove_damaged_bitmaps().unwrap().is_empty());
    // One flipped bit in the middle: the structure still reads, the checksum does not.
    let mut damaged = good.clone();
    damaged[good.len() / 2] ^= 0x04;
    // The registry wrote and read back this file: changed behind its back but with its
    // inode, length and time as they were, it is not read again when the mirror is opened
    // (which is why the time is put back here: the change is to be found below).
    let written_at = std::fs::metadata(&bitmap).unwrap().modified().unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&bitmap)
        .unwrap();
    std::io::Write::write_all(&mut &file, &damaged).unwrap();
    file.set_modified(written_at).unwrap();
    drop(file);
    let checking = std::sync::Arc::clone(&registry);
    let checked_key = key.clone();
    let removed = tokio::task::spawn_blocking(move || checking.check_bitmaps(&checked_key))
        .await
        .unwrap()
        .unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert!(
        mirror
            .remove_damaged_bitmaps_except(&|_| true)
            .unwrap()
            .is_empty()
    );
    // Its time changed, as any write changes it: checked, found, and written again.
    std::fs::write(&bitmap, &damaged).unwrap();
    registry.check_in_background(&key);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read(&bitmap).ok().as_deref() != Some(good.as_slice()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the damaged bitmap was never written again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Written again, the same bytes as before; git reads them.
    git(mirror.git_dir(), &["rev-list", "--test-bitmap", "HEAD"]);
}

/// A consolidation that replaces a pack with bitmaps removes that pack as before but keeps
/// its index and bitmaps aside (where the object store does not look) until the new pack's
/// bitmaps are written from them, then removes them. Both states a stop can leave between
/// those steps (no new bitmaps yet; new bitmaps but the old ones still aside) are finished
/// by the next maintenance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_packs_bitmaps_are_kept_aside_until_used() {
    let (_upstream, _dir, source, registry, key, client) = served("replaced", 99, None);
    registry.refresh(&key, &client, &[]).await.unwrap();
    registry.consolidate(&key).await.unwrap().unwrap();
    let mirror = registry.existing(&key).unwrap();
    let aside = mirror.git_dir().join("objects/pack/replaced");
    let bitmaps = || pack_files_ending(mirror.git_dir(), "bitmap");
    assert_eq!((packs(mirror.git_dir()), bitmaps()), (1, 1));
    assert!(!aside.exists());

    for (round, seed) in [(0, 11), (1, 12)] {
        repo::append_commits(&source, "main", 5, seed).unwrap();
        registry.refresh(&key, &client, &[]).await.unwrap();
        // Consolidated, as a stop right after it would leave the mirror: one pack, without
        // bitmaps yet, and the old pack's index and bitmaps aside.
        let done = mirror.consolidate().unwrap();
        assert!(done.bitmap.is_none(), "round {round}");
        assert_eq!(
            (packs(mirror.git_dir()), bitmaps()),
            (1, 0),
            "round {round}"
        );
        let kept: Vec<String> = std::fs::read_dir(&aside)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            kept.iter().any(|n| n.ends_with(".idx")) && kept.iter().any(|n| n.ends_with(".bitmap")),
            "round {round}: {kept:?}"
        );
        if round == 1 {
            // A stop after the new bitmaps were written, before what was aside went.
            let pack = done.pack.clone().expect("marked");
            mirror
                .write_bitmaps(&pack, &done.tips)
                .unwrap()
                .expect("bitmaps");
            assert_eq!(bitmaps(), 1);
            assert!(aside.exists());
            // The sweep of what a crash left removes it now that it served; not before.
            gitcache_mirror::ingest::remove_leftovers(mirror.git_dir(), true).unwrap();
            assert!(!aside.exists());
        } else {
            gitcache_mirror::ingest::remove_leftovers(mirror.git_dir(), true).unwrap();
            assert!(aside.exists(), "kept while the new pack has no bitmaps");
        }
        // Every object is found, by git too, which ignores the folder.
        git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
        assert_eq!(
            registry.needs_consolidation(&key),
            round == 0,
            "round {round}"
        );
        registry.consolidate(&key).await.unwrap().unwrap();
        assert_eq!(
            (packs(mirror.git_dir()), bitmaps()),
            (1, 1),
            "round {round}"
        );
        assert!(!aside.exists(), "round {round}");
        assert!(!registry.needs_consolidation(&key), "round {round}");
        assert_git_checks_bitmaps(mirror.git_dir(), "main");
        git(mirror.git_dir(), &["fsck", "--strict", "--no-progress"]);
    }
}
