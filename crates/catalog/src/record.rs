//! A cached repository's record, what a new one and a change carry, and their validation.

use gitcache_storage::repo::RepoKey;
use serde::Serialize;

/// The upstream timeout a new record gets, in seconds.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 30;
/// The range `timeout_seconds` must fall in.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 1..=3600;

/// One cached repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Assigned by the catalog.
    pub id: i64,
    /// The upstream host, lower-cased (the default upstream's host, or one allowed in paths).
    pub host: String,
    /// The owner, as written (folded by the caller for upstreams that ignore case).
    pub owner: String,
    /// The repository name without `.git`, as written (folded likewise).
    pub name: String,
    /// Whether the cache serves it; a disabled record passes every request through.
    pub enabled: bool,
    /// How long an upstream exchange for this repository may take.
    pub timeout_seconds: u32,
    /// The most its stored responses may take on disk; `None`: no limit of its own.
    pub max_cache_size_mb: Option<u64>,
    /// When it was added, in seconds since the Unix epoch.
    #[serde(serialize_with = "as_rfc3339")]
    pub created_at: i64,
    /// When it last changed, in seconds since the Unix epoch.
    #[serde(serialize_with = "as_rfc3339")]
    pub updated_at: i64,
    /// How many times its cached data was purged ([`Catalog::note_purge`](crate::Catalog::note_purge)):
    /// an instance whose copy is older than the last purge drops it.
    pub purges: i64,
}

impl Record {
    /// `owner/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// A repository to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRepo {
    /// The upstream host.
    pub host: String,
    /// The owner.
    pub owner: String,
    /// The repository name (a `.git` suffix is dropped).
    pub name: String,
    /// Whether the cache serves it.
    pub enabled: bool,
    /// The upstream timeout, 1–3600 seconds.
    pub timeout_seconds: u32,
    /// The response cache limit in MiB; `None` or `Some(0)`: no limit of its own.
    pub max_cache_size_mb: Option<u64>,
}

impl NewRepo {
    /// A new enabled record with the default timeout and no size limit.
    pub fn new(host: &str, owner: &str, name: &str) -> Self {
        NewRepo {
            host: host.to_owned(),
            owner: owner.to_owned(),
            name: name.to_owned(),
            enabled: true,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            max_cache_size_mb: None,
        }
    }

    /// The same, checked and in the form stored: names by the rules of every repository's
    /// identity ([`RepoKey`]) and kept as written (an upstream may tell `Widgets` from
    /// `widgets`; for one that does not, the caller gives the folded names), the host
    /// lower-cased.
    pub(crate) fn normalized(&self) -> Result<NewRepo, Invalid> {
        let host = self.host.trim();
        let key = RepoKey::new(host, self.owner.trim(), self.name.trim()).map_err(|err| {
            let field = match err.what {
                "host" => "host",
                "owner" => "owner",
                _ => "name",
            };
            invalid(field, err.to_string())
        })?;
        Ok(NewRepo {
            host: host.to_ascii_lowercase(),
            owner: key.owner().to_owned(),
            name: key.repo().to_owned(),
            enabled: self.enabled,
            timeout_seconds: check_timeout(self.timeout_seconds)?,
            max_cache_size_mb: self.max_cache_size_mb.filter(|&mb| mb > 0),
        })
    }
}

/// Changes to a record; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// New `enabled`.
    pub enabled: Option<bool>,
    /// New `timeout_seconds`.
    pub timeout_seconds: Option<u32>,
    /// New limit in MiB; `Some(0)` clears it.
    pub max_cache_size_mb: Option<u64>,
}

impl Changes {
    pub(crate) fn check(&self) -> Result<(), Invalid> {
        if let Some(t) = self.timeout_seconds {
            check_timeout(t)?;
        }
        Ok(())
    }
}

/// A field that cannot take the value given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The field's name, as in [`Record`].
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_timeout(seconds: u32) -> Result<u32, Invalid> {
    if TIMEOUT_RANGE.contains(&seconds) {
        Ok(seconds)
    } else {
        Err(invalid(
            "timeout_seconds",
            format!(
                "must be between {} and {} seconds",
                TIMEOUT_RANGE.start(),
                TIMEOUT_RANGE.end()
            ),
        ))
    }
}

/// `seconds` since the Unix epoch as an RFC 3339 UTC time, e.g. `2026-11-25T12:00:00Z`.
pub fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

fn as_rfc3339<S: serde::Serializer>(seconds: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_617_000), "2026-11-25T14:30:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn names_are_checked_and_kept_as_written() {
        let repo = NewRepo::new("GitHub.com", " Acme ", "Widgets.git")
            .normalized()
            .unwrap();
        assert_eq!(
            (repo.host.as_str(), repo.owner.as_str(), repo.name.as_str()),
            ("github.com", "Acme", "Widgets")
        );
        for (owner, name, field) in [
            ("", "w", "owner"),
            ("a", "", "name"),
            ("a/b", "w", "owner"),
            ("a", "..", "name"),
            ("a", "w x", "name"),
            ("a", ".git", "name"),
            (".", "w", "owner"),
        ] {
            let err = NewRepo::new("h", owner, name).normalized().unwrap_err();
            assert_eq!(err.field, field, "{owner}/{name}: {err}");
        }
        // `org/.github` is a repository on GitHub.
        let dotted = NewRepo::new("github.com", "acme", ".github")
            .normalized()
            .unwrap();
        assert_eq!(dotted.name, ".github");
        assert_eq!(
            NewRepo::new("bad host", "a", "b")
                .normalized()
                .unwrap_err()
                .field,
            "host"
        );
    }

    #[test]
    fn timeouts_in_range_and_zero_limits_cleared() {
        let mut repo = NewRepo::new("h", "a", "b");
        repo.timeout_seconds = 0;
        assert_eq!(repo.normalized().unwrap_err().field, "timeout_seconds");
        repo.timeout_seconds = 3601;
        assert_eq!(repo.normalized().unwrap_err().field, "timeout_seconds");
        repo.timeout_seconds = 3600;
        repo.max_cache_size_mb = Some(0);
        assert_eq!(repo.normalized().unwrap().max_cache_size_mb, None);
        assert!(
            Changes {
                timeout_seconds: Some(0),
                ..Changes::default()
            }
            .check()
            .is_err()
        );
    }
}
