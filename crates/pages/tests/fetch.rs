//! A branch's tree taken from a real upstream (C git's http-backend) by one shallow fetch,
//! deployed, and served.

use std::time::Duration;

use gitcache_pages::fetch::{FetchError, branch_tree};
use gitcache_pages::manifest::Content;
use gitcache_pages::serve::{Answer, answer};
use gitcache_pages::site::{Pages, TreeFile};
use gitcache_storage::store::{AnyStore, FsStore};
use gitcache_testkit::git::{git_stdout, git_with_input, write_blob as blob};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Upstream};

fn tree(repo: &std::path::Path, lines: &str) -> String {
    String::from_utf8(git_with_input(repo, &["mktree"], lines.as_bytes()))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_tree_is_fetched_shallowly_deployed_and_served() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/site");
    repo::generate(&source, &RepoSpec::tiny(1501)).unwrap();
    upstream.adopt_repo("acme/site", Access::Public).unwrap();
    // A `pages` branch: a home page, a style sheet large enough for a blob, a directory and
    // a symlink to it, on top of the repository's history.
    let style = "body { color: black; }\n".repeat(40);
    let docs = tree(
        &source,
        &format!(
            "100644 blob {}\tindex.html\n",
            blob(&source, b"<h1>docs</h1>")
        ),
    );
    let root = tree(
        &source,
        &format!(
            "100644 blob {}\tindex.html\n100644 blob {}\tstyle.css\n040000 tree {docs}\tdocs\n120000 blob {}\tlatest\n",
            blob(&source, b"<h1>home</h1>"),
            blob(&source, style.as_bytes()),
            blob(&source, b"docs"),
        ),
    );
    let main = git_stdout(&source, &["rev-parse", "main"])
        .trim()
        .to_owned();
    let commit = git_stdout(&source, &["commit-tree", &root, "-p", &main, "-m", "site"])
        .trim()
        .to_owned();
    git_stdout(&source, &["update-ref", "refs/heads/pages", &commit]);

    let client = gitcache_upstream::Upstream::new(
        &upstream.repo_url("acme/site"),
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (tip, fetched) = branch_tree(&client, "pages", scratch.path()).await.unwrap();
    assert_eq!(tip, commit);
    assert_eq!(
        fetched.files().unwrap(),
        vec![
            TreeFile::file("docs/index.html", b"<h1>docs</h1>".to_vec()),
            TreeFile::file("index.html", b"<h1>home</h1>".to_vec()),
            TreeFile::symlink("latest", "docs"),
            TreeFile::file("style.css", style.as_bytes().to_vec()),
        ]
    );
    assert!(
        std::fs::read_dir(scratch.path()).unwrap().next().is_some(),
        "the fetched repository is read as the tree is deployed"
    );

    let store = tempfile::tempdir().unwrap();
    let pages = Pages::new(AnyStore::Fs(FsStore::new(store.path())));
    pages
        .deploy("acme.example", ".index", &tip, "acme/site#pages", fetched)
        .await
        .unwrap();
    assert!(
        std::fs::read_dir(scratch.path()).unwrap().next().is_none(),
        "the scratch folder is left empty once the tree is let go of"
    );
    let site = pages.site("acme.example", ".index").await.unwrap().unwrap();
    let Answer::Found(file) = answer(&site, "/latest/") else {
        panic!("the docs through the symlink");
    };
    assert_eq!(file.path, "docs/index.html");
    let Answer::Found(css) = answer(&site, "/style.css") else {
        panic!("the style sheet");
    };
    let Content::Blob { hash, .. } = css.content else {
        panic!("a blob");
    };
    assert_eq!(pages.blob(hash).await.unwrap().unwrap(), style.as_bytes());

    // No such branch; a name git refuses.
    assert!(matches!(
        branch_tree(&client, "nope", scratch.path()).await,
        Err(FetchError::NoBranch(_))
    ));
    assert!(matches!(
        branch_tree(&client, "a..b", scratch.path()).await,
        Err(FetchError::BadBranch(_))
    ));
    // A pack over what the disk has room for is refused as it arrives.
    let refused =
        gitcache_pages::fetch::branch_tree_unless(&client, "pages", scratch.path(), None, 64).await;
    assert!(
        matches!(
            refused,
            Err(FetchError::Upstream(gitcache_upstream::Error::TooLarge {
                limit: 64,
                ..
            }))
        ),
        "{refused:?}"
    );
    assert!(
        std::fs::read_dir(scratch.path()).unwrap().next().is_none(),
        "the scratch folder is left empty"
    );
}

/// A tree that fans out through one shared subtree (400 entries, 400 times) is refused by
/// its count of entries, not walked to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanned_out_tree_is_refused() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/fan");
    repo::generate(&source, &RepoSpec::tiny(1502)).unwrap();
    upstream.adopt_repo("acme/fan", Access::Public).unwrap();
    let empty = blob(&source, b"");
    let leaf: String = (0..400)
        .map(|i| format!("100644 blob {empty}\tf{i}\n"))
        .collect();
    let leaf = tree(&source, &leaf);
    let root: String = (0..400)
        .map(|i| format!("040000 tree {leaf}\td{i}\n"))
        .collect();
    let root = tree(&source, &root);
    let commit = git_stdout(&source, &["commit-tree", &root, "-m", "fan"])
        .trim()
        .to_owned();
    git_stdout(&source, &["update-ref", "refs/heads/pages", &commit]);
    let client = gitcache_upstream::Upstream::new(
        &upstream.repo_url("acme/fan"),
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let refused = branch_tree(&client, "pages", scratch.path()).await;
    assert!(
        matches!(&refused, Err(FetchError::Tree(err)) if err.to_string().contains("entries")),
        "{refused:?}"
    );
    assert!(
        std::fs::read_dir(scratch.path()).unwrap().next().is_none(),
        "the scratch folder is removed after a failure too"
    );
}
