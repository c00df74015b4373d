//! The embedded proxy in front of a real upstream, cloned through by the real git client.

use gitcache_testkit::git::{GitClient, git_stdout};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

#[test]
fn git_clones_through_the_embedded_proxy() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/widgets");
    repo::generate(&source, &RepoSpec::tiny(92)).unwrap();
    upstream.adopt_repo("acme/widgets", Access::Public).unwrap();
    let data = tempfile::tempdir().unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let url = upstream.url();
    let dir = data.path().to_owned();
    let server = runtime.spawn(async move {
        gitcache_examples::embedded_proxy(listener, &url, &dir, async {
            let _ = stopped.await;
        })
        .await
        .map_err(|e| e.to_string())
    });

    let git = GitClient::new().unwrap();
    git.run(
        git.home(),
        &[
            "clone",
            "-q",
            &format!("http://{addr}/acme/widgets.git"),
            "c",
        ],
    )
    .unwrap()
    .expect_success();
    let clone = git.home().join("c");
    git_stdout(&clone, &["fsck", "--strict", "--no-progress"]);
    assert_eq!(
        git.rev_parse(&clone, "HEAD").unwrap(),
        git.rev_parse(&source, "main").unwrap()
    );
    assert!(data.path().join("mirrors").is_dir());

    stop.send(()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
}
