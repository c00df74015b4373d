//! The `fetch` response: writing its sections in git's order and delimiter rules, and reading a
//! complete one back.
//!
//! Git sends, each section ended by a delimiter except the last, which ends with a flush:
//! `acknowledgments` (only while negotiating), `wanted-refs`, `shallow-info`, `packfile-uris`,
//! `packfile`. A negotiation round that is not yet `ready` ends after `acknowledgments` with a
//! flush. (gitprotocol-v2 lists `shallow-info` before `wanted-refs`; `git upload-pack` writes
//! them the other way round, and we follow the wire.)
//!
//! ```
//! use gitcache_protocol::response::{ResponseWriter, parse_fetch_response};
//! use std::io::Write;
//! let mut w = ResponseWriter::new(Vec::new(), false);
//! let mut pack = w.packfile().unwrap();
//! pack.write_all(b"PACK...").unwrap();
//! let body = pack.finish().unwrap();
//! let parsed = parse_fetch_response(&body, gix_hash::Kind::Sha1).unwrap();
//! assert_eq!(parsed.pack.as_deref(), Some(&b"PACK..."[..]));
//! ```

use std::io::Write;

use bstr::{BString, ByteSlice};
use gix_hash::{Kind, ObjectId};

use crate::pktline::{self, Channel, Line};
use crate::sideband::{self, SidebandWriter};

/// The sections of a fetch response, in the order git writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    /// `acknowledgments`
    Acknowledgments,
    /// `wanted-refs`
    WantedRefs,
    /// `shallow-info`
    ShallowInfo,
    /// `packfile-uris`
    PackfileUris,
    /// `packfile`
    Packfile,
}

impl Section {
    /// The section's header line.
    pub fn name(self) -> &'static str {
        match self {
            Section::Acknowledgments => "acknowledgments",
            Section::WantedRefs => "wanted-refs",
            Section::ShallowInfo => "shallow-info",
            Section::PackfileUris => "packfile-uris",
            Section::Packfile => "packfile",
        }
    }
}

/// Errors of writing or reading a fetch response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Framing or I/O.
    #[error(transparent)]
    PktLine(#[from] pktline::Error),
    /// A section was written after one that must follow it, or twice.
    #[error("section '{section}' cannot follow '{after}'")]
    SectionOrder {
        /// The section being written.
        section: &'static str,
        /// The one already written.
        after: &'static str,
    },
    /// The response was already ended.
    #[error("the response is already complete")]
    Finished,
    /// The server answered with `ERR`.
    #[error("remote error: {message}")]
    Remote {
        /// The message.
        message: String,
    },
    /// A side-band error (band 3).
    #[error("remote error on side-band: {message}")]
    SidebandError {
        /// The message.
        message: String,
    },
    /// A line out of place.
    #[error("unexpected line in fetch response: '{line}'")]
    Unexpected {
        /// The line.
        line: String,
    },
    /// The response ended early.
    #[error("fetch response ended before its flush")]
    Truncated,
    /// The sections before the pack (acknowledgments, shallow info, wanted refs, packfile
    /// URIs) hold more than is read of them.
    #[error("fetch response's sections before the pack exceed {limit} bytes")]
    SectionsTooLarge {
        /// The bound.
        limit: usize,
    },
}

/// What the sections before the pack may hold, counted as their lines' bytes plus
/// `LINE_COST` for each line kept (its allocations): a server that sends endless `ACK`s or
/// `shallow` lines is cut off, not kept.
pub const MAX_SECTION_BYTES: usize = 16 << 20;
/// What one kept line of a section is counted for beyond its bytes.
const LINE_COST: usize = 64;

/// Writes a fetch response section by section into `out`.
#[derive(Debug)]
pub struct ResponseWriter<W: Write> {
    out: W,
    sideband_all: bool,
    last: Option<Section>,
    finished: bool,
}

impl<W: Write> ResponseWriter<W> {
    /// Write into `out`; with `sideband_all`, every line goes out on band 1 as the client asked.
    pub fn new(out: W, sideband_all: bool) -> Self {
        ResponseWriter {
            out,
            sideband_all,
            last: None,
            finished: false,
        }
    }

    fn begin(&mut self, section: Section) -> Result<(), Error> {
        if self.finished {
            return Err(Error::Finished);
        }
        if let Some(last) = self.last {
            if last >= section {
                return Err(Error::SectionOrder {
                    section: section.name(),
                    after: last.name(),
                });
            }
            pktline::write_delim(&mut self.out)?;
        }
        self.last = Some(section);
        self.text(section.name().as_bytes())
    }

    fn text(&mut self, text: &[u8]) -> Result<(), Error> {
        if self.sideband_all {
            let mut line = Vec::with_capacity(text.len() + 2);
            line.push(Channel::Data as u8);
            line.extend_from_slice(text);
            line.push(b'\n');
            pktline::write_data(&mut self.out, &line)?;
        } else {
            pktline::write_text(&mut self.out, text)?;
        }
        Ok(())
    }

    /// The `acknowledgments` section: `NAK` when `common` is empty, else an `ACK` per common
    /// object, then `ready` if set. Without `ready` the response ends here (flush) and the
    /// writer is finished; with it, the pack sections must follow.
    pub fn acknowledgments(&mut self, common: &[ObjectId], ready: bool) -> Result<(), Error> {
        self.begin(Section::Acknowledgments)?;
        if common.is_empty() {
            self.text(b"NAK")?;
        }
        for oid in common {
            self.text(format!("ACK {oid}").as_bytes())?;
        }
        if ready {
            self.text(b"ready")?;
        } else {
            pktline::write_flush(&mut self.out)?;
            self.finished = true;
        }
        Ok(())
    }

    /// The `wanted-refs` section: `<oid> <refname>` for each `want-ref`.
    pub fn wanted_refs(&mut self, refs: &[(ObjectId, BString)]) -> Result<(), Error> {
        self.begin(Section::WantedRefs)?;
        for (oid, name) in refs {
            let mut line = format!("{oid} ").into_bytes();
            line.extend_from_slice(name);
            self.text(&line)?;
        }
        Ok(())
    }

    /// The `shallow-info` section: `shallow <oid>` lines, then `unshallow <oid>` lines.
    pub fn shallow_info(
        &mut self,
        shallow: &[ObjectId],
        unshallow: &[ObjectId],
    ) -> Result<(), Error> {
        self.begin(Section::ShallowInfo)?;
        for oid in shallow {
            self.text(format!("shallow {oid}").as_bytes())?;
        }
        for oid in unshallow {
            self.text(format!("unshallow {oid}").as_bytes())?;
        }
        Ok(())
    }

    /// The `packfile-uris` section: `<pack-hash> <uri>` lines.
    pub fn packfile_uris(&mut self, uris: &[(String, String)]) -> Result<(), Error> {
        self.begin(Section::PackfileUris)?;
        for (hash, uri) in uris {
            self.text(format!("{hash} {uri}").as_bytes())?;
        }
        Ok(())
    }

    /// Start the `packfile` section; write the pack into the returned side-band writer and
    /// [`finish`](SidebandWriter::finish) it to end the response.
    pub fn packfile(mut self) -> Result<SidebandWriter<W>, Error> {
        self.begin(Section::Packfile)?;
        Ok(SidebandWriter::new(self.out))
    }

    /// Hand back the writer after a response that ended with a not-ready `acknowledgments`.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Whether the response has ended.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// A fetch response, read back whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchResponse {
    /// Whether an `acknowledgments` section was present.
    pub has_acknowledgments: bool,
    /// `ACK` lines.
    pub acks: Vec<ObjectId>,
    /// Whether `NAK` was sent.
    pub nak: bool,
    /// Whether `ready` was sent.
    pub ready: bool,
    /// `wanted-refs` lines.
    pub wanted_refs: Vec<(ObjectId, BString)>,
    /// `shallow` lines of `shallow-info`.
    pub shallow: Vec<ObjectId>,
    /// `unshallow` lines of `shallow-info`.
    pub unshallow: Vec<ObjectId>,
    /// `packfile-uris` lines.
    pub packfile_uris: Vec<(String, String)>,
    /// Band-1 bytes of the `packfile` section, if there was one.
    pub pack: Option<Vec<u8>>,
    /// Band-2 bytes.
    pub progress: Vec<u8>,
}

/// Read a complete fetch response whose object ids are of `kind`, sideband-all or not.
///
/// The same reader as [`PackStream`], collecting the pack in memory.
pub fn parse_fetch_response(body: &[u8], kind: Kind) -> Result<FetchResponse, Error> {
    let mut stream = PackStream::new(body, kind);
    stream.max_progress = usize::MAX;
    stream.read_sections()?;
    let mut pack = None;
    if stream.has_pack() {
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            match stream.read_pack(&mut chunk)? {
                0 => break,
                n => bytes.extend_from_slice(&chunk[..n]),
            }
        }
        pack = Some(bytes);
    }
    Ok(FetchResponse {
        pack,
        ..stream.head
    })
}

fn oid(hex: &[u8], kind: Kind, line: &[u8]) -> Result<ObjectId, Error> {
    if hex.len() != kind.len_in_hex() {
        return Err(unexpected(line));
    }
    ObjectId::from_hex(hex).map_err(|_| unexpected(line))
}

fn unexpected(line: &[u8]) -> Error {
    Error::Unexpected {
        line: pktline::shown(line),
    }
}

/// Streams the pack out of a fetch response as it arrives: the sections before `packfile` are
/// read and kept (`wanted-refs`, `shallow-info`, acknowledgments), then band-1 bytes are
/// returned through [`std::io::Read`], band-2 progress is collected, and a band-3 message or an
/// `ERR` line becomes an error. Reading ends at the response's flush.
///
/// ```
/// use std::io::Read;
/// use gitcache_protocol::response::{PackStream, ResponseWriter};
/// use std::io::Write;
/// let mut w = ResponseWriter::new(Vec::new(), false);
/// let mut band = w.packfile().unwrap();
/// band.write_all(b"PACK....").unwrap();
/// let body = band.finish().unwrap();
/// let mut stream = PackStream::new(&body[..], gix_hash::Kind::Sha1);
/// let mut pack = Vec::new();
/// stream.read_to_end(&mut pack).unwrap();
/// assert_eq!(pack, b"PACK....");
/// ```
#[derive(Debug)]
pub struct PackStream<R> {
    inner: R,
    kind: Kind,
    head: FetchResponse,
    state: StreamState,
    /// Band-1 bytes of the current packet not yet handed out.
    pending: Vec<u8>,
    offset: usize,
    max_progress: usize,
    /// The section being read, and whether its header is still expected (after a delimiter).
    section: Option<Section>,
    expect_header: bool,
    /// Whether a `packfile` section started.
    head_pack: bool,
    /// What the sections' lines kept so far count for (see [`MAX_SECTION_BYTES`]).
    section_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    Sections,
    Pack,
    Done,
}

impl<R: std::io::BufRead> PackStream<R> {
    /// Read a fetch response from `inner`, whose object ids are of `kind`.
    pub fn new(inner: R, kind: Kind) -> Self {
        PackStream {
            inner,
            kind,
            head: FetchResponse::default(),
            state: StreamState::Sections,
            pending: Vec::new(),
            offset: 0,
            max_progress: 64 << 10,
            section: None,
            expect_header: true,
            head_pack: false,
            section_bytes: 0,
        }
    }

    /// What the sections before the pack said (and the progress so far).
    pub fn head(&self) -> &FetchResponse {
        &self.head
    }

    /// Read up to the start of the pack (or the end of a response without one); returns the
    /// sections. Errors if the response carries an error or breaks the protocol.
    pub fn read_sections(&mut self) -> Result<&FetchResponse, Error> {
        while self.state == StreamState::Sections {
            self.step()?;
        }
        Ok(&self.head)
    }

    /// After [`read_sections`](Self::read_sections): whether a pack follows. A response that
    /// ends without one answered a negotiation round that is not finished.
    pub fn has_pack(&self) -> bool {
        self.head_pack
    }

    /// Read pack bytes into `buf`; 0 at the end of the response.
    pub fn read_pack(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        loop {
            if self.offset < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.offset);
                buf[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
                self.offset += n;
                return Ok(n);
            }
            if self.state == StreamState::Done {
                return Ok(0);
            }
            self.step()?;
        }
    }

    /// Read the next pkt-line; `None` at a clean end of input.
    fn next_line(&mut self) -> Result<Option<Packet>, Error> {
        let mut header = [0u8; 4];
        match read_full(&mut self.inner, &mut header).map_err(pktline::Error::Io)? {
            0 => return Ok(None),
            4 => {}
            n => return Err(pktline::Error::Truncated { needed: 4 - n }.into()),
        }
        let packet = match pktline::decode(&header)? {
            pktline::Decoded::Complete { line, .. } => match line {
                Line::Flush => Packet::Flush,
                Line::Delimiter => Packet::Delimiter,
                Line::ResponseEnd => return Err(unexpected(b"<response-end>")),
                Line::Data(_) => Packet::Data(Vec::new()),
            },
            pktline::Decoded::Incomplete { needed } => {
                let mut data = vec![0u8; needed];
                let got = read_full(&mut self.inner, &mut data).map_err(pktline::Error::Io)?;
                if got < needed {
                    return Err(pktline::Error::Truncated {
                        needed: needed - got,
                    }
                    .into());
                }
                Packet::Data(data)
            }
        };
        Ok(Some(packet))
    }

    /// Consume one line in the current state.
    fn step(&mut self) -> Result<(), Error> {
        let line = match self.next_line()? {
            None => return Err(Error::Truncated),
            Some(Packet::Delimiter) => {
                self.expect_header = true;
                return Ok(());
            }
            Some(Packet::Flush) => {
                // The end of the response; before a packfile section it means negotiation
                // goes on (see `has_pack`).
                self.state = StreamState::Done;
                return Ok(());
            }
            Some(Packet::Data(line)) => line,
        };
        if let Some(message) = pktline::as_error(&line) {
            return Err(Error::Remote {
                message: pktline::shown(message),
            });
        }
        match self.state {
            StreamState::Sections => {
                let text = match sideband::split_band(&line) {
                    Some((Channel::Data, rest)) => pktline::chomp(rest).to_vec(),
                    Some((Channel::Progress, rest)) => {
                        self.progress(rest);
                        return Ok(());
                    }
                    Some((Channel::Error, rest)) => {
                        return Err(Error::SidebandError {
                            message: pktline::shown(rest),
                        });
                    }
                    None => pktline::chomp(&line).to_vec(),
                };
                if self.expect_header {
                    let next = [
                        Section::Acknowledgments,
                        Section::WantedRefs,
                        Section::ShallowInfo,
                        Section::PackfileUris,
                        Section::Packfile,
                    ]
                    .into_iter()
                    .find(|s| s.name().as_bytes() == text)
                    .ok_or_else(|| unexpected(&text))?;
                    if self.section.is_some_and(|s| s >= next) {
                        return Err(unexpected(&text));
                    }
                    self.section = Some(next);
                    self.expect_header = false;
                    match next {
                        Section::Packfile => {
                            self.state = StreamState::Pack;
                            self.head_pack = true;
                        }
                        Section::Acknowledgments => self.head.has_acknowledgments = true,
                        _ => {}
                    }
                    return Ok(());
                }
                self.section_line(&text)
            }
            StreamState::Pack => match sideband::split_band(&line) {
                Some((Channel::Data, rest)) => {
                    self.pending.clear();
                    self.pending.extend_from_slice(rest);
                    self.offset = 0;
                    Ok(())
                }
                Some((Channel::Progress, rest)) => {
                    self.progress(rest);
                    Ok(())
                }
                Some((Channel::Error, rest)) => Err(Error::SidebandError {
                    message: pktline::shown(rest),
                }),
                None => Err(unexpected(&line)),
            },
            StreamState::Done => Err(unexpected(&line)),
        }
    }

    fn progress(&mut self, text: &[u8]) {
        if self.head.progress.len() < self.max_progress {
            self.head.progress.extend_from_slice(text);
        }
    }

    /// One line of the section being read.
    fn section_line(&mut self, text: &[u8]) -> Result<(), Error> {
        self.section_bytes += text.len() + LINE_COST;
        if self.section_bytes > MAX_SECTION_BYTES {
            return Err(Error::SectionsTooLarge {
                limit: MAX_SECTION_BYTES,
            });
        }
        let (word, rest) = match text.find_byte(b' ') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, &b""[..]),
        };
        let kind = self.kind;
        let head = &mut self.head;
        match (self.section, word) {
            (Some(Section::Acknowledgments), b"NAK") => head.nak = true,
            (Some(Section::Acknowledgments), b"ready") => head.ready = true,
            (Some(Section::Acknowledgments), b"ACK") => head.acks.push(oid(rest, kind, text)?),
            (Some(Section::ShallowInfo), b"shallow") => head.shallow.push(oid(rest, kind, text)?),
            (Some(Section::ShallowInfo), b"unshallow") => {
                head.unshallow.push(oid(rest, kind, text)?)
            }
            (Some(Section::WantedRefs), hex) => {
                head.wanted_refs.push((oid(hex, kind, text)?, rest.into()))
            }
            (Some(Section::PackfileUris), hash) => head.packfile_uris.push((
                hash.to_str_lossy().into_owned(),
                rest.to_str_lossy().into_owned(),
            )),
            _ => return Err(unexpected(text)),
        }
        Ok(())
    }
}

/// A pkt-line as the stream sees it.
enum Packet {
    Flush,
    Delimiter,
    Data(Vec<u8>),
}

fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn to_io(err: Error) -> std::io::Error {
    match err {
        Error::PktLine(pktline::Error::Io(e)) => e,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
    }
}

impl<R: std::io::BufRead> std::io::Read for PackStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.state == StreamState::Sections {
            self.read_sections().map_err(to_io)?;
        }
        if !self.head_pack {
            return Err(to_io(Error::Unexpected {
                line: "no packfile section: negotiation is not finished".into(),
            }));
        }
        self.read_pack(buf).map_err(to_io)
    }
}
