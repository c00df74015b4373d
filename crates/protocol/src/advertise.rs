//! The capability advertisement: the answer to `GET info/refs?service=git-upload-pack` when the
//! client asks for protocol v2 (`Git-Protocol: version=2`).
//!
//! In v2 the body starts directly with `version 2`; there is no `# service=` preamble.

use std::io::Write;

use gix_hash::Kind;

use crate::pktline::{self, Error};

/// The content type of the advertisement over HTTP.
pub const CONTENT_TYPE: &str = "application/x-git-upload-pack-advertisement";

/// What the server says it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// `agent=<value>`.
    pub agent: String,
    /// `ls-refs=unborn` instead of plain `ls-refs`.
    pub ls_refs_unborn: bool,
    /// `fetch` features in git's order: `shallow` and `wait-for-done` always, then these.
    pub fetch_filter: bool,
    /// `ref-in-want`: the `want-ref` argument.
    pub fetch_ref_in_want: bool,
    /// `sideband-all`.
    pub fetch_sideband_all: bool,
    /// `packfile-uris`.
    pub fetch_packfile_uris: bool,
    /// `server-option`.
    pub server_option: bool,
    /// `object-format=<name>`.
    pub object_format: Kind,
    /// `session-id=<value>`.
    pub session_id: Option<String>,
    /// `object-info`.
    pub object_info: bool,
}

impl Advertisement {
    /// What gitcache advertises by default for a repository of `object_format`: what `git
    /// http-backend` advertises for a repository configured as forges configure them.
    pub fn new(agent: impl Into<String>, object_format: Kind) -> Self {
        Advertisement {
            agent: agent.into(),
            ls_refs_unborn: true,
            fetch_filter: true,
            fetch_ref_in_want: false,
            fetch_sideband_all: false,
            fetch_packfile_uris: false,
            server_option: true,
            object_format,
            session_id: None,
            object_info: false,
        }
    }

    /// The `fetch=` value.
    pub fn fetch_features(&self) -> String {
        let mut value = String::from("shallow wait-for-done");
        for (on, name) in [
            (self.fetch_filter, " filter"),
            (self.fetch_ref_in_want, " ref-in-want"),
            (self.fetch_sideband_all, " sideband-all"),
            (self.fetch_packfile_uris, " packfile-uris"),
        ] {
            if on {
                value.push_str(name);
            }
        }
        value
    }

    /// Write the advertisement, flush included.
    pub fn write_to(&self, out: &mut impl Write) -> Result<(), Error> {
        pktline::write_text(out, b"version 2")?;
        pktline::write_text(out, format!("agent={}", self.agent).as_bytes())?;
        pktline::write_text(
            out,
            if self.ls_refs_unborn {
                b"ls-refs=unborn"
            } else {
                b"ls-refs"
            },
        )?;
        pktline::write_text(out, format!("fetch={}", self.fetch_features()).as_bytes())?;
        if self.server_option {
            pktline::write_text(out, b"server-option")?;
        }
        pktline::write_text(
            out,
            format!("object-format={}", self.object_format).as_bytes(),
        )?;
        if let Some(id) = &self.session_id {
            pktline::write_text(out, format!("session-id={id}").as_bytes())?;
        }
        if self.object_info {
            pktline::write_text(out, b"object-info")?;
        }
        pktline::write_flush(out)?;
        Ok(())
    }
}
