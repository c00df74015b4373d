//! A repository's identity, the one type every layer names a repository by: routing, the
//! catalog, mirrors, stored responses. Its names are checked once, by one set of rules, before
//! they touch a disk or a bucket.

use std::path::{Path, PathBuf};

/// A repository: one upstream host, one owner, one name; also its place among the mirrors.
///
/// Upstreams disagree on case: GitHub treats `acme/Widgets` and `acme/widgets` as one
/// repository, while C git's http-backend, cgit or Gerrit serve two. A key therefore keeps
/// names exactly as given ([`RepoKey::new`]) unless the upstream is known to fold them
/// ([`RepoKey::folded`]); the caller that builds it must then also ask the upstream with
/// the folded names ([`owner`](Self::owner), [`repo`](Self::repo)), so that a mirror, its
/// grants and its stored responses belong to exactly the repository the upstream checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoKey {
    host: String,
    owner: String,
    repo: String,
}

/// A name that cannot be a path component of a mirror.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} '{name}': use letters, digits, '.', '_' and '-', not '.' or '..'")]
pub struct InvalidName {
    /// Which part: host, owner or repository.
    pub what: &'static str,
    /// The name given.
    pub name: String,
}

fn check(what: &'static str, name: &str) -> Result<String, InvalidName> {
    // `org/.github` is a repository on GitHub: a leading dot is fine, `.` and `..` are not.
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(InvalidName {
            what,
            name: name.to_owned(),
        })
    }
}

/// A checked name as a path component that stays distinct from every other name on a file
/// system that ignores case: each upper-case letter is written as `^` and the letter in lower
/// case (`^` is never part of a name).
fn path_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('^');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

impl RepoKey {
    /// The key of `owner/repo` on `host`, names kept exactly as given (the upstream tells
    /// `Widgets` from `widgets`); a trailing `.git` is dropped and the host is compared
    /// without case. Names are checked before they touch the disk.
    pub fn new(host: &str, owner: &str, repo: &str) -> Result<Self, InvalidName> {
        let repo = repo.strip_suffix(".git").unwrap_or(repo);
        // A port in the host is kept apart from the name rules.
        let mut parts = host.splitn(2, ':');
        check("host", parts.next().unwrap_or_default())?;
        if let Some(port) = parts.next()
            && port.parse::<u16>().is_err()
        {
            return Err(InvalidName {
                what: "host",
                name: host.to_owned(),
            });
        }
        Ok(RepoKey {
            host: host.to_ascii_lowercase().replace(':', "_"),
            owner: check("owner", owner)?,
            repo: check("repository", repo)?,
        })
    }

    /// The key of `owner/repo` on an upstream that compares names without case (GitHub):
    /// names are lower-cased, and the upstream must be asked with these names.
    pub fn folded(host: &str, owner: &str, repo: &str) -> Result<Self, InvalidName> {
        let key = RepoKey::new(host, owner, repo)?;
        Ok(RepoKey {
            owner: key.owner.to_ascii_lowercase(),
            repo: key.repo.to_ascii_lowercase(),
            host: key.host,
        })
    }

    /// The owner, as the key holds it.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The repository name (without `.git`), as the key holds it.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The key whose [`relative_path`](Self::relative_path) is `path` (what a walk of the
    /// registry's folder finds), if it is one. A first folder starting with `.` (no host
    /// does) is the registry's own, such as its trash.
    pub fn from_relative_path(path: &Path) -> Option<RepoKey> {
        let mut parts = path.components().map(|c| c.as_os_str().to_str());
        let (Some(Some(host)), Some(Some(owner)), Some(Some(repo)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if host.starts_with('.') {
            return None;
        }
        let unescape = |name: &str| -> Option<String> {
            let mut out = String::with_capacity(name.len());
            let mut chars = name.chars();
            while let Some(c) = chars.next() {
                match c {
                    '^' => out.push(
                        chars
                            .next()
                            .filter(char::is_ascii_lowercase)?
                            .to_ascii_uppercase(),
                    ),
                    c if c.is_ascii_uppercase() => return None,
                    c => out.push(c),
                }
            }
            Some(out)
        };
        let key = RepoKey {
            host: check("host", host).ok()?.to_ascii_lowercase(),
            owner: check("owner", &unescape(owner)?).ok()?,
            repo: check("repository", &unescape(repo.strip_suffix(".git")?)?).ok()?,
        };
        (key.relative_path() == path).then_some(key)
    }

    /// `<host>/<owner>/<repo>.git`, relative to the registry's root; upper-case letters are
    /// written as `^` and the lower-case letter, so that two names differing only in case
    /// never share a folder, whatever the file system.
    pub fn relative_path(&self) -> PathBuf {
        Path::new(&self.host)
            .join(path_component(&self.owner))
            .join(format!("{}.git", path_component(&self.repo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_names_its_key_back() {
        for key in [
            RepoKey::new("github.com", "acme", "widgets").unwrap(),
            RepoKey::new("127.0.0.1:8080", "Acme", "Wid-gets_2.git").unwrap(),
            RepoKey::folded("GitHub.com", "ACME", ".github").unwrap(),
        ] {
            assert_eq!(RepoKey::from_relative_path(&key.relative_path()), Some(key));
        }
        for path in [
            "github.com/acme",
            "github.com/acme/widgets",
            "github.com/acme/widgets.git/more",
            "github.com/Acme/widgets.git",
            "github.com/^/widgets.git",
            "github.com/../widgets.git",
            ".removed/1-0/x.git",
        ] {
            assert_eq!(RepoKey::from_relative_path(Path::new(path)), None, "{path}");
        }
    }
}
