//! The capability advertisement: the answer to `GET info/refs?service=git-upload-pack` when the
//! client asks for protocol v2 (`Git-Protocol: version=2`).
//!
//! In v2 the body starts directly with `version 2`; some front ends put v0's preamble
//! (`# service=git-upload-pack` up to a flush) before it, which git's client reads past.

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
    /// `bundle-uri`: the server answers `command=bundle-uri`.
    pub bundle_uri: bool,
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
            bundle_uri: false,
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

    /// Refuse a `fetch` that uses a feature this advertisement does not offer, as `git
    /// upload-pack` does (`unexpected line: '…'`): `want-ref` without `ref-in-want`,
    /// `filter` without `filter`, `sideband-all` and `packfile-uris` without theirs.
    ///
    /// ```
    /// use gitcache_protocol::advertise::Advertisement;
    /// use gitcache_protocol::request::Fetch;
    /// let ours = Advertisement::new("git/gitcache", gix_hash::Kind::Sha1);
    /// let fetch = Fetch { want_refs: vec!["refs/heads/main".into()], ..Fetch::default() };
    /// let err = ours.check_fetch(&fetch).unwrap_err();
    /// assert_eq!(err.to_string(), "unexpected line: 'want-ref refs/heads/main'");
    /// ```
    pub fn check_fetch(&self, fetch: &crate::request::Fetch) -> Result<(), crate::request::Error> {
        // The line as the client sent it, cut and escaped as other unknown lines are.
        let refuse = |line: String| {
            Err(crate::request::Error::UnknownArgument {
                command: "fetch",
                line: pktline::shown(line.as_bytes()),
            })
        };
        if !self.fetch_ref_in_want
            && let Some(name) = fetch.want_refs.first()
        {
            return refuse(format!("want-ref {name}"));
        }
        if !self.fetch_filter
            && let Some(filter) = &fetch.filter
        {
            return refuse(format!("filter {filter}"));
        }
        if !self.fetch_sideband_all && fetch.sideband_all {
            return refuse("sideband-all".to_owned());
        }
        if !self.fetch_packfile_uris && !fetch.packfile_uris.is_empty() {
            // As many of the protocols as are shown, not all of them.
            let mut line = String::from("packfile-uris ");
            for (i, protocol) in fetch.packfile_uris.iter().enumerate() {
                if line.len() > pktline::SHOWN_MOST {
                    break;
                }
                if i > 0 {
                    line.push(',');
                }
                line.push_str(protocol);
            }
            return refuse(line);
        }
        Ok(())
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
        if self.bundle_uri {
            pktline::write_text(out, b"bundle-uri")?;
        }
        pktline::write_flush(out)?;
        Ok(())
    }
}

/// Why an advertisement could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The pkt-line framing is broken.
    #[error(transparent)]
    Framing(#[from] Error),
    /// An `object-format` this build does not know.
    #[error("unknown object format '{name}'")]
    UnknownObjectFormat {
        /// The name advertised.
        name: String,
    },
}

/// What an upstream's answer to `GET info/refs?service=git-upload-pack` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advertised {
    /// A protocol v2 capability advertisement, with its object format (SHA-1 when not named).
    V2(Kind),
    /// Anything else: a v0/v1 ref advertisement (the server does not speak v2).
    Other,
}

/// Read an advertisement: protocol v2 and the object format, or not v2 at all.
///
/// A v0 answer over HTTP starts with `# service=git-upload-pack`; a v2 one with `version 2`.
/// Some front ends put the v0 preamble (`# service=` and lines up to a flush) before a v2
/// answer too; git's client reads past it (`check_smart_http`), and so does this.
///
/// ```
/// use gitcache_protocol::advertise::{Advertised, Advertisement, read_advertised};
/// let mut body = Vec::new();
/// Advertisement::new("git/2.47", gix_hash::Kind::Sha256).write_to(&mut body)?;
/// assert_eq!(read_advertised(&body)?, Advertised::V2(gix_hash::Kind::Sha256));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_advertised(body: &[u8]) -> Result<Advertised, ReadError> {
    let mut lines = pktline::lines(body);
    let mut first = None;
    // As git's `check_smart_http`: only the answer's first line may open the preamble, and
    // only for upload-pack; its lines go up to a flush (or an empty line).
    let mut preamble = false;
    let mut opened = false;
    for line in lines.by_ref() {
        match line?.as_slice() {
            Some(data) if preamble && !data.is_empty() => {}
            Some(_) | None if preamble => preamble = false,
            Some(data) if !opened && pktline::chomp(data) == b"# service=git-upload-pack" => {
                preamble = true;
                opened = true;
            }
            Some(data) => {
                first = Some(data);
                break;
            }
            None => opened = true,
        }
    }
    let Some(first) = first else {
        return Ok(Advertised::Other);
    };
    if pktline::chomp(first) != b"version 2" {
        return Ok(Advertised::Other);
    }
    let mut format = Kind::Sha1;
    for line in lines {
        let Some(data) = line?.as_slice() else {
            break;
        };
        if let Some(name) = pktline::chomp(data).strip_prefix(b"object-format=") {
            format = std::str::from_utf8(name)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| ReadError::UnknownObjectFormat {
                    name: pktline::shown(name),
                })?;
        }
    }
    Ok(Advertised::V2(format))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a refusal quotes of the client's line is cut and escaped: it goes to the log and
    /// into an `ERR` line.
    #[test]
    fn refused_lines_are_shown_cut_and_escaped() {
        let ours = Advertisement::new("git/gitcache", Kind::Sha1);
        let fetch = crate::request::Fetch {
            want_refs: vec!["refs/heads/a\nforged log line".into()],
            ..crate::request::Fetch::default()
        };
        let message = ours.check_fetch(&fetch).unwrap_err().to_string();
        assert_eq!(
            message,
            "unexpected line: 'want-ref refs/heads/a\\nforged log line'"
        );
        let fetch = crate::request::Fetch {
            packfile_uris: vec!["a".into(); 100_000],
            ..crate::request::Fetch::default()
        };
        let message = ours.check_fetch(&fetch).unwrap_err().to_string();
        assert!(message.starts_with("unexpected line: 'packfile-uris a,a,"));
        assert!(message.len() < 2 * pktline::SHOWN_MOST, "{}", message.len());
    }
}
