//! The example's logic against a real upstream: a clone request answered from a fresh mirror.

use gitcache_protocol::ObjectId;
use gitcache_protocol::request::{Capabilities, Command, Fetch, Request};
use gitcache_protocol::response::parse_fetch_response;
use gitcache_testkit::git::git_stdout as git;
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

#[test]
fn mirrors_then_answers_a_clone_request() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/widgets");
    repo::generate(&source, &RepoSpec::small(91)).unwrap();
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    let main = ObjectId::from_hex(git(&source, &["rev-parse", "main"]).trim().as_bytes()).unwrap();
    let request = Request {
        capabilities: Capabilities::default(),
        command: Command::Fetch(Fetch {
            wants: vec![main],
            done: true,
            ofs_delta: true,
            no_progress: true,
            ..Fetch::default()
        }),
    };
    let mut body = Vec::new();
    request.write_to(&mut body).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    gitcache_examples::mirror_and_serve(
        &upstream.repo_url("acme/widgets"),
        dir.path(),
        None,
        &body,
        &mut out,
    )
    .unwrap();
    let response = parse_fetch_response(&out, gix_hash::Kind::Sha1).unwrap();
    let pack = response.pack.expect("a pack");
    assert!(pack.starts_with(b"PACK"));
    let mirror = dir
        .path()
        .join("127.0.0.1_".to_owned() + &upstream.addr().port().to_string())
        .join("acme/widgets.git");
    git(&mirror, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(upstream.counts().fetch, 1);
}
