//! Errors of planning and writing a fetch response.

use bstr::BString;
use gitcache_protocol::pktline::shown;
use gix_hash::ObjectId;

/// Why a fetch could not be answered.
///
/// Errors the client caused ([`Error::is_client_error`]) carry git's own wording, which
/// [`Error::wire_message`] gives for an `ERR` line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `want` names an object the repository does not have.
    #[error("upload-pack: not our ref {oid}")]
    NotOurRef {
        /// The object.
        oid: ObjectId,
    },
    /// A `want-ref` names a ref the repository does not have.
    #[error("unknown ref {}", shown(name))]
    UnknownRef {
        /// The ref.
        name: BString,
    },
    /// The same `want-ref` twice.
    #[error("duplicate want-ref {}", shown(name))]
    DuplicateWantRef {
        /// The ref.
        name: BString,
    },
    /// A `deepen-not` names no single ref.
    #[error("git upload-pack: ambiguous deepen-not: deepen-not {}", shown(name))]
    AmbiguousDeepenNot {
        /// The name as given.
        name: BString,
    },
    /// A `shallow` line names an object that is not a commit.
    #[error("invalid shallow object {oid}")]
    InvalidShallow {
        /// The object.
        oid: ObjectId,
    },
    /// `deepen-since` or `deepen-not` left no commit to send.
    #[error("no commits selected for shallow requests")]
    NoShallowCommits,
    /// The client speaks another object format than the repository.
    #[error("mismatched object format: server {server}; client {client}")]
    ObjectFormatMismatch {
        /// The repository's.
        server: gix_hash::Kind,
        /// The client's.
        client: gix_hash::Kind,
    },
    /// A filter this server does not implement.
    #[error("filter '{name}' not supported")]
    UnsupportedFilter {
        /// The filter's name, as git names it.
        name: &'static str,
    },
    /// The work was cancelled (see [`Options::cancel`](crate::Options::cancel)).
    #[error("cancelled: the client went away")]
    Cancelled,
    /// A `combine:` filter with more distinct sub-filters than one walk keeps state for.
    #[error("filter-spec too complex: more than 64 distinct sub-filters")]
    FilterTooComplex,
    /// An object the history refers to is missing.
    #[error("object {oid} is missing from the repository")]
    MissingObject {
        /// The object.
        oid: ObjectId,
    },
    /// An object could not be read or parsed.
    #[error("object {oid} is corrupt: {reason}")]
    Corrupt {
        /// The object.
        oid: ObjectId,
        /// What was wrong.
        reason: String,
    },
    /// The repository could not be opened.
    #[error("cannot open repository at {path}: {message}")]
    Open {
        /// Its path.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// The object database failed.
    #[error("object database: {message}")]
    Odb {
        /// What it said.
        message: String,
    },
    /// A reachability bitmap file cannot be used.
    #[error("bitmap: {0}")]
    Bitmap(String),
    /// Writing the response failed (often: the client went away).
    #[error("writing the response failed")]
    Io(#[from] std::io::Error),
    /// Framing the response failed.
    #[error(transparent)]
    Response(#[from] gitcache_protocol::response::Error),
}

impl Error {
    /// Whether the request, not the repository or the connection, is at fault.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Error::NotOurRef { .. }
                | Error::UnknownRef { .. }
                | Error::DuplicateWantRef { .. }
                | Error::AmbiguousDeepenNot { .. }
                | Error::InvalidShallow { .. }
                | Error::NoShallowCommits
                | Error::ObjectFormatMismatch { .. }
                | Error::UnsupportedFilter { .. }
                | Error::FilterTooComplex
        )
    }

    /// The text for an `ERR` line or a band-3 message: git's own wording for what the
    /// request did wrong; for a failure on the server's side (a path, a corrupt object, the
    /// object database's own words), only that it failed: the cause is for its log.
    pub fn wire_message(&self) -> String {
        if self.is_client_error() || matches!(self, Error::Cancelled) {
            self.to_string()
        } else {
            "internal error: the server could not answer from its copy of the repository".to_owned()
        }
    }

    pub(crate) fn odb(err: impl std::fmt::Display) -> Self {
        Error::Odb {
            message: err.to_string(),
        }
    }
}

impl From<gitcache_protocol::pktline::Error> for Error {
    fn from(err: gitcache_protocol::pktline::Error) -> Self {
        Error::Response(err.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_the_server_keep_their_cause_off_the_wire() {
        let open = Error::Open {
            path: "/srv/gitcache/mirrors/acme/secret.git".into(),
            message: "permission denied".into(),
        };
        let corrupt = Error::Corrupt {
            oid: gix_hash::ObjectId::null(gix_hash::Kind::Sha1),
            reason: "inflate failed".into(),
        };
        for err in [open, corrupt, Error::odb("/srv/x: I/O error")] {
            let wire = err.wire_message();
            assert!(
                !wire.contains("/srv") && !wire.contains("inflate"),
                "{wire}"
            );
            assert!(wire.starts_with("internal error"), "{wire}");
        }
        let refused = Error::UnknownRef {
            name: "refs/heads/nope".into(),
        };
        assert_eq!(refused.wire_message(), "unknown ref refs/heads/nope");
    }
}
