//! Pages on the server's own listener (`--pages-listen`): a site deployed by `PUT` from a
//! real upstream's branch, then served by `Host` with routing by exclusion, redirects to a
//! directory's slash, `ETag`s and `304`, `HEAD`, and the site's `404.html`.

mod common;

use std::io::{Read as _, Write as _};

use common::{Gitcache, http};
use gitcache_testkit::git::{git_stdout, git_with_input};
use gitcache_testkit::repo::{self, RepoSpec};
use gitcache_testkit::upstream::{Access, Fault, RequestKind, Upstream};

fn object(repo: &std::path::Path, args: &[&str], input: &str) -> String {
    String::from_utf8(git_with_input(repo, args, input.as_bytes()))
        .unwrap()
        .trim()
        .to_owned()
}

/// A branch `branch` of `repo` holding `files` (name, content) at its root.
fn branch(repo: &std::path::Path, branch: &str, files: &[(&str, &str)]) -> String {
    let lines: String = files
        .iter()
        .map(|(name, content)| {
            let blob = object(repo, &["hash-object", "-w", "--stdin"], content);
            format!("100644 blob {blob}\t{name}\n")
        })
        .collect();
    let tree = object(repo, &["mktree"], &lines);
    let commit = object(repo, &["commit-tree", &tree, "-m", branch], "");
    git_stdout(
        repo,
        &["update-ref", &format!("refs/heads/{branch}"), &commit],
    );
    commit
}

/// A server whose pages deploy without authorization from anywhere (the upstream is on the
/// loopback), with `extra` flags, and its pages address.
fn open_pages(upstream: &Upstream, extra: &[&str]) -> (Gitcache, String) {
    let mut flags = vec![
        "--pages-listen",
        "127.0.0.1:0",
        "--pages-insecure",
        "--pages-private-sources",
    ];
    flags.extend_from_slice(extra);
    let cache = Gitcache::start(upstream, &flags);
    let addr = pages_addr(&cache);
    (cache, addr)
}

/// A `PUT` deploying `acme/site` of `upstream` as the root site of `site.example`.
fn put_root(addr: &str, upstream: &Upstream) -> common::Answer {
    http(
        addr,
        "PUT",
        "/",
        &[("Host", "site.example")],
        upstream.repo_url("acme/site").as_bytes(),
    )
}

fn pages_addr(cache: &Gitcache) -> String {
    let log = cache.log_with("gitcache pages listening on http://", 1);
    log.lines()
        .find_map(|l| l.trim().strip_prefix("gitcache pages listening on http://"))
        .unwrap()
        .to_owned()
}

#[test]
fn sites_deploy_by_put_and_are_served_by_host() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/site");
    repo::generate(&source, &RepoSpec::tiny(1510)).unwrap();
    upstream.adopt_repo("acme/site", Access::Public).unwrap();
    let style = "p { margin: 0 }\n".repeat(30);
    let site = branch(
        &source,
        "pages",
        &[
            ("index.html", "<h1>home</h1>"),
            ("style.css", &style),
            ("404.html", "<h1>lost</h1>"),
        ],
    );
    let blog = branch(&source, "blog", &[("index.html", "<h1>blog</h1>")]);
    let (cache, addr) = open_pages(&upstream, &[]);
    let repo_url = upstream.repo_url("acme/site");
    let host = [("Host", "site.example")];

    let put = http(&addr, "PUT", "/", &host, repo_url.as_bytes());
    assert_eq!(put.status, 201, "{}", put.body_text());
    assert_eq!(put.body_text().trim(), site);
    assert_eq!(put.header("content-location"), Some("/".to_owned()));
    let fetches = upstream.counts().fetch;
    let again = http(&addr, "PUT", "/", &host, repo_url.as_bytes());
    assert_eq!(again.status, 200, "the same commit again: nothing to do");
    assert_eq!(again.body_text().trim(), site);
    assert_eq!(
        upstream.counts().fetch,
        fetches,
        "an unchanged branch is not fetched"
    );
    let put_blog = http(
        &addr,
        "PUT",
        "/blog/",
        &[("Host", "site.example"), ("X-Pages-Branch", "blog")],
        repo_url.as_bytes(),
    );
    assert_eq!(put_blog.status, 201, "{}", put_blog.body_text());
    assert_eq!(put_blog.body_text().trim(), blog);
    // A branch name longer than a pkt-line holds is refused, not a panic, before anything is
    // asked of the upstream.
    let asked = upstream.counts();
    let long = "b".repeat(70_000);
    let refused = http(
        &addr,
        "PUT",
        "/blog/",
        &[("Host", "site.example"), ("X-Pages-Branch", &long)],
        repo_url.as_bytes(),
    );
    assert_eq!(refused.status, 400, "{}", refused.body_text());
    assert!(refused.body_text().len() < 2048);
    // A source too long for a site's manifest, and a URL with a password in it, likewise
    // (the password not shown).
    let long_url = format!("{repo_url}{}", "/x".repeat(1_900));
    let too_long = http(
        &addr,
        "PUT",
        "/blog/",
        &[
            ("Host", "site.example"),
            ("X-Pages-Branch", &"b".repeat(1_000)),
        ],
        long_url.as_bytes(),
    );
    assert_eq!(too_long.status, 400, "{}", too_long.body_text());
    assert!(too_long.body_text().contains("over 4096 bytes"));
    let with_password = repo_url.replacen("http://", "http://me:s3cret@", 1);
    let refused = http(
        &addr,
        "PUT",
        "/blog/",
        &[("Host", "site.example")],
        with_password.as_bytes(),
    );
    assert_eq!(refused.status, 400, "{}", refused.body_text());
    assert!(refused.body_text().contains("user information"));
    assert!(!refused.body_text().contains("s3cret"));
    let after = upstream.counts();
    assert_eq!(
        (after.info_refs, after.ls_refs),
        (asked.info_refs, asked.ls_refs)
    );

    let get = |path: &str, extra: &[(&str, &str)]| {
        let mut headers = host.to_vec();
        headers.extend_from_slice(extra);
        http(&addr, "GET", path, &headers, b"")
    };
    let home = get("/", &[]);
    assert_eq!(
        (home.status, home.body_text()),
        (200, "<h1>home</h1>".to_owned())
    );
    assert_eq!(
        home.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let css = get("/style.css", &[]);
    assert_eq!(css.body_text(), style);
    let etag = css.header("etag").expect("an ETag");
    assert_eq!(get("/style.css", &[("If-None-Match", &etag)]).status, 304);
    // Weakly compared, as a proxy that compressed the answer sends it back.
    let weak = format!("W/{etag}");
    assert_eq!(get("/style.css", &[("If-None-Match", &weak)]).status, 304);
    // Ranges: a part, the last bytes, one past the end.
    let part = get("/style.css", &[("Range", "bytes=2-5")]);
    assert_eq!(
        (part.status, part.body_text()),
        (206, style[2..6].to_owned())
    );
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 2-5/{}", style.len()))
    );
    let tail = get("/style.css", &[("Range", "bytes=-3")]);
    assert_eq!(tail.body_text(), style[style.len() - 3..]);
    let past = get(
        "/style.css",
        &[("Range", &format!("bytes={}-", style.len()))],
    );
    assert_eq!(past.status, 416);
    let several = get("/style.css", &[("Range", "bytes=0-1,4-5")]);
    assert_eq!(
        (several.status, several.body_text()),
        (200, style.clone()),
        "sent whole"
    );
    let head = http(&addr, "HEAD", "/style.css", &host, b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(style.len().to_string()));
    assert_eq!(
        get("/blog/", &[]).body_text(),
        "<h1>blog</h1>",
        "the project's tree"
    );
    let to_slash = get("/blog", &[]);
    assert_eq!(
        (to_slash.status, to_slash.header("location")),
        (301, Some("/blog/".to_owned()))
    );
    let lost = get("/nothing/here", &[]);
    assert_eq!(
        (lost.status, lost.body_text()),
        (404, "<h1>lost</h1>".to_owned())
    );
    assert_eq!(get("/%2e%2e/etc/passwd", &[]).status, 400);
    let other_host = http(&addr, "GET", "/", &[("Host", "other.example")], b"");
    assert_eq!(other_host.status, 404);

    // Counted on the server's /metrics.
    let metrics = http(&cache.addr, "GET", "/metrics", &[], b"").body_text();
    for series in [
        "gitcache_pages_deploys_total{result=\"deployed\"} 2",
        "gitcache_pages_deploys_total{result=\"unchanged\"} 1",
        "gitcache_pages_requests_total{status=\"304\"} 2",
        "gitcache_pages_sent_bytes_total ",
    ] {
        assert!(metrics.contains(series), "{series}: {metrics}");
    }
}

/// Below the free space the server keeps on its disk, a deploy is refused with `507`
/// before anything is fetched.
#[test]
fn deploys_keep_the_free_space_of_the_disk() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/site");
    repo::generate(&source, &RepoSpec::tiny(1511)).unwrap();
    upstream.adopt_repo("acme/site", Access::Public).unwrap();
    branch(&source, "pages", &[("index.html", "<h1>home</h1>")]);
    let (_cache, addr) = open_pages(&upstream, &["--min-free-bytes", &u64::MAX.to_string()]);
    let fetches = upstream.counts().fetch;
    let put = put_root(&addr, &upstream);
    assert_eq!(put.status, 507, "{}", put.body_text());
    assert!(
        put.body_text().contains("free space"),
        "{}",
        put.body_text()
    );
    assert_eq!(upstream.counts().fetch, fetches, "nothing fetched");
}

/// A host deploys one thing at a time: while its deploy runs (its fetch held up upstream),
/// the next two of the same host wait for their turns and other hosts deploy beside it; a deploy
/// whose client leaves (a forge gives up on a webhook after ten seconds) goes on.
#[test]
fn a_host_deploys_one_at_a_time_and_a_deploy_outlives_its_client() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/site");
    repo::generate(&source, &RepoSpec::tiny(1512)).unwrap();
    upstream.adopt_repo("acme/site", Access::Public).unwrap();
    branch(&source, "pages", &[("index.html", "<h1>home</h1>")]);
    branch(&source, "blog", &[("index.html", "<h1>blog</h1>")]);
    let (_cache, addr) = open_pages(&upstream, &[]);
    let repo_url = upstream.repo_url("acme/site");
    let put = |host: &str, path: &str, branch: &str| {
        http(
            &addr,
            "PUT",
            path,
            &[("Host", host), ("X-Pages-Branch", branch)],
            repo_url.as_bytes(),
        )
    };
    let slow_fetch = || {
        upstream.inject(
            Fault::Delay(std::time::Duration::from_secs(3)),
            1,
            Some(RequestKind::Fetch),
        );
    };
    slow_fetch();
    std::thread::scope(|scope| {
        let first = scope.spawn(|| put("a.example", "/", "pages"));
        common::wait_for("the first deploy's fetch upstream", || {
            upstream.pending_faults() == 0
        });
        let same_host = scope.spawn(|| put("a.example", "/blog/", "blog"));
        let and_another = scope.spawn(|| put("a.example", "/again/", "pages"));
        let other_host = put("b.example", "/", "pages");
        assert_eq!(other_host.status, 201, "{}", other_host.body_text());
        let first = first.join().unwrap();
        assert_eq!(first.status, 201, "{}", first.body_text());
        let same_host = same_host.join().unwrap();
        assert_eq!(same_host.status, 201, "{}", same_host.body_text());
        let and_another = and_another.join().unwrap();
        assert_eq!(and_another.status, 201, "{}", and_another.body_text());
    });
    let get = |host: &str, path: &str| http(&addr, "GET", path, &[("Host", host)], b"");
    assert_eq!(get("a.example", "/blog/").body_text(), "<h1>blog</h1>");

    // The client sends its deploy and leaves while the fetch is held up.
    slow_fetch();
    let request = format!(
        "PUT / HTTP/1.1\r\nHost: c.example\r\nX-Pages-Branch: pages\r\nContent-Length: {}\r\n\r\n{repo_url}",
        repo_url.len()
    );
    let mut gone = common::connect(&addr, std::time::Duration::from_secs(10));
    gone.write_all(request.as_bytes()).unwrap();
    common::wait_for("the deploy's fetch upstream", || {
        upstream.pending_faults() == 0
    });
    drop(gone);
    common::wait_for("the deploy to land without its client", || {
        get("c.example", "/").body_text() == "<h1>home</h1>"
    });
}

/// A deploy asks the upstream for one branch: an upstream whose listing does not end is cut
/// off at 1 MiB, not read into memory up to a whole listing's bound.
#[test]
fn a_deploys_listing_is_read_up_to_a_mebibyte() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/site");
    repo::generate(&source, &RepoSpec::tiny(1513)).unwrap();
    upstream.adopt_repo("acme/site", Access::Public).unwrap();
    branch(&source, "pages", &[("index.html", "home")]);
    let (cache, addr) = open_pages(&upstream, &[]);
    upstream.inject(Fault::EndlessRefs, 1, Some(RequestKind::LsRefs));
    let put = put_root(&addr, &upstream);
    assert!(put.status >= 500, "{} {}", put.status, put.body_text());
    cache.log_with("ls-refs answer", 1);
    assert!(cache.log().contains("1048576"), "cut off at 1 MiB");
    // The next deploy, its listing whole, goes through.
    let again = put_root(&addr, &upstream);
    assert_eq!(again.status, 201, "{}", again.body_text());
}

/// A deployer names the repository URL, so by default a deploy reaches only public
/// addresses: a repository on the loopback, named by address or by a name that resolves there
/// (`localhost`), is refused (`502`, as one that cannot be read) before anything is asked of
/// it. With `--pages-source`, only repositories under a prefix are deployed, wherever they
/// are; others (and a URL climbing out of a prefix with `..`) are refused.
#[test]
fn deploys_reach_only_public_addresses_or_the_sources_named() {
    let upstream = Upstream::start().unwrap();
    for name in ["acme/site", "other/site"] {
        let source = upstream.repo_path(name);
        repo::generate(&source, &RepoSpec::tiny(1511)).unwrap();
        upstream.adopt_repo(name, Access::Public).unwrap();
        branch(&source, "pages", &[("index.html", name)]);
    }
    let put = |addr: &str, url: &str| {
        http(
            addr,
            "PUT",
            "/",
            &[("Host", "site.example")],
            url.as_bytes(),
        )
    };

    let open = Gitcache::start(
        &upstream,
        &["--pages-listen", "127.0.0.1:0", "--pages-insecure"],
    );
    let addr = pages_addr(&open);
    let port = upstream.url().rsplit_once(':').unwrap().1.to_owned();
    for url in [
        upstream.repo_url("acme/site"),
        format!("http://localhost:{port}/acme/site"),
    ] {
        // Answered as any repository that cannot be read (a name that does not resolve):
        // whether a name resolves to private addresses is for the log, not the deployer.
        let refused = put(&addr, &url);
        assert_eq!(refused.status, 502, "{url}: {}", refused.body_text());
        assert_eq!(
            refused.body_text().trim(),
            "the repository could not be read"
        );
    }
    open.log_with("no public address", 2);
    assert_eq!(
        upstream.counts().info_refs + upstream.counts().ls_refs,
        0,
        "nothing was asked of the loopback"
    );
    drop(open);

    let prefix = format!("{}/acme/", upstream.url());
    let listed = Gitcache::start(
        &upstream,
        &[
            "--pages-listen",
            "127.0.0.1:0",
            "--pages-insecure",
            "--pages-source",
            &prefix,
        ],
    );
    let addr = pages_addr(&listed);
    let deployed = put(&addr, &upstream.repo_url("acme/site"));
    assert_eq!(deployed.status, 201, "{}", deployed.body_text());
    for url in [
        upstream.repo_url("other/site"),
        format!("{prefix}../other/site"),
    ] {
        let refused = put(&addr, &url);
        assert_eq!(refused.status, 403, "{url}: {}", refused.body_text());
        assert!(
            refused
                .body_text()
                .contains("not a repository this server deploys from"),
            "{}",
            refused.body_text()
        );
    }
    let served = http(&addr, "GET", "/", &[("Host", "site.example")], b"");
    assert_eq!(served.body_text(), "acme/site");
}

/// Redeploys between two branches under 50 concurrent readers: every answer is wholly one
/// version or the other, its `ETag` that version's, and the last deploy is what stays.
#[test]
fn redeploys_under_concurrent_readers_never_mix_versions() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/flip");
    repo::generate(&source, &RepoSpec::tiny(1520)).unwrap();
    upstream.adopt_repo("acme/flip", Access::Public).unwrap();
    let page = |v: &str| format!("<h1>version {v}</h1>\n{}", v.repeat(2000));
    let (one, two) = (page("1"), page("2"));
    branch(&source, "one", &[("index.html", &one)]);
    branch(&source, "two", &[("index.html", &two)]);
    let (_cache, addr) = open_pages(&upstream, &[]);
    let url = upstream.repo_url("acme/flip");
    let deploy = |branch: &str| {
        let put = http(
            &addr,
            "PUT",
            "/",
            &[("Host", "flip.example")],
            format!("{url}#{branch}").as_bytes(),
        );
        assert!(matches!(put.status, 200 | 201), "{}", put.body_text());
    };
    deploy("one");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let (addr, stop, one, two) = (
                addr.clone(),
                std::sync::Arc::clone(&stop),
                one.clone(),
                two.clone(),
            );
            std::thread::spawn(move || {
                let mut seen = [0usize; 2];
                let mut etags: [std::collections::BTreeSet<String>; 2] = Default::default();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = http(&addr, "GET", "/", &[("Host", "flip.example")], b"");
                    assert_eq!(got.status, 200);
                    let body = got.body_text();
                    let version = if body == one {
                        0
                    } else {
                        assert_eq!(body, two, "a whole version");
                        1
                    };
                    seen[version] += 1;
                    etags[version].insert(got.header("etag").expect("an ETag"));
                }
                (seen, etags)
            })
        })
        .collect();
    for round in 0..6 {
        deploy(if round % 2 == 0 { "two" } else { "one" });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = [0usize; 2];
    let mut etags: [std::collections::BTreeSet<String>; 2] = Default::default();
    for reader in readers {
        let (got, tags) = reader.join().unwrap();
        for v in 0..2 {
            seen[v] += got[v];
            etags[v].extend(tags[v].iter().cloned());
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both versions served: {seen:?}");
    assert!(
        etags[0].len() == 1 && etags[1].len() == 1 && etags[0] != etags[1],
        "one ETag per version: {etags:?}"
    );
    let last = http(&addr, "GET", "/", &[("Host", "flip.example")], b"");
    assert_eq!(last.body_text(), one, "the last deploy stays");
}

/// Deploys authorized by DNS, as git-pages authorizes them: the password's challenge
/// (`SHA256("<host> <password>")` in hex) must be a TXT record at
/// `_git-pages-challenge.<host>`.
#[test]
fn deploys_are_authorized_by_a_dns_challenge() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/auth");
    repo::generate(&source, &RepoSpec::tiny(1530)).unwrap();
    upstream.adopt_repo("acme/auth", Access::Public).unwrap();
    branch(&source, "pages", &[("index.html", "<h1>authorized</h1>")]);
    let dns = gitcache_testkit::dns::DnsServer::start().unwrap();
    let challenge = gitcache_pages::http::challenge("site.example", "s3cret");
    dns.set_txt(
        "_git-pages-challenge.site.example",
        &["unrelated", &challenge],
    );
    let server = dns.addr().to_string();
    let source = format!("{}/acme/", upstream.url());
    let cache = Gitcache::start(
        &upstream,
        &[
            "--pages-listen",
            "127.0.0.1:0",
            "--pages-dns-server",
            &server,
            "--pages-source",
            &source,
        ],
    );
    let addr = pages_addr(&cache);
    let url = upstream.repo_url("acme/auth");
    let put = |host: &str, auth: Option<&str>| {
        let mut headers = vec![("Host", host)];
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        http(&addr, "PUT", "/", &headers, url.as_bytes())
    };
    let missing = put("site.example", None);
    assert_eq!(missing.status, 401, "{}", missing.body_text());
    assert_eq!(missing.header("www-authenticate"), Some("Pages".to_owned()));
    assert_eq!(put("site.example", Some("Pages wrong")).status, 403);
    assert_eq!(
        put("other.example", Some("Pages s3cret")).status,
        403,
        "no TXT record there"
    );
    let basic_wrong_user = format!("Basic {}", base64_of("someone:s3cret"));
    assert_eq!(put("site.example", Some(&basic_wrong_user)).status, 401);
    let deployed = put("site.example", Some("Pages s3cret"));
    assert_eq!(deployed.status, 201, "{}", deployed.body_text());
    let basic = format!("Basic {}", base64_of("Pages:s3cret"));
    assert_eq!(
        put("site.example", Some(&basic)).status,
        200,
        "the same commit, by Basic"
    );
    let home = http(&addr, "GET", "/", &[("Host", "site.example")], b"");
    assert_eq!(home.body_text(), "<h1>authorized</h1>");
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A forge's push event redeploys the site when it is for the deployed repository and
/// branch; other pushes are taken and ignored.
#[test]
fn push_events_redeploy_the_deployed_branch() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/hooked");
    repo::generate(&source, &RepoSpec::tiny(1540)).unwrap();
    upstream.adopt_repo("acme/hooked", Access::Public).unwrap();
    branch(&source, "pages", &[("index.html", "<h1>first</h1>")]);
    let (_cache, addr) = open_pages(&upstream, &[]);
    let url = upstream.repo_url("acme/hooked");
    let event = |git_ref: &str, clone_url: &str| {
        let body = format!(r#"{{"ref":"{git_ref}","repository":{{"clone_url":"{clone_url}"}}}}"#);
        http(
            &addr,
            "POST",
            "/",
            &[("Host", "hooked.example"), ("X-GitHub-Event", "push")],
            body.as_bytes(),
        )
    };
    let first = event("refs/heads/pages", &url);
    assert_eq!(first.status, 201, "{}", first.body_text());
    let page = || http(&addr, "GET", "/", &[("Host", "hooked.example")], b"").body_text();
    assert_eq!(page(), "<h1>first</h1>");

    let second = branch(&source, "pages", &[("index.html", "<h1>second</h1>")]);
    let redeployed = event("refs/heads/pages", &url);
    assert_eq!(
        (redeployed.status, redeployed.body_text().trim().to_owned()),
        (201, second)
    );
    assert_eq!(page(), "<h1>second</h1>");

    assert_eq!(event("refs/heads/main", &url).status, 202, "another branch");
    assert_eq!(event("refs/tags/v1", &url).status, 202, "not a branch");
    assert_eq!(
        event("refs/heads/pages", "http://127.0.0.1:1/other.git").status,
        202,
        "another repository"
    );
    assert_eq!(page(), "<h1>second</h1>");
    let garbage = http(
        &addr,
        "POST",
        "/",
        &[("Host", "hooked.example")],
        b"not json",
    );
    assert_eq!(garbage.status, 400);
}

/// A site's `_redirects` (redirects, rewrites, not-found rules, forced rules, placeholders
/// and splats, for the root tree and a project) and `_headers`; `gzip` and `br` answers with
/// their own `ETag`s; an access line per request; rules that do not parse refuse the deploy.
#[test]
fn rules_compression_and_access_lines() {
    use std::io::Read as _;
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/rules");
    repo::generate(&source, &RepoSpec::tiny(1550)).unwrap();
    upstream.adopt_repo("acme/rules", Access::Public).unwrap();
    let css = ".a { color: red }\n".repeat(200);
    branch(
        &source,
        "pages",
        &[
            ("index.html", "<h1>home</h1>"),
            ("spa.html", "<h1>app</h1>"),
            ("gone.html", "<h1>gone</h1>"),
            ("forced.html", "<h1>never sent</h1>"),
            ("big.css", &css),
            (
                "_redirects",
                "# moves\n/old /index.html\n/app/* /spa.html 200\n/gone /gone.html 404\n\
                 /big.css /index.html 302\n/forced.html /spa.html 302!\n\
                 /ext/:a/* https://docs.example/:a/:splat 308\n",
            ),
            (
                "_headers",
                "/*\n  X-Frame-Options: DENY\n/big.css\n  Cache-Control: max-age=60\n\
                 /spa.html\n  Content-Type: text/plain; charset=utf-8\n",
            ),
        ],
    );
    branch(
        &source,
        "bad",
        &[
            ("index.html", "x"),
            ("_redirects", "/a /b\n/c //evil.example 301\n"),
        ],
    );
    let cache = Gitcache::start(
        &upstream,
        &[
            "--pages-listen",
            "127.0.0.1:0",
            "--pages-insecure",
            "--pages-private-sources",
            "--log-format",
            "json",
        ],
    );
    let addr = pages_addr(&cache);
    let url = upstream.repo_url("acme/rules");
    let host = ("Host", "rules.example");
    assert_eq!(http(&addr, "PUT", "/", &[host], url.as_bytes()).status, 201);
    assert_eq!(
        http(&addr, "PUT", "/proj/", &[host], url.as_bytes()).status,
        201
    );
    let bad = http(
        &addr,
        "PUT",
        "/bad/",
        &[host],
        format!("{url}#bad").as_bytes(),
    );
    assert_eq!(bad.status, 400, "{}", bad.body_text());
    assert!(
        bad.body_text().contains("_redirects line 2"),
        "{}",
        bad.body_text()
    );

    let get = |path: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![host];
        headers.extend_from_slice(extra);
        http(&addr, "GET", path, &headers, b"")
    };
    let moved = get("/old", &[]);
    assert_eq!(
        (moved.status, moved.header("location")),
        (301, Some("/index.html".into()))
    );
    let app = get("/app/settings/users", &[]);
    assert_eq!(
        (app.status, app.body_text()),
        (200, "<h1>app</h1>".into()),
        "a rewrite"
    );
    let gone = get("/gone", &[]);
    assert_eq!(
        (gone.status, gone.body_text()),
        (404, "<h1>gone</h1>".into())
    );
    let shadowed = get("/big.css", &[]);
    assert_eq!(
        (shadowed.status, shadowed.body_text()),
        (200, css.clone()),
        "the file wins"
    );
    let forced = get("/forced.html", &[]);
    assert_eq!(
        (forced.status, forced.header("location")),
        (302, Some("/spa.html".into()))
    );
    let external = get("/ext/v2/guide/start", &[]);
    assert_eq!(
        (external.status, external.header("location")),
        (308, Some("https://docs.example/v2/guide/start".into()))
    );
    let in_project = get("/proj/old", &[]);
    assert_eq!(
        in_project.header("location"),
        Some("/proj/index.html".into()),
        "a project's rules speak of its own paths"
    );
    let encoded = get("/%67one", &[]);
    assert_eq!(
        (encoded.status, encoded.body_text()),
        (404, "<h1>gone</h1>".into()),
        "rules see the path decoded, as files do"
    );
    assert_eq!(
        get("/big%2Ecss", &[]).header("cache-control"),
        Some("max-age=60".into())
    );
    assert_eq!(get("/_redirects", &[]).status, 404, "rules are not sent");
    assert_eq!(get("/_headers", &[]).status, 404);
    assert_eq!(get("/", &[]).header("x-frame-options"), Some("DENY".into()));
    assert_eq!(shadowed.header("x-frame-options"), Some("DENY".into()));
    assert_eq!(shadowed.header("cache-control"), Some("max-age=60".into()));
    assert_eq!(get("/", &[]).header("cache-control"), None);
    // A site's `Content-Type` replaces the server's: one, the site's.
    let retyped = get("/spa.html", &[]);
    let types: Vec<&str> = (retyped.head.lines())
        .filter(|l| l.to_ascii_lowercase().starts_with("content-type:"))
        .collect();
    assert_eq!(
        types,
        ["content-type: text/plain; charset=utf-8"],
        "{}",
        retyped.head
    );

    // Compressed answers: each its own ETag; a range is taken from the file as it is.
    let plain_etag = shadowed.header("etag").unwrap();
    assert_eq!(shadowed.header("vary"), Some("accept-encoding".into()));
    let br = get("/big.css", &[("Accept-Encoding", "gzip, deflate, br")]);
    assert_eq!(br.header("content-encoding"), Some("br".into()));
    assert!(br.body.len() < css.len() / 10, "{} bytes", br.body.len());
    let mut unpacked = Vec::new();
    brotli::BrotliDecompress(&mut &br.body[..], &mut unpacked).unwrap();
    assert_eq!(unpacked, css.as_bytes());
    let gz = get("/big.css", &[("Accept-Encoding", "gzip")]);
    assert_eq!(gz.header("content-encoding"), Some("gzip".into()));
    let mut unpacked = String::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_string(&mut unpacked)
        .unwrap();
    assert_eq!(unpacked, css);
    let br_etag = br.header("etag").unwrap();
    assert!(br_etag != plain_etag && gz.header("etag").unwrap() != br_etag);
    let again = get(
        "/big.css",
        &[("Accept-Encoding", "br"), ("If-None-Match", &br_etag)],
    );
    assert_eq!(again.status, 304);
    assert_eq!(
        get(
            "/big.css",
            &[("Accept-Encoding", "gzip"), ("If-None-Match", &br_etag)]
        )
        .status,
        200,
        "another encoding's ETag is another copy"
    );
    let part = get(
        "/big.css",
        &[("Accept-Encoding", "br"), ("Range", "bytes=0-3")],
    );
    assert_eq!((part.status, part.body_text()), (206, css[..4].to_owned()));
    assert_eq!(part.header("content-encoding"), None);
    let small = get("/", &[("Accept-Encoding", "br")]);
    assert_eq!(small.header("content-encoding"), None, "too small to gain");

    // One access line per request, with the host and no credential.
    let log = cache.log_with("\"service\":\"pages\"", 20);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"service\":\"pages\""))
        .collect();
    assert!(lines.len() >= 20, "{log}");
    assert!(lines.iter().any(|l| l.contains("\"path\":\"/gone\"")
        && l.contains("\"status\":404")
        && l.contains("\"host\":\"rules.example\"")));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"content_encoding\":\"br\""))
    );
    let metrics = http(&cache.addr, "GET", "/metrics", &[], b"").body_text();
    assert!(
        metrics.contains("gitcache_pages_cache_total{kind=\"compressed\",result=\"hit\"}"),
        "{metrics}"
    );
}

/// A forge holding `repos`, each with a `pages` branch naming it, and gitcache serving pages
/// with the wildcard domain `example.page` over it (and `more` flags): the forge, the server
/// and the pages listener's address.
fn wildcard_forge(repos: &[&str], more: &[&str]) -> (Upstream, Gitcache, String) {
    let upstream = Upstream::start().unwrap();
    for name in repos {
        let source = upstream.repo_path(name);
        repo::generate(&source, &RepoSpec::tiny(1560)).unwrap();
        upstream.adopt_repo(name, Access::Public).unwrap();
        branch(
            &source,
            "pages",
            &[("index.html", &format!("<h1>{name}</h1>"))],
        );
    }
    let template = format!("{}/<user>/<project>.git", upstream.url());
    let mut flags = vec![
        "--pages-listen",
        "127.0.0.1:0",
        "--pages-wildcard-domain",
        "example.page",
        "--pages-wildcard-clone-url",
        &template,
    ];
    flags.extend_from_slice(more);
    let cache = Gitcache::start(&upstream, &flags);
    let addr = pages_addr(&cache);
    (upstream, cache, addr)
}

/// Under a wildcard domain, a push event is authorized by its repository alone: the one the
/// template computes for the host and project, on the wildcard's branch. Another repository
/// is refused; hosts outside the domain still need the DNS challenge.
#[test]
fn wildcard_push_events_are_authorized_by_their_repository() {
    let (upstream, _cache, addr) = wildcard_forge(&["alice/pages", "alice/blog", "bob/pages"], &[]);
    let event = |host: &str, path: &str, git_ref: &str, repo: &str| {
        let body = format!(
            r#"{{"ref":"{git_ref}","repository":{{"clone_url":"{}"}}}}"#,
            upstream.repo_url(repo)
        );
        http(&addr, "POST", path, &[("Host", host)], body.as_bytes())
    };
    let root = event("alice.example.page", "/", "refs/heads/pages", "alice/pages");
    assert_eq!(root.status, 201, "{}", root.body_text());
    let project = event(
        "alice.example.page",
        "/blog/",
        "refs/heads/pages",
        "alice/blog",
    );
    assert_eq!(project.status, 201, "{}", project.body_text());
    let page =
        |path: &str| http(&addr, "GET", path, &[("Host", "alice.example.page")], b"").body_text();
    assert_eq!(page("/"), "<h1>alice/pages</h1>");
    assert_eq!(page("/blog/"), "<h1>alice/blog</h1>");

    let other = event("alice.example.page", "/", "refs/heads/pages", "bob/pages");
    assert_eq!(other.status, 403, "another user's repository");
    assert!(
        other.body_text().contains("alice/pages.git"),
        "{}",
        other.body_text()
    );
    assert_eq!(
        event(
            "alice.example.page",
            "/blog/",
            "refs/heads/pages",
            "alice/pages"
        )
        .status,
        403,
        "another project's repository"
    );
    assert_eq!(
        event("alice.example.page", "/", "refs/heads/main", "alice/pages").status,
        202,
        "another branch"
    );
    assert_eq!(
        event("a.b.example.page", "/", "refs/heads/pages", "alice/pages").status,
        401,
        "not one label under the domain: the DNS challenge applies"
    );
    assert_eq!(
        event("bob.elsewhere", "/", "refs/heads/pages", "bob/pages").status,
        401
    );
    let put = http(
        &addr,
        "PUT",
        "/",
        &[("Host", "bob.example.page")],
        upstream.repo_url("bob/pages").as_bytes(),
    );
    assert_eq!(
        put.status, 401,
        "a PUT is authorized by the DNS challenge only"
    );
    assert_eq!(page("/"), "<h1>alice/pages</h1>");

    // An event body over its bound is too large; one cut short by its client is a bad
    // request, not a too-large one.
    let huge = http(
        &addr,
        "POST",
        "/",
        &[("Host", "alice.example.page")],
        &vec![b' '; (1 << 20) + 1],
    );
    assert_eq!(huge.status, 413, "{}", huge.body_text());
    assert!(huge.body_text().contains("over 1048576 bytes"));
    let mut cut = std::net::TcpStream::connect(&addr).unwrap();
    cut.write_all(
        b"POST / HTTP/1.1\r\nHost: alice.example.page\r\nContent-Length: 1000\r\n\r\n{\"ref\"",
    )
    .unwrap();
    cut.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = cut.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// With a webhook secret, a wildcard's events must be signed, and a signed event sent to the
/// domain itself (a forge-wide webhook's one address) deploys the site its repository
/// names: `<owner>.<domain>`, the root for an index repository, else a project of the
/// repository's name. Unsigned events, to the domain or to a user's host, are refused.
#[test]
fn a_signed_forge_wide_event_deploys_the_site_its_repository_names() {
    let secret = "forge-wide-s3cret-0123";
    // The domain's own site is deployed by the DNS challenge.
    let dns = gitcache_testkit::dns::DnsServer::start().unwrap();
    let challenge = gitcache_pages::http::challenge("example.page", "own-pw");
    dns.set_txt("_git-pages-challenge.example.page", &[&challenge]);
    let server = dns.addr().to_string();
    let (upstream, _cache, addr) = wildcard_forge(
        &["alice/pages", "alice/blog", "Carol/Pages"],
        &[
            "--pages-wildcard-webhook-secret",
            secret,
            "--pages-dns-server",
            &server,
            "--pages-private-sources",
        ],
    );
    let event_with = |host: &str,
                      path: &str,
                      full_name: &str,
                      repo: &str,
                      key: Option<&str>,
                      password: Option<&str>| {
        let body = format!(
            r#"{{"ref":"refs/heads/pages","repository":{{"full_name":"{full_name}","clone_url":"{}"}}}}"#,
            upstream.repo_url(repo)
        );
        let signature = key.map(|key| {
            format!(
                "sha256={}",
                gitcache_http::webhook::sign(key.as_bytes(), body.as_bytes())
            )
        });
        let mut headers = vec![("Host", host)];
        if let Some(signature) = &signature {
            headers.push(("X-Hub-Signature-256", signature.as_str()));
        }
        if key.is_some() && repo.starts_with("Carol/") {
            // As Forgejo signs.
            let hex = signature.as_deref().and_then(|s| s.strip_prefix("sha256="));
            headers = vec![("Host", host), ("X-Forgejo-Signature", hex.unwrap())];
        }
        if let Some(password) = password {
            headers.push(("Authorization", password));
        }
        http(&addr, "POST", path, &headers, body.as_bytes())
    };
    let event = |host: &str, path: &str, full_name: &str, repo: &str, key: Option<&str>| {
        event_with(host, path, full_name, repo, key, None)
    };
    let domain = "example.page";
    let blog = event(domain, "/", "alice/blog", "alice/blog", Some(secret));
    assert_eq!(blog.status, 201, "{}", blog.body_text());
    let root = event(domain, "/", "alice/pages", "alice/pages", Some(secret));
    assert_eq!(root.status, 201, "{}", root.body_text());
    let page =
        |path: &str| http(&addr, "GET", path, &[("Host", "alice.example.page")], b"").body_text();
    assert_eq!(page("/"), "<h1>alice/pages</h1>");
    assert_eq!(page("/blog/"), "<h1>alice/blog</h1>");
    // An owner and an index repository spelled in capitals: the host lower-cased, the
    // repository fetched as the forge spells it.
    let carol = event(domain, "/", "Carol/Pages", "Carol/Pages", Some(secret));
    assert_eq!(carol.status, 201, "{}", carol.body_text());
    let carols = http(&addr, "GET", "/", &[("Host", "carol.example.page")], b"");
    assert_eq!(carols.body_text(), "<h1>Carol/Pages</h1>");

    // Unsigned, signed with another key, or sent to a user's host unsigned: refused (the
    // first as a deploy of the domain's own site, which needs the DNS challenge).
    for (host, path, key) in [
        (domain, "/", None),
        (domain, "/", Some("another-key-0123456789")),
        ("alice.example.page", "/blog/", None),
    ] {
        let refused = event(host, path, "alice/blog", "alice/blog", key);
        assert_eq!(
            refused.status,
            401,
            "{host}{path} {key:?}: {}",
            refused.body_text()
        );
    }
    // Signed to a user's host, as a repository's own webhook: as before.
    let own = event(
        "alice.example.page",
        "/blog/",
        "alice/blog",
        "alice/blog",
        Some(secret),
    );
    assert_eq!(own.status, 200, "unchanged: {}", own.body_text());
    // A repository the template does not name for the site, or an owner no host can name.
    let other = event(domain, "/", "alice/blog", "alice/pages", Some(secret));
    assert_eq!(other.status, 403, "{}", other.body_text());
    let unnamed = event(domain, "/", "al_ice/blog", "alice/blog", Some(secret));
    assert_eq!(unnamed.status, 400, "{}", unnamed.body_text());
    let deeper = event(domain, "/blog/", "alice/blog", "alice/blog", Some(secret));
    assert_eq!(deeper.status, 400, "{}", deeper.body_text());

    // The domain's own site's webhook, signed with a secret of its own and carrying the
    // deploy password: the DNS challenge authorizes it, as an unsigned one (the password
    // wrong: refused by the challenge, not by the signature).
    let own_key = Some("the-sites-own-key-0123");
    let wrong = event_with(
        domain,
        "/",
        "alice/blog",
        "alice/blog",
        own_key,
        Some("Pages no"),
    );
    assert_eq!(wrong.status, 403, "{}", wrong.body_text());
    let own = event_with(
        domain,
        "/",
        "alice/blog",
        "alice/blog",
        own_key,
        Some("Pages own-pw"),
    );
    assert_eq!(own.status, 201, "{}", own.body_text());
    let site = http(&addr, "GET", "/", &[("Host", domain)], b"");
    assert_eq!(site.body_text(), "<h1>alice/blog</h1>");
}

/// The server sweeps the pages' store: a redeploy's replaced blobs go at the next sweep,
/// the deployed site's stay.
#[test]
fn the_server_sweeps_blobs_no_site_names() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/swept");
    repo::generate(&source, &RepoSpec::tiny(1570)).unwrap();
    upstream.adopt_repo("acme/swept", Access::Public).unwrap();
    branch(
        &source,
        "pages",
        &[("index.html", &"<p>one</p>\n".repeat(100))],
    );
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[pages]\nsweep_interval = 1\nsweep_grace = 10\n",
    )
    .unwrap();
    let cache = Gitcache::start(
        &upstream,
        &[
            "--config",
            config.path().to_str().unwrap(),
            "--pages-listen",
            "127.0.0.1:0",
            "--pages-insecure",
            "--pages-private-sources",
        ],
    );
    let addr = pages_addr(&cache);
    let url = upstream.repo_url("acme/swept");
    let host = ("Host", "swept.example");
    assert_eq!(http(&addr, "PUT", "/", &[host], url.as_bytes()).status, 201);
    let blobs_dir = cache.data.path().join("pages/pages/blob");
    let blobs = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&blobs_dir)
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default()
    };
    assert_eq!(blobs().len(), 1);
    let first = blobs()[0].clone();
    branch(
        &source,
        "pages",
        &[("index.html", &"<p>two</p>\n".repeat(100))],
    );
    assert_eq!(http(&addr, "PUT", "/", &[host], url.as_bytes()).status, 201);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while first.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "never swept: {:?}",
            blobs()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(blobs().len(), 1, "the deployed site's blob stays");
    let page = http(&addr, "GET", "/", &[host], b"");
    assert_eq!(page.body_text(), "<p>two</p>\n".repeat(100));
}

/// A deployed site in headless Chromium (`tests/browser/pages_site.mjs`), reached by its
/// host name: styles, image, script, a rewrite, the 404 page and a header from `_headers`.
/// The screenshot is kept at `target/tmp/pages-site.png`. Skipped locally without Chromium
/// and `npm ci` in `tests/browser`; required under CI.
#[test]
fn a_deployed_site_renders_in_a_browser() {
    let Some(chromium) = common::browser() else {
        return;
    };
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/www");
    repo::generate(&source, &RepoSpec::tiny(1580)).unwrap();
    upstream.adopt_repo("acme/www", Access::Public).unwrap();
    let style = format!(
        "body {{ font-family: sans-serif; margin: 2em; }}\nh1 {{ color: #006633; }}\n{}",
        ".unused { margin: 0 }\n".repeat(60)
    );
    let image = r##"<svg xmlns="http://www.w3.org/2000/svg" width="120" height="40"><rect width="120" height="40" fill="#fc6"/><text x="10" y="26">gitcache</text></svg>"##;
    branch(
        &source,
        "pages",
        &[
            (
                "index.html",
                "<!doctype html><html><head><title>gitcache pages</title>\
                 <link rel=icon href=\"data:,\"><link rel=stylesheet href=/style.css></head><body>\
                 <h1>Served from a git tree</h1><img src=/logo.svg alt=logo>\
                 <p id=script></p><p><a id=about href=/about>About</a></p>\
                 <script src=/app.js></script></body></html>",
            ),
            ("style.css", &style),
            ("logo.svg", image),
            (
                "app.js",
                "document.getElementById('script').textContent = 'script ran';",
            ),
            (
                "about.html",
                "<!doctype html><title>about</title><link rel=icon href=\"data:,\"><link rel=stylesheet href=/style.css><h1>About this site</h1>",
            ),
            (
                "404.html",
                "<!doctype html><title>lost</title><link rel=stylesheet href=/style.css><h1>Lost</h1>",
            ),
            ("_redirects", "/about /about.html 200\n"),
            ("_headers", "/*\n  X-Frame-Options: DENY\n"),
        ],
    );
    let (_cache, addr) = open_pages(&upstream, &[]);
    let host = "www.site.example";
    let put = http(
        &addr,
        "PUT",
        "/",
        &[("Host", host)],
        upstream.repo_url("acme/www").as_bytes(),
    );
    assert_eq!(put.status, 201, "{}", put.body_text());
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pages-site.png");
    common::run_browser_script(
        "pages_site.mjs",
        &[host.as_ref(), addr.as_ref(), screenshot.as_ref()],
        &chromium,
        &screenshot,
        "pages site: ok",
    );
}

/// A client that asks for a large file and reads none of it loses its connection once it
/// has taken nothing for the stall timeout, not at the connection's lifetime: connections
/// held so cannot lock other clients out of every site for long.
#[test]
fn a_client_that_stops_reading_a_page_is_cut_off() {
    let upstream = Upstream::start().unwrap();
    let source = upstream.repo_path("acme/big-site");
    repo::generate(&source, &RepoSpec::tiny(1520)).unwrap();
    upstream
        .adopt_repo("acme/big-site", Access::Public)
        .unwrap();
    // Larger than what the socket buffers on the way hold, and not compressible.
    let mut rng = gitcache_testkit::repo::Rng::new(1521);
    let big: String = (0..(16 << 20) / 64)
        .map(|_| {
            format!(
                "{:016x}{:016x}{:016x}{:015x}\n",
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64() >> 4
            )
        })
        .collect();
    branch(
        &source,
        "pages",
        &[("index.html", "<h1>big</h1>"), ("big.txt", &big)],
    );
    let (_cache, addr) = open_pages(&upstream, &["--response-stall-timeout", "2"]);
    let host = [("Host", "big.example")];
    let put = http(
        &addr,
        "PUT",
        "/",
        &host,
        upstream.repo_url("acme/big-site").as_bytes(),
    );
    assert_eq!(put.status, 201, "{}", put.body_text());

    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    std::io::Write::write_all(
        &mut stalled,
        b"GET /big.txt HTTP/1.1\r\nHost: big.example\r\nAccept-Encoding: identity\r\n\r\n",
    )
    .unwrap();
    // Nothing read for longer than the stall timeout: then what is left is the end.
    std::thread::sleep(std::time::Duration::from_secs(5));
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut received = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stalled, &mut received);
    assert!(
        received.len() < big.len(),
        "cut off, not sent whole: {} bytes",
        received.len()
    );
    // The server still answers others.
    let index = http(&addr, "GET", "/", &host, b"");
    assert_eq!(index.status, 200, "{}", index.body_text());
}
