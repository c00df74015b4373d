//! Which repository and which git service a request is for.
//!
//! - `/{owner}/{repo}[.git]/{service}` goes to the default upstream;
//! - `/{host}/{owner}/{repo}[.git]/{service}` goes to `host`, if the operator allows it.
//!
//! Services: `info/refs` (with its `service=` query), `git-upload-pack`, `git-receive-pack`,
//! and anything else under the repository (dumb HTTP: `HEAD`, `objects/…`). Owner and
//! repository names are checked before they can become paths: a bad one is a 400 with a
//! message, and nothing touches the disk. So is any path with an empty, `.` or `..` segment, a
//! backslash or a percent-escape (an upstream that decodes them would serve another
//! repository's files): such a path never goes upstream, whatever the mode.

use gitcache_storage::repo::{InvalidName, RepoKey};

/// The git service a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// `GET info/refs?service=<name>`; `None` without the query (dumb HTTP).
    InfoRefs(Option<String>),
    /// `POST git-upload-pack`.
    UploadPack,
    /// `POST git-receive-pack` (push: always passed through).
    ReceivePack,
    /// Any other path under the repository (dumb HTTP), passed through.
    Other(String),
}

/// A request's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The upstream host named in the path, or `None` for the default upstream.
    pub host: Option<String>,
    /// Owner as given (case kept for upstream URLs).
    pub owner: String,
    /// Repository name as given, without `.git`.
    pub repo: String,
    /// The service.
    pub service: Service,
}

/// Why a path names no repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// Not a repository path at all (404).
    #[error("not a repository path")]
    NotFound,
    /// A host in the path that the operator did not allow (404: not ours to proxy).
    #[error("upstream host '{0}' is not allowed")]
    HostNotAllowed(String),
    /// A name that cannot be a repository (400).
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// A path that could leave the repository upstream: empty, `.` or `..` segments,
    /// backslashes, percent-escapes or control characters (400).
    #[error("invalid path '{0}': no empty, '.' or '..' segments, backslashes or escapes")]
    InvalidPath(String),
}

impl Service {
    /// Whether this is a file git's dumb HTTP protocol reads from a repository: `HEAD`,
    /// `objects/info/{packs,alternates,http-alternates}`, a loose object or a pack and its
    /// index. Nothing else under a repository is.
    pub fn is_dumb_http_file(&self) -> bool {
        let Service::Other(rest) = self else {
            return false;
        };
        let hex = |s: &str, lens: &[usize]| {
            lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
        };
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            ["HEAD"] => true,
            [
                "objects",
                "info",
                "packs" | "alternates" | "http-alternates",
            ] => true,
            ["objects", "pack", file] => file
                .strip_prefix("pack-")
                .and_then(|f| f.strip_suffix(".pack").or_else(|| f.strip_suffix(".idx")))
                .is_some_and(|h| hex(h, &[40, 64])),
            ["objects", dir, file] => hex(dir, &[2]) && hex(file, &[38, 62]),
            _ => false,
        }
    }
}

impl RouteError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound | RouteError::HostNotAllowed(_) => 404,
            RouteError::InvalidName(_) | RouteError::InvalidPath(_) => 400,
        }
    }
}

/// Split `path` (and `query`) into a route; `allowed_hosts` are the hosts that may appear in
/// paths.
pub fn route(
    path: &str,
    query: Option<&str>,
    allowed_hosts: &[String],
) -> Result<Route, RouteError> {
    let path = path
        .strip_prefix('/')
        .filter(|p| !p.is_empty())
        .ok_or(RouteError::NotFound)?;
    check_segments(path)?;
    // The service is what follows the `<repo>` segment; find it by its known shapes.
    let (repo_part, service) = if let Some(p) = path.strip_suffix("/info/refs") {
        let mut services = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|kv| kv.strip_prefix("service="));
        let service = services.next();
        // One service git knows, or none (dumb HTTP); never two to choose from.
        if services.next().is_some()
            || service.is_some_and(|s| s != "git-upload-pack" && s != "git-receive-pack")
        {
            return Err(RouteError::NotFound);
        }
        (p, Service::InfoRefs(service.map(str::to_owned)))
    } else if let Some(p) = path.strip_suffix("/git-upload-pack") {
        (p, Service::UploadPack)
    } else if let Some(p) = path.strip_suffix("/git-receive-pack") {
        (p, Service::ReceivePack)
    } else {
        // Dumb HTTP: `<repo>.git/<rest>`; only with the `.git` suffix, to tell where the
        // repository name ends.
        let (p, rest) = path.split_once(".git/").ok_or(RouteError::NotFound)?;
        (p, Service::Other(rest.to_owned()))
    };
    let segments: Vec<&str> = repo_part.split('/').collect();
    let (host, owner, repo) = match segments.as_slice() {
        [owner, repo] => (None, *owner, *repo),
        [host, owner, repo] => {
            if !allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                return Err(RouteError::HostNotAllowed((*host).to_owned()));
            }
            (Some((*host).to_ascii_lowercase()), *owner, *repo)
        }
        _ => return Err(RouteError::NotFound),
    };
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    // The same rules the mirror paths follow.
    RepoKey::new(host.as_deref().unwrap_or("default"), owner, repo)?;
    Ok(Route {
        host,
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        service,
    })
}

/// Refuse a path an upstream could resolve to somewhere else: every segment must be
/// non-empty, not `.` or `..`, and free of backslashes, percent-escapes (`%2e%2e`, `%2f`),
/// `;` and control characters. Git never sends such paths.
fn check_segments(path: &str) -> Result<(), RouteError> {
    let bad_segment = |s: &str| s.is_empty() || s == "." || s == "..";
    // `;` too: Java servers read `..;` as `..` (path parameters).
    let bad_byte =
        |b: u8| matches!(b, b'\\' | b'%' | b';') || b.is_ascii_control() || !b.is_ascii();
    if path.split('/').any(bad_segment) || path.bytes().any(bad_byte) {
        return Err(RouteError::InvalidPath(path.chars().take(200).collect()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["gitlab.example".to_owned(), "127.0.0.1:9000".to_owned()]
    }

    #[test]
    fn default_upstream_paths() {
        let r = route(
            "/acme/widgets.git/info/refs",
            Some("service=git-upload-pack"),
            &hosts(),
        )
        .unwrap();
        assert_eq!(
            r,
            Route {
                host: None,
                owner: "acme".into(),
                repo: "widgets".into(),
                service: Service::InfoRefs(Some("git-upload-pack".into()))
            }
        );
        let r = route("/acme/widgets/git-upload-pack", None, &hosts()).unwrap();
        assert_eq!(
            (r.repo.as_str(), r.service),
            ("widgets", Service::UploadPack)
        );
        assert_eq!(
            route("/acme/widgets.git/git-receive-pack", None, &[])
                .unwrap()
                .service,
            Service::ReceivePack
        );
        assert_eq!(
            route("/acme/widgets.git/objects/info/packs", None, &[])
                .unwrap()
                .service,
            Service::Other("objects/info/packs".into())
        );
        assert_eq!(
            route("/acme/widgets.git/info/refs", None, &[])
                .unwrap()
                .service,
            Service::InfoRefs(None)
        );
    }

    #[test]
    fn host_in_path_only_for_allowed_hosts() {
        let r = route(
            "/GitLab.example/acme/widgets.git/git-upload-pack",
            None,
            &hosts(),
        )
        .unwrap();
        assert_eq!(r.host.as_deref(), Some("gitlab.example"));
        let r = route(
            "/127.0.0.1:9000/acme/widgets/info/refs",
            Some("service=git-upload-pack"),
            &hosts(),
        )
        .unwrap();
        assert_eq!(r.host.as_deref(), Some("127.0.0.1:9000"));
        let err = route("/evil.example/acme/widgets/info/refs", None, &hosts()).unwrap_err();
        assert_eq!(
            (err.status(), err.to_string().as_str()),
            (404, "upstream host 'evil.example' is not allowed")
        );
    }

    #[test]
    fn dot_segments_escapes_and_backslashes_are_a_400() {
        for path in [
            "/acme/ripgrep.git/info/../../../private/ripgrep.git/HEAD",
            "/acme/ripgrep.git/./HEAD",
            "/acme/ripgrep.git/objects//info/packs",
            "/acme/ripgrep.git/info/%2e%2e/%2E%2E/private/ripgrep.git/HEAD",
            "/acme/ripgrep.git/info/..%2fx/HEAD",
            "/acme/ripgrep.git/info\\..\\..\\HEAD",
            "/acme/ripgrep.git/HEAD/",
            "//acme/ripgrep.git/HEAD",
            "/acme/ripgrep.git/HE%00AD",
            "/acme/ripgrep.git/objects/info/packs\n",
            "/acme/ripgrep.git/info/..;/..;/private/ripgrep.git/HEAD",
        ] {
            let err = route(path, None, &hosts()).unwrap_err();
            assert_eq!(err.status(), 400, "{path}: {err}");
            assert!(err.to_string().starts_with("invalid path"), "{path}: {err}");
        }
        // What git sends stays fine.
        assert!(route("/acme/ripgrep.git/objects/ab/cdef0123", None, &hosts()).is_ok());
    }

    #[test]
    fn dumb_http_files_are_known_by_shape() {
        let file = |rest: &str| Service::Other(rest.into()).is_dumb_http_file();
        for rest in [
            "HEAD",
            "objects/info/packs",
            "objects/ab/cdef0123456789abcdef0123456789abcdef01",
            "objects/pack/pack-0123456789abcdef0123456789abcdef01234567.pack",
            "objects/pack/pack-0123456789abcdef0123456789abcdef01234567.idx",
        ] {
            assert!(file(rest), "{rest}");
        }
        for rest in [
            "config",
            "info/lfs/objects/batch",
            "objects/pack/pack-01.pack",
            "objects/ab/cd",
            "a/..;/b",
            "hooks/post-update",
        ] {
            assert!(!file(rest), "{rest}");
        }
        assert!(!Service::UploadPack.is_dumb_http_file());
    }

    #[test]
    fn bad_names_are_a_400_before_anything_else() {
        for path in [
            "/../widgets/info/refs",
            "/acme/../info/refs",
            "/acme/.git/info/refs",
            "/ac%2fme/widgets/info/refs",
            "/acme/wid gets/git-upload-pack",
        ] {
            let err = route(path, None, &hosts()).unwrap_err();
            assert_eq!(err.status(), 400, "{path}: {err}");
            assert!(err.to_string().starts_with("invalid "), "{err}");
        }
        assert_eq!(
            route(
                "/acme/widgets.git/info/refs",
                Some("service=git-upload-pack&service=git-receive-pack"),
                &hosts()
            )
            .unwrap_err()
            .status(),
            404
        );
        assert!(route("/acme/widgets.git/info/refs", Some("service=git-evil"), &[]).is_err());
        // A leading dot is a name (GitHub's `org/.github`); `.` and `..` alone are not.
        let dotted = route("/org/.github.git/info/refs", None, &hosts()).unwrap();
        assert_eq!(
            (dotted.owner.as_str(), dotted.repo.as_str()),
            ("org", ".github")
        );
        for path in [
            "/",
            "/acme/info/refs",
            "/a/b/c/d/info/refs",
            "/acme/widgets/unknown",
            "no-slash",
        ] {
            assert_eq!(
                route(path, None, &hosts()).unwrap_err().status(),
                404,
                "{path}"
            );
        }
    }
}
