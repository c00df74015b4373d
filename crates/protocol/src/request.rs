//! Parsing the body of a protocol v2 request, as `git` POSTs it to `git-upload-pack`.
//!
//! ```text
//! command=fetch          capability list: the command and client capabilities, any order
//! agent=git/2.47.3
//! object-format=sha1
//! 0001                   delimiter
//! want <oid>             command arguments
//! done
//! 0000                   flush: end of request
//! ```
//!
//! [`RequestParser`] takes the body in pieces as they arrive and consumes each complete
//! pkt-line at once, so time and memory are linear in the body however it is split.

use bstr::{BString, ByteSlice};
use gix_hash::{Kind, ObjectId};

use crate::filter::{self, Filter, parse_c_unsigned};
use crate::pktline::{self, Decoded, Line};

/// Bounds on what one request may hold. Each breach is its own [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes a request body may have (after any gzip decoding).
    pub max_body_bytes: usize,
    /// The most `want` and `want-ref` lines together.
    pub max_wants: usize,
    /// The most `have` lines.
    pub max_haves: usize,
    /// The most lines of any other repeated argument (`shallow`, `deepen-not`, `ref-prefix`,
    /// `oid`, `server-option`).
    pub max_other_lines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            max_wants: 200_000,
            max_haves: 200_000,
            max_other_lines: 100_000,
        }
    }
}

/// What the client says about itself in the capability list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `agent=<value>`.
    pub agent: Option<String>,
    /// `object-format=<name>`; `None` when absent, which means SHA-1.
    pub object_format: Option<Kind>,
    /// Every `server-option=<value>`, in order.
    pub server_options: Vec<String>,
    /// `session-id=<value>`.
    pub session_id: Option<String>,
}

impl Capabilities {
    /// The object format the request's object ids use.
    pub fn object_format(&self) -> Kind {
        self.object_format.unwrap_or(Kind::Sha1)
    }
}

/// Arguments of `ls-refs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LsRefs {
    /// `symrefs`: show the targets of symbolic refs.
    pub symrefs: bool,
    /// `peel`: show what annotated tags point to.
    pub peel: bool,
    /// `unborn`: show HEAD even when it points to a branch that does not exist yet.
    pub unborn: bool,
    /// `ref-prefix <prefix>`: only refs starting with one of these (all when empty).
    pub ref_prefixes: Vec<BString>,
}

/// Arguments of `fetch`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetch {
    /// `want <oid>`.
    pub wants: Vec<ObjectId>,
    /// `want-ref <ref>`.
    pub want_refs: Vec<BString>,
    /// `have <oid>`.
    pub haves: Vec<ObjectId>,
    /// `done`: no more negotiation, send the pack.
    pub done: bool,
    /// `thin-pack`.
    pub thin_pack: bool,
    /// `no-progress`.
    pub no_progress: bool,
    /// `include-tag`.
    pub include_tag: bool,
    /// `ofs-delta`.
    pub ofs_delta: bool,
    /// `shallow <oid>`: the client's current shallow boundary.
    pub shallows: Vec<ObjectId>,
    /// `deepen <depth>`.
    pub deepen: Option<u32>,
    /// `deepen-relative`: depth counts from the client's shallow boundary.
    pub deepen_relative: bool,
    /// `deepen-since <timestamp>`.
    pub deepen_since: Option<u64>,
    /// `deepen-not <ref>`.
    pub deepen_not: Vec<BString>,
    /// `filter <spec>`.
    pub filter: Option<Filter>,
    /// `sideband-all`.
    pub sideband_all: bool,
    /// `wait-for-done`.
    pub wait_for_done: bool,
    /// `packfile-uris <protocols>`, split at commas.
    pub packfile_uris: Vec<String>,
}

impl Fetch {
    /// Drop repeated `want`, `want-ref`, `shallow` and `deepen-not` lines, keeping each first
    /// one in its place: the answer is the same (git marks objects, so a repeat changes
    /// nothing), and later work no longer scales with what a client repeats. `have` lines
    /// stay: git acknowledges a repeated non-commit have each time.
    pub fn collapse_duplicates(&mut self) {
        fn first_of_each<T: Clone + Eq + std::hash::Hash>(items: &mut Vec<T>) {
            let mut seen = std::collections::HashSet::with_capacity(items.len());
            items.retain(|item| seen.insert(item.clone()));
        }
        first_of_each(&mut self.wants);
        first_of_each(&mut self.want_refs);
        first_of_each(&mut self.shallows);
        first_of_each(&mut self.deepen_not);
    }

    /// Whether the request asks for a shallow history (any `deepen` form).
    pub fn is_deepening(&self) -> bool {
        self.deepen.is_some() || self.deepen_since.is_some() || !self.deepen_not.is_empty()
    }
}

/// Arguments of `object-info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    /// `size`: report object sizes.
    pub size: bool,
    /// `oid <oid>`.
    pub oids: Vec<ObjectId>,
}

/// A command with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `command=ls-refs`.
    LsRefs(LsRefs),
    /// `command=fetch`.
    Fetch(Fetch),
    /// `command=object-info`.
    ObjectInfo(ObjectInfo),
    /// `command=bundle-uri`: the list of bundles to take before fetching (no arguments).
    BundleUri,
}

impl Command {
    /// The command's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Command::LsRefs(_) => "ls-refs",
            Command::Fetch(_) => "fetch",
            Command::ObjectInfo(_) => "object-info",
            Command::BundleUri => "bundle-uri",
        }
    }
}

/// One protocol v2 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The client's capabilities.
    pub capabilities: Capabilities,
    /// The command and its arguments.
    pub command: Command,
}

/// Why a request body was refused. The messages follow git's where git has one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The framing is broken.
    #[error(transparent)]
    PktLine(#[from] pktline::Error),
    /// The body is larger than [`Limits::max_body_bytes`].
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// Too many lines of one kind.
    #[error("too many '{what}' lines: more than {limit}")]
    TooManyLines {
        /// The argument, such as `have`.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The body ended before the request's final flush.
    #[error("request ended before its final flush")]
    Truncated,
    /// Bytes follow the request's final flush.
    #[error("unexpected data after the end of the request")]
    TrailingData,
    /// A line in the capability list that is neither a command nor a known capability.
    #[error("unknown capability '{line}'")]
    UnknownCapability {
        /// The line.
        line: String,
    },
    /// `command=` names a command nobody serves.
    #[error("invalid command '{name}'")]
    UnknownCommand {
        /// The command's name.
        name: String,
    },
    /// A second `command=`.
    #[error("command '{second}' requested after already requesting command '{first}'")]
    DuplicateCommand {
        /// The command already seen.
        first: String,
        /// The one that followed.
        second: String,
    },
    /// The capability list ended without a command.
    #[error("no command requested")]
    MissingCommand,
    /// A capability appears twice where only one is allowed.
    #[error("duplicate capability '{name}'")]
    DuplicateCapability {
        /// The capability.
        name: &'static str,
    },
    /// `object-format=` names no hash git knows.
    #[error("unknown object format '{name}'")]
    UnknownObjectFormat {
        /// The name given.
        name: String,
    },
    /// An argument line the command does not take.
    #[error("unexpected line: '{line}'")]
    UnknownArgument {
        /// The command.
        command: &'static str,
        /// The line.
        line: String,
    },
    /// An object id that is not hex of the request's object format.
    #[error("git upload-pack: protocol error, expected to get object ID, not '{line}'")]
    InvalidObjectId {
        /// The line.
        line: String,
    },
    /// A line whose value git refuses, such as `deepen 0`.
    #[error("Invalid {what}: {line}")]
    InvalidValue {
        /// The argument, such as `deepen`.
        what: &'static str,
        /// The line.
        line: String,
    },
    /// A `filter` line git refuses.
    #[error(transparent)]
    Filter(#[from] filter::Error),
    /// Arguments that cannot go together.
    #[error("{message}")]
    Conflict {
        /// What conflicts.
        message: &'static str,
    },
    /// A special packet where a line or a flush was expected.
    #[error("unexpected {what} packet in request")]
    UnexpectedPacket {
        /// `delim` or `response-end`.
        what: &'static str,
    },
    /// A line that is not UTF-8 where text is required.
    #[error("request line is not UTF-8")]
    NotUtf8,
}

/// What feeding more of the body achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// More bytes are needed.
    Incomplete,
    /// The request is complete.
    Complete(Box<Request>),
    /// The body held only a flush: the client has nothing more to ask.
    Empty,
}

#[derive(Debug)]
enum State {
    Capabilities,
    Arguments,
    Done,
}

/// An incremental parser for one request body; see the [module docs](self).
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    pending: Vec<u8>,
    total: usize,
    state: State,
    capabilities: Capabilities,
    command: Option<Command>,
    seen_capability_or_command: bool,
    other_lines: usize,
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestParser {
            limits,
            pending: Vec::new(),
            total: 0,
            state: State::Capabilities,
            capabilities: Capabilities::default(),
            command: None,
            seen_capability_or_command: false,
            other_lines: 0,
        }
    }

    /// Feed the next piece of the body.
    ///
    /// Returns [`Status::Complete`] once, when the final flush arrives; feeding more after that
    /// (other than nothing) is [`Error::TrailingData`].
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Status, Error> {
        self.total = self.total.saturating_add(chunk.len());
        if self.total > self.limits.max_body_bytes {
            return Err(Error::BodyTooLarge {
                limit: self.limits.max_body_bytes,
            });
        }
        if matches!(self.state, State::Done) {
            return if chunk.is_empty() {
                Ok(Status::Incomplete)
            } else {
                Err(Error::TrailingData)
            };
        }
        if self.pending.is_empty() {
            let (consumed, status) = self.consume(chunk)?;
            self.pending.extend_from_slice(&chunk[consumed..]);
            return self.settle(status);
        }
        self.pending.extend_from_slice(chunk);
        let pending = std::mem::take(&mut self.pending);
        let (consumed, status) = self.consume(&pending)?;
        self.pending = pending;
        self.pending.drain(..consumed);
        self.settle(status)
    }

    /// Say that the body has ended; an error unless a request was completed.
    pub fn finish(&self) -> Result<(), Error> {
        match self.state {
            State::Done => Ok(()),
            _ if !self.pending.is_empty() => Err(pktline::Error::Truncated {
                needed: match pktline::decode(&self.pending)? {
                    Decoded::Incomplete { needed } => needed,
                    Decoded::Complete { .. } => 0,
                },
            }
            .into()),
            _ => Err(Error::Truncated),
        }
    }

    fn settle(&mut self, status: Status) -> Result<Status, Error> {
        if !matches!(status, Status::Incomplete) && !self.pending.is_empty() {
            return Err(Error::TrailingData);
        }
        Ok(status)
    }

    /// Consume every complete line of `buf`, returning how many bytes were used.
    fn consume(&mut self, buf: &[u8]) -> Result<(usize, Status), Error> {
        let mut pos = 0;
        loop {
            let (line, used) = match pktline::decode(&buf[pos..])? {
                Decoded::Complete { line, consumed } => (line, consumed),
                Decoded::Incomplete { .. } => return Ok((pos, Status::Incomplete)),
            };
            pos += used;
            if let Some(status) = self.line(line)? {
                self.state = State::Done;
                return Ok((pos, status));
            }
        }
    }

    fn line(&mut self, line: Line<'_>) -> Result<Option<Status>, Error> {
        match self.state {
            State::Capabilities => match line {
                Line::Data(data) => {
                    self.seen_capability_or_command = true;
                    self.capability(pktline::chomp(data))?;
                    Ok(None)
                }
                Line::Delimiter => {
                    self.require_command()?;
                    self.state = State::Arguments;
                    Ok(None)
                }
                Line::Flush if !self.seen_capability_or_command => Ok(Some(Status::Empty)),
                Line::Flush => {
                    self.require_command()?;
                    self.complete().map(Some)
                }
                Line::ResponseEnd => Err(Error::UnexpectedPacket {
                    what: "response-end",
                }),
            },
            State::Arguments => match line {
                Line::Data(data) => {
                    self.argument(pktline::chomp(data))?;
                    Ok(None)
                }
                Line::Flush => self.complete().map(Some),
                Line::Delimiter => Err(Error::UnexpectedPacket { what: "delim" }),
                Line::ResponseEnd => Err(Error::UnexpectedPacket {
                    what: "response-end",
                }),
            },
            State::Done => Err(Error::TrailingData),
        }
    }

    fn require_command(&self) -> Result<(), Error> {
        match self.command {
            Some(_) => Ok(()),
            None => Err(Error::MissingCommand),
        }
    }

    fn complete(&mut self) -> Result<Status, Error> {
        let command = self.command.take().ok_or(Error::MissingCommand)?;
        if let Command::Fetch(fetch) = &command
            && fetch.deepen.is_some()
            && (fetch.deepen_since.is_some() || !fetch.deepen_not.is_empty())
        {
            return Err(Error::Conflict {
                message: "deepen and deepen-since (or deepen-not) cannot be used together",
            });
        }
        Ok(Status::Complete(Box::new(Request {
            capabilities: std::mem::take(&mut self.capabilities),
            command,
        })))
    }

    fn capability(&mut self, line: &[u8]) -> Result<(), Error> {
        let text = std::str::from_utf8(line).map_err(|_| Error::NotUtf8)?;
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (text, None),
        };
        let caps = &mut self.capabilities;
        match (key, value) {
            ("command", Some(name)) => {
                let command = match name {
                    "ls-refs" => Command::LsRefs(LsRefs::default()),
                    "fetch" => Command::Fetch(Fetch::default()),
                    "object-info" => Command::ObjectInfo(ObjectInfo::default()),
                    "bundle-uri" => Command::BundleUri,
                    _ => {
                        return Err(Error::UnknownCommand {
                            name: pktline::shown(name.as_bytes()),
                        });
                    }
                };
                if let Some(first) = &self.command {
                    return Err(Error::DuplicateCommand {
                        first: first.name().into(),
                        second: name.into(),
                    });
                }
                self.command = Some(command);
            }
            ("agent", Some(v)) => set_once(&mut caps.agent, v, "agent")?,
            ("session-id", Some(v)) => set_once(&mut caps.session_id, v, "session-id")?,
            ("object-format", Some(v)) => {
                let kind = match v {
                    "sha1" | "sha256" => {
                        v.parse::<Kind>().expect("both hash kinds are compiled in")
                    }
                    _ => {
                        return Err(Error::UnknownObjectFormat {
                            name: pktline::shown(v.as_bytes()),
                        });
                    }
                };
                if caps.object_format.replace(kind).is_some() {
                    return Err(Error::DuplicateCapability {
                        name: "object-format",
                    });
                }
            }
            ("server-option", Some(v)) => {
                self.other_lines += 1;
                check_limit(
                    self.other_lines,
                    self.limits.max_other_lines,
                    "server-option",
                )?;
                caps.server_options.push(v.into());
            }
            _ => {
                return Err(Error::UnknownCapability {
                    line: pktline::shown(text.as_bytes()),
                });
            }
        }
        Ok(())
    }

    fn argument(&mut self, line: &[u8]) -> Result<(), Error> {
        let kind = self.capabilities.object_format();
        let limits = self.limits;
        let (word, value) = match line.find_byte(b' ') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        let unknown = |command: &'static str| Error::UnknownArgument {
            command,
            line: pktline::shown(line),
        };
        match self.command.as_mut().expect("checked at the delimiter") {
            Command::LsRefs(args) => match (word, value) {
                (b"symrefs", None) => args.symrefs = true,
                (b"peel", None) => args.peel = true,
                (b"unborn", None) => args.unborn = true,
                (b"ref-prefix", Some(prefix)) => {
                    self.other_lines += 1;
                    check_limit(self.other_lines, limits.max_other_lines, "ref-prefix")?;
                    args.ref_prefixes.push(prefix.into());
                }
                _ => return Err(unknown("ls-refs")),
            },
            Command::ObjectInfo(args) => match (word, value) {
                (b"size", None) => args.size = true,
                (b"oid", Some(hex)) => {
                    self.other_lines += 1;
                    check_limit(self.other_lines, limits.max_other_lines, "oid")?;
                    args.oids.push(parse_oid(hex, kind, line)?);
                }
                _ => return Err(unknown("object-info")),
            },
            Command::BundleUri => return Err(unknown("bundle-uri")),
            Command::Fetch(args) => match (word, value) {
                (b"want", Some(hex)) => {
                    check_limit(
                        args.wants.len() + args.want_refs.len() + 1,
                        limits.max_wants,
                        "want",
                    )?;
                    args.wants.push(parse_oid(hex, kind, line)?);
                }
                (b"want-ref", Some(name)) => {
                    check_limit(
                        args.wants.len() + args.want_refs.len() + 1,
                        limits.max_wants,
                        "want-ref",
                    )?;
                    args.want_refs.push(name.into());
                }
                (b"have", Some(hex)) => {
                    check_limit(args.haves.len() + 1, limits.max_haves, "have")?;
                    args.haves.push(parse_oid(hex, kind, line)?);
                }
                (b"shallow", Some(hex)) => {
                    self.other_lines += 1;
                    check_limit(self.other_lines, limits.max_other_lines, "shallow")?;
                    args.shallows.push(parse_oid(hex, kind, line)?);
                }
                (b"deepen-not", Some(name)) => {
                    self.other_lines += 1;
                    check_limit(self.other_lines, limits.max_other_lines, "deepen-not")?;
                    args.deepen_not.push(name.into());
                }
                (b"deepen", Some(v)) => {
                    let depth = std::str::from_utf8(v)
                        .ok()
                        .and_then(parse_c_unsigned)
                        .and_then(|d| {
                            u32::try_from(d)
                                .ok()
                                .filter(|&d| d > 0 && d <= i32::MAX as u32)
                        })
                        .ok_or_else(|| invalid("deepen", line))?;
                    args.deepen = Some(depth);
                }
                (b"deepen-since", Some(v)) => {
                    let since = std::str::from_utf8(v)
                        .ok()
                        .and_then(parse_c_unsigned)
                        // As git: any time but the one its walk reads as none (`-1`); 0
                        // is every commit.
                        .filter(|&t| t != u64::MAX)
                        .ok_or_else(|| invalid("deepen-since", line))?;
                    args.deepen_since = Some(since);
                }
                (b"filter", Some(spec)) => {
                    if args.filter.is_some() {
                        return Err(Error::Conflict {
                            message: "multiple filter-specs cannot be combined",
                        });
                    }
                    let spec = std::str::from_utf8(spec).map_err(|_| Error::NotUtf8)?;
                    args.filter = Some(spec.parse()?);
                }
                (b"packfile-uris", Some(v)) => {
                    let v = std::str::from_utf8(v).map_err(|_| Error::NotUtf8)?;
                    // Each protocol named counts as a line: a line of commas names tens of
                    // thousands.
                    for protocol in v.split(',').filter(|p| !p.is_empty()) {
                        self.other_lines += 1;
                        check_limit(self.other_lines, limits.max_other_lines, "packfile-uris")?;
                        args.packfile_uris.push(protocol.into());
                    }
                }
                (b"done", None) => args.done = true,
                (b"thin-pack", None) => args.thin_pack = true,
                (b"no-progress", None) => args.no_progress = true,
                (b"include-tag", None) => args.include_tag = true,
                (b"ofs-delta", None) => args.ofs_delta = true,
                (b"deepen-relative", None) => args.deepen_relative = true,
                (b"sideband-all", None) => args.sideband_all = true,
                (b"wait-for-done", None) => args.wait_for_done = true,
                _ => return Err(unknown("fetch")),
            },
        }
        Ok(())
    }
}

fn set_once(slot: &mut Option<String>, value: &str, name: &'static str) -> Result<(), Error> {
    if slot.replace(value.into()).is_some() {
        return Err(Error::DuplicateCapability { name });
    }
    Ok(())
}

fn check_limit(count: usize, limit: usize, what: &'static str) -> Result<(), Error> {
    if count > limit {
        return Err(Error::TooManyLines { what, limit });
    }
    Ok(())
}

fn invalid(what: &'static str, line: &[u8]) -> Error {
    Error::InvalidValue {
        what,
        line: pktline::shown(line),
    }
}

/// Parse a hex object id of exactly `kind`'s length.
pub fn parse_oid(hex: &[u8], kind: Kind, line: &[u8]) -> Result<ObjectId, Error> {
    if hex.len() != kind.len_in_hex() {
        return Err(Error::InvalidObjectId {
            line: pktline::shown(line),
        });
    }
    ObjectId::from_hex(hex).map_err(|_| Error::InvalidObjectId {
        line: pktline::shown(line),
    })
}

/// Parse a whole request body at once.
///
/// Returns `None` for an empty request (a lone flush).
pub fn parse_request(body: &[u8], limits: Limits) -> Result<Option<Request>, Error> {
    let mut parser = RequestParser::new(limits);
    match parser.feed(body)? {
        Status::Complete(request) => Ok(Some(*request)),
        Status::Empty => Ok(None),
        Status::Incomplete => parser.finish().map(|()| None),
    }
}

impl Request {
    /// Encode the request as a client sends it: `command=`, capabilities, delimiter, arguments,
    /// flush.
    pub fn write_to(&self, out: &mut impl std::io::Write) -> Result<(), pktline::Error> {
        let caps = &self.capabilities;
        pktline::write_text(out, format!("command={}", self.command.name()).as_bytes())?;
        if let Some(agent) = &caps.agent {
            pktline::write_text(out, format!("agent={agent}").as_bytes())?;
        }
        if let Some(kind) = caps.object_format {
            pktline::write_text(out, format!("object-format={kind}").as_bytes())?;
        }
        if let Some(id) = &caps.session_id {
            pktline::write_text(out, format!("session-id={id}").as_bytes())?;
        }
        for option in &caps.server_options {
            pktline::write_text(out, format!("server-option={option}").as_bytes())?;
        }
        pktline::write_delim(out)?;
        let mut line = |word: &str, value: Option<&[u8]>| -> Result<(), pktline::Error> {
            let mut text = word.as_bytes().to_vec();
            if let Some(value) = value {
                text.push(b' ');
                text.extend_from_slice(value);
            }
            pktline::write_text(out, &text).map(drop)
        };
        match &self.command {
            Command::LsRefs(args) => {
                for (on, word) in [
                    (args.symrefs, "symrefs"),
                    (args.peel, "peel"),
                    (args.unborn, "unborn"),
                ] {
                    if on {
                        line(word, None)?;
                    }
                }
                for prefix in &args.ref_prefixes {
                    line("ref-prefix", Some(prefix))?;
                }
            }
            Command::BundleUri => {}
            Command::ObjectInfo(args) => {
                if args.size {
                    line("size", None)?;
                }
                for oid in &args.oids {
                    line("oid", Some(oid.to_string().as_bytes()))?;
                }
            }
            Command::Fetch(args) => {
                for (on, word) in [
                    (args.thin_pack, "thin-pack"),
                    (args.no_progress, "no-progress"),
                    (args.include_tag, "include-tag"),
                    (args.ofs_delta, "ofs-delta"),
                    (args.sideband_all, "sideband-all"),
                    (args.wait_for_done, "wait-for-done"),
                    (args.deepen_relative, "deepen-relative"),
                ] {
                    if on {
                        line(word, None)?;
                    }
                }
                if let Some(depth) = args.deepen {
                    line("deepen", Some(depth.to_string().as_bytes()))?;
                }
                if let Some(since) = args.deepen_since {
                    line("deepen-since", Some(since.to_string().as_bytes()))?;
                }
                for name in &args.deepen_not {
                    line("deepen-not", Some(name))?;
                }
                for oid in &args.shallows {
                    line("shallow", Some(oid.to_string().as_bytes()))?;
                }
                if let Some(filter) = &args.filter {
                    line("filter", Some(filter.to_string().as_bytes()))?;
                }
                if !args.packfile_uris.is_empty() {
                    line(
                        "packfile-uris",
                        Some(args.packfile_uris.join(",").as_bytes()),
                    )?;
                }
                for oid in &args.wants {
                    line("want", Some(oid.to_string().as_bytes()))?;
                }
                for name in &args.want_refs {
                    line("want-ref", Some(name))?;
                }
                for oid in &args.haves {
                    line("have", Some(oid.to_string().as_bytes()))?;
                }
                if args.done {
                    line("done", None)?;
                }
            }
        }
        pktline::write_flush(out)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(lines: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            match *l {
                "0000" => pktline::write_flush(&mut out).unwrap(),
                "0001" => pktline::write_delim(&mut out).unwrap(),
                "0002" => pktline::write_response_end(&mut out).unwrap(),
                text => pktline::write_text(&mut out, text.as_bytes()).unwrap(),
            };
        }
        out
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn parse(lines: &[&str]) -> Result<Option<Request>, Error> {
        parse_request(&body(lines), Limits::default())
    }

    fn fetch(lines: &[&str]) -> Result<Fetch, Error> {
        match parse(lines)?.expect("a request").command {
            Command::Fetch(f) => Ok(f),
            other => panic!("not a fetch: {other:?}"),
        }
    }

    #[test]
    fn bundle_uri_takes_no_arguments() {
        let request = parse(&["command=bundle-uri", "agent=git/2.47.3", "0001", "0000"])
            .unwrap()
            .unwrap();
        assert_eq!(request.command, Command::BundleUri);
        let mut again = Vec::new();
        request.write_to(&mut again).unwrap();
        assert_eq!(
            parse_request(&again, Limits::default()).unwrap(),
            Some(request)
        );
        assert!(matches!(
            parse(&["command=bundle-uri", "0001", "want-ref x", "0000"]),
            Err(Error::UnknownArgument {
                command: "bundle-uri",
                ..
            })
        ));
    }

    #[test]
    fn fetch_with_every_argument() {
        let want = format!("want {A}");
        let have = format!("have {B}");
        let shallow = format!("shallow {B}");
        let f = fetch(&[
            "command=fetch",
            "agent=git/2.47.3",
            "object-format=sha1",
            "server-option=x",
            "0001",
            "thin-pack",
            "no-progress",
            "include-tag",
            "ofs-delta",
            "sideband-all",
            "wait-for-done",
            "deepen-relative",
            "deepen 3",
            &shallow,
            "filter blob:limit=1k",
            "packfile-uris https,ssh",
            &want,
            "want-ref refs/heads/main",
            &have,
            "done",
            "0000",
        ])
        .unwrap();
        assert_eq!(f.wants, vec![ObjectId::from_hex(A.as_bytes()).unwrap()]);
        assert_eq!(f.haves, vec![ObjectId::from_hex(B.as_bytes()).unwrap()]);
        assert_eq!(f.shallows, f.haves);
        assert_eq!(f.want_refs, vec![BString::from("refs/heads/main")]);
        assert_eq!(f.deepen, Some(3));
        assert_eq!(f.filter, Some(Filter::BlobLimit(1024)));
        assert_eq!(
            f.packfile_uris,
            vec!["https".to_string(), "ssh".to_string()]
        );
        assert!(f.done && f.thin_pack && f.no_progress && f.include_tag && f.ofs_delta);
        assert!(f.sideband_all && f.wait_for_done && f.deepen_relative);
    }

    #[test]
    fn capabilities_are_kept() {
        let r = parse(&[
            "agent=git/2.47.3",
            "command=ls-refs",
            "server-option=a",
            "server-option=b",
            "session-id=s1",
            "0000",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(r.capabilities.agent.as_deref(), Some("git/2.47.3"));
        assert_eq!(r.capabilities.server_options, vec!["a", "b"]);
        assert_eq!(r.capabilities.session_id.as_deref(), Some("s1"));
        assert_eq!(r.command, Command::LsRefs(LsRefs::default()));
    }

    #[test]
    fn empty_request_is_a_lone_flush() {
        assert_eq!(parse(&["0000"]).unwrap(), None);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let err = |lines: &[&str]| parse(lines).unwrap_err().to_string();
        assert_eq!(err(&["command=push", "0000"]), "invalid command 'push'");
        assert_eq!(
            err(&["command=fetch", "color=blue", "0000"]),
            "unknown capability 'color=blue'"
        );
        assert_eq!(err(&["agent=x", "0001", "0000"]), "no command requested");
        assert_eq!(
            err(&["command=fetch", "command=ls-refs", "0000"]),
            "command 'ls-refs' requested after already requesting command 'fetch'"
        );
        assert_eq!(
            err(&["command=fetch", "0001", "bogus", "0000"]),
            "unexpected line: 'bogus'"
        );
        assert_eq!(
            err(&["command=ls-refs", "0001", "done", "0000"]),
            "unexpected line: 'done'"
        );
        assert_eq!(
            err(&["command=fetch", "0001", "deepen 0", "0000"]),
            "Invalid deepen: deepen 0"
        );
        assert_eq!(
            err(&[
                "command=fetch",
                "0001",
                "deepen-since 18446744073709551615",
                "0000"
            ]),
            "Invalid deepen-since: deepen-since 18446744073709551615"
        );
        assert_eq!(
            err(&["command=fetch", "0001", "deepen-since x", "0000"]),
            "Invalid deepen-since: deepen-since x"
        );
        // 0 is every commit to git, not an error.
        let Some(Request {
            command: Command::Fetch(since),
            ..
        }) = parse(&["command=fetch", "0001", "deepen-since 0", "0000"]).unwrap()
        else {
            panic!("a fetch");
        };
        assert_eq!(since.deepen_since, Some(0));
        assert_eq!(
            err(&["command=fetch", "0001", "filter bogus", "0000"]),
            "invalid filter-spec 'bogus'"
        );
        assert_eq!(
            err(&["command=fetch", "object-format=md5", "0000"]),
            "unknown object format 'md5'"
        );
        assert_eq!(
            err(&[
                "command=fetch",
                "0001",
                "deepen 1",
                "deepen-not refs/heads/x",
                "0000"
            ]),
            "deepen and deepen-since (or deepen-not) cannot be used together"
        );
        assert_eq!(
            err(&[
                "command=fetch",
                "0001",
                "filter blob:none",
                "filter tree:0",
                "0000"
            ]),
            "multiple filter-specs cannot be combined"
        );
        assert!(matches!(
            parse(&["command=fetch", "0001", "0001", "0000"]),
            Err(Error::UnexpectedPacket { what: "delim" })
        ));
        assert!(matches!(
            parse(&["command=fetch", "0001", "done"]),
            Err(Error::Truncated)
        ));
        assert!(matches!(
            parse(&["command=fetch", "0001", "0000", "0000"]),
            Err(Error::TrailingData)
        ));
    }

    #[test]
    fn object_ids_must_match_the_object_format() {
        let sha256 = "3".repeat(64);
        let want256 = format!("want {sha256}");
        let want1 = format!("want {A}");
        assert!(matches!(
            parse(&["command=fetch", "0001", &want256, "0000"]),
            Err(Error::InvalidObjectId { .. })
        ));
        assert!(matches!(
            parse(&[
                "command=fetch",
                "object-format=sha256",
                "0001",
                &want1,
                "0000"
            ]),
            Err(Error::InvalidObjectId { .. })
        ));
        let f = fetch(&[
            "command=fetch",
            "object-format=sha256",
            "0001",
            &want256,
            "0000",
        ])
        .unwrap();
        assert_eq!(f.wants[0].kind(), Kind::Sha256);
        assert!(matches!(
            parse(&[
                "command=fetch",
                "0001",
                "want 11111111111111111111111111111111111111zz",
                "0000"
            ]),
            Err(Error::InvalidObjectId { .. })
        ));
    }

    /// What an error quotes of the client's line is escaped and cut (it goes to the log).
    #[test]
    fn refused_names_are_quoted_escaped_and_cut() {
        for lines in [
            &["object-format=x\nINFO forged", "0000"][..],
            &["command=x\nINFO forged", "0000"],
            &["frobnicate\nINFO forged", "0000"],
        ] {
            let err = parse(lines).unwrap_err().to_string();
            assert!(!err.contains('\n') && err.contains("\\n"), "{err}");
        }
        let long = format!("command={}", "x".repeat(60_000));
        let err = parse(&[&long, "0000"]).unwrap_err().to_string();
        assert!(err.len() < 600, "{}", err.len());
    }

    #[test]
    fn limits_are_enforced_each_on_its_own() {
        let limits = Limits {
            max_body_bytes: 1 << 20,
            max_wants: 2,
            max_haves: 1,
            max_other_lines: 1,
        };
        let p = |lines: &[&str]| parse_request(&body(lines), limits);
        let (want, have) = (format!("want {A}"), format!("have {A}"));
        assert!(p(&["command=fetch", "0001", &want, &want, &have, "0000"]).is_ok());
        assert!(matches!(
            p(&[
                "command=fetch",
                "0001",
                &want,
                &want,
                "want-ref refs/x",
                "0000"
            ]),
            Err(Error::TooManyLines {
                what: "want-ref",
                limit: 2
            })
        ));
        assert!(matches!(
            p(&["command=fetch", "0001", &have, &have, "0000"]),
            Err(Error::TooManyLines {
                what: "have",
                limit: 1
            })
        ));
        assert!(matches!(
            p(&[
                "command=ls-refs",
                "0001",
                "ref-prefix a",
                "ref-prefix b",
                "0000"
            ]),
            Err(Error::TooManyLines {
                what: "ref-prefix",
                ..
            })
        ));
        // Each protocol a `packfile-uris` line names counts as a line.
        assert!(p(&["command=fetch", "0001", "packfile-uris https", "0000"]).is_ok());
        assert!(matches!(
            p(&["command=fetch", "0001", "packfile-uris https,,ftp", "0000"]),
            Err(Error::TooManyLines {
                what: "packfile-uris",
                limit: 1
            })
        ));
        let small = Limits {
            max_body_bytes: 20,
            ..limits
        };
        assert!(matches!(
            parse_request(&body(&["command=fetch", "0001", &want, "0000"]), small),
            Err(Error::BodyTooLarge { limit: 20 })
        ));
    }

    #[test]
    fn any_split_of_the_body_parses_the_same() {
        let (want, have) = (format!("want {A}"), format!("have {B}"));
        let bytes = body(&[
            "command=fetch",
            "agent=x",
            "0001",
            &want,
            &have,
            "deepen 1",
            "done",
            "0000",
        ]);
        let whole = parse_request(&bytes, Limits::default()).unwrap().unwrap();
        for step in [1, 2, 3, 7, 50] {
            let mut parser = RequestParser::new(Limits::default());
            let mut got = None;
            for chunk in bytes.chunks(step) {
                if let Status::Complete(r) = parser.feed(chunk).unwrap() {
                    got = Some(*r);
                }
            }
            parser.finish().unwrap();
            assert_eq!(got.as_ref(), Some(&whole), "chunks of {step}");
        }
    }

    #[test]
    fn encoder_output_parses_back() {
        let (want, have) = (format!("want {A}"), format!("have {B}"));
        let bytes = body(&[
            "command=fetch",
            "agent=x",
            "0001",
            "ofs-delta",
            "deepen 2",
            "filter combine:blob:none+tree:1",
            &want,
            &have,
            "done",
            "0000",
        ]);
        let request = parse_request(&bytes, Limits::default()).unwrap().unwrap();
        let mut again = Vec::new();
        request.write_to(&mut again).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn repeated_lines_collapse_to_their_first() {
        let (want_a, want_b, have) = (
            format!("want {A}"),
            format!("want {B}"),
            format!("have {B}"),
        );
        let mut lines = vec!["command=fetch", "0001"];
        for _ in 0..1000 {
            lines.extend([want_a.as_str(), "want-ref refs/heads/main", have.as_str()]);
        }
        lines.extend([want_b.as_str(), want_a.as_str(), "done", "0000"]);
        let Command::Fetch(mut fetch) = parse_request(&body(&lines), Limits::default())
            .unwrap()
            .unwrap()
            .command
        else {
            panic!("a fetch");
        };
        assert_eq!(fetch.wants.len(), 1002);
        fetch.collapse_duplicates();
        assert_eq!(fetch.wants.len(), 2);
        assert_eq!(fetch.wants[0].to_string(), A);
        assert_eq!(fetch.wants[1].to_string(), B);
        assert_eq!(fetch.want_refs, vec![BString::from("refs/heads/main")]);
        assert_eq!(fetch.haves.len(), 1000, "haves are git's to acknowledge");
        assert!(fetch.done);
    }
}
