//! Reading a pack as it arrives: each entry's header parsed, its zlib stream followed to find
//! where it ends and its CRC-32 taken, without holding its bytes; blobs stored whole from a
//! chosen size on are inflated and hashed as they go by, so that indexing need not decode them
//! whole ([`ReadPack::hashed`](crate::ReadPack::hashed)). A second reader of the same bytes
//! can be told of those blobs ([`Told`]) and pass over them uninflated
//! ([`Incoming::next_entry_told`]).
//!
//! Nothing is sized by what the pack claims: the memory is the same for a blob of 1 KiB or
//! 4 GiB (git's `index-pack` holds an object stored whole in memory up to
//! `core.bigFileThreshold`, 512 MiB).
//!
//! ```
//! use gitcache_pack::incoming::Incoming;
//!
//! // A pack of one blob, "hello\n", as `git pack-objects` writes it.
//! let pack: &[u8] = &[
//!     b'P', b'A', b'C', b'K', 0, 0, 0, 2, 0, 0, 0, 1, // header: version 2, one object
//!     0x36, // a blob of 6 bytes, deflated:
//!     0x78, 0x9c, 0xcb, 0x48, 0xcd, 0xc9, 0xc9, 0xe7, 0x02, 0x00, 0x08, 0x4b, 0x02, 0x1f,
//! ];
//! let mut read = pack;
//! let mut incoming = Incoming::new(&mut read, gix_hash::Kind::Sha1, 0)?;
//! assert_eq!(incoming.count(), 1);
//! let entry = incoming.next_entry()?.expect("one entry");
//! assert_eq!((entry.offset, entry.size, entry.header_size), (12, 6, 1));
//! let id = entry.id.expect("a blob from size 0 on is hashed");
//! assert_eq!(id.to_string(), "ce013625030ba8dba906f756967f9e9ca394464a");
//! assert!(incoming.next_entry()?.is_none());
//! # Ok::<(), gitcache_pack::Error>(())
//! ```

use std::io::{BufRead, Read};

use gix_hash::ObjectId;
use gix_pack::data::entry::Header;

use crate::Error;

/// The most bytes an entry's header takes in its shortest form: its kind and size (ten bytes
/// for 64 bits), then a base's offset (ten) or id (32). A longer one is refused, wherever the
/// bytes that arrived so far end.
pub const LONGEST_HEADER: usize = 10 + 32;

/// A pack read entry by entry from its bytes as they arrive (from any reader: `R`).
pub struct Incoming<'a, R: BufRead + ?Sized = dyn BufRead + 'a> {
    read: Crc<'a, R>,
    hash: gix_hash::Kind,
    /// Where the next entry starts.
    offset: u64,
    count: u32,
    left: u32,
    /// Blobs stored whole from this size on are hashed.
    hash_from: u64,
    /// Follows a stream to its end without writing out what it holds.
    measure: gix_zlib::stream::inflate::Measure,
    /// Inflates a blob to hash.
    inflate: gix_zlib::Decompress,
    /// Where a blob to hash is inflated into, a piece at a time.
    out: Vec<u8>,
}

impl<R: BufRead + ?Sized> std::fmt::Debug for Incoming<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("offset", &self.offset)
            .field("count", &self.count)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

/// Whether an entry is inflated and held, told its offset, header and inflated size (see
/// [`Incoming::next_entry_keeping`]).
pub type Keep<'a> = dyn Fn(u64, &Header, u64) -> bool + 'a;

/// What another reader of the same bytes (a pack's receiving, which inflates every entry to
/// find where it ends) learned of a blob stored whole at an offset: this reader then passes
/// over its stream without inflating or hashing it (see [`Incoming::next_entry_told`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    /// Where the entry ends (the next one starts).
    pub end: u64,
    /// CRC-32 of its header and zlib stream, as [`IncomingEntry::crc32`]: checked against
    /// the bytes passed over, so that an entry told wrongly is an error, not a wrong id.
    pub crc32: u32,
    /// The blob's id.
    pub id: ObjectId,
}

/// What was learned of the blob stored whole at an offset, if anything (see [`Told`]).
pub type Tell<'a> = dyn Fn(u64) -> Option<Told> + 'a;

/// One entry of a pack read by [`Incoming`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingEntry {
    /// Where it starts in the pack.
    pub offset: u64,
    /// What it is: an object stored whole, or a delta and where its base is.
    pub header: Header,
    /// Bytes of its header as sent.
    pub header_size: u16,
    /// Bytes of the object or delta it holds, inflated.
    pub size: u64,
    /// Bytes of its zlib stream.
    pub compressed_size: u64,
    /// CRC-32 of its header and zlib stream, as a pack index keeps it.
    pub crc32: u32,
    /// The object's id, for a blob stored whole hashed as it was read.
    pub id: Option<ObjectId>,
}

impl IncomingEntry {
    /// Where the next entry starts.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.header_size) + self.compressed_size
    }
}

impl<'a, R: BufRead + ?Sized> Incoming<'a, R> {
    /// Read the pack header from `read` (a pack whose object ids are `hash`); blobs stored
    /// whole of `hash_from` bytes and more will be hashed as they are read.
    pub fn new(read: &'a mut R, hash: gix_hash::Kind, hash_from: u64) -> Result<Self, Error> {
        let mut header = [0; gix_pack::data::header::SIZE];
        read.read_exact(&mut header).map_err(|err| invalid(&err))?;
        let (_, count) = gix_pack::data::header::decode(&header).map_err(|err| invalid(&err))?;
        Ok(Incoming {
            read: Crc {
                inner: read,
                crc: crc32fast::Hasher::new(),
            },
            hash,
            offset: header.len() as u64,
            count,
            left: count,
            hash_from,
            measure: Default::default(),
            inflate: gix_zlib::Decompress::new(),
            out: Vec::new(),
        })
    }

    /// One entry of a pack whose object ids are `hash`, read from `read` where it starts at
    /// `offset` (a pack read again from what was written of it): no pack header, nothing
    /// hashed.
    pub(crate) fn one_at(read: &'a mut R, hash: gix_hash::Kind, offset: u64) -> Self {
        Incoming {
            read: Crc {
                inner: read,
                crc: crc32fast::Hasher::new(),
            },
            hash,
            offset,
            count: 1,
            left: 1,
            hash_from: u64::MAX,
            measure: Default::default(),
            inflate: gix_zlib::Decompress::new(),
            out: Vec::new(),
        }
    }

    /// Where the next entry starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The number of entries the header claims.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// From the next entry on, hash blobs stored whole of `hash_from` bytes and more as they
    /// are read (see [`new`](Self::new)).
    pub fn hash_from(&mut self, hash_from: u64) {
        self.hash_from = hash_from;
    }

    /// The next entry, `None` after the last.
    pub fn next_entry(&mut self) -> Result<Option<IncomingEntry>, Error> {
        Ok(self.read_entry(None, None)?.map(|(entry, _)| entry))
    }

    /// [`next_entry`](Self::next_entry), inflating into `out` an entry (a delta's
    /// instructions, for a delta) that `keep` takes, told its offset, header and inflated
    /// size, unless it is a blob hashed as it is read: whether it was (`out` holds nothing
    /// meaningful otherwise). What `keep` takes is held whole in memory: it bounds the size.
    pub fn next_entry_keeping(
        &mut self,
        keep: &Keep<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Option<(IncomingEntry, bool)>, Error> {
        self.read_entry(Some((keep, out)), None)
    }

    /// [`next_entry_keeping`](Self::next_entry_keeping), passing over a blob stored whole
    /// that `tell` knows of, told its offset: its stream is not inflated, its id is the one
    /// told (the entry's `id`), and it is an error if the bytes passed over to the end told
    /// do not have the CRC-32 told.
    pub fn next_entry_told(
        &mut self,
        tell: &Tell<'_>,
        keep: &Keep<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Option<(IncomingEntry, bool)>, Error> {
        self.read_entry(Some((keep, out)), Some(tell))
    }

    fn read_entry(
        &mut self,
        keep: Option<(&Keep<'_>, &mut Vec<u8>)>,
        tell: Option<&Tell<'_>>,
    ) -> Result<Option<(IncomingEntry, bool)>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let offset = self.offset;
        let at =
            |err: &dyn std::fmt::Display| invalid(&format!("the entry at offset {offset}: {err}"));
        // Parsed where it lies when the longest header fits in what is buffered (an entry's
        // header is a few bytes, taken one by one otherwise).
        let buffered = self.read.fill_buf().map_err(|err| at(&err))?;
        let header = if buffered.len() >= LONGEST_HEADER {
            let header = gix_pack::data::Entry::from_bytes(buffered, offset, self.hash)
                .map_err(|err| at(&err))?;
            self.read.consume(header.header_size());
            header
        } else {
            gix_pack::data::Entry::from_read(&mut self.read, offset, self.hash.len_in_bytes())
                .map_err(|err| at(&err))?
        };
        if header.header_size() > LONGEST_HEADER {
            return Err(at(&"a header longer than any in its shortest form"));
        }
        let header_size =
            u16::try_from(header.header_size()).map_err(|_| at(&"a header too long"))?;
        let mut kept = false;
        let told = match (header.header, tell) {
            (Header::Blob, Some(tell)) => tell(offset),
            _ => None,
        };
        let (decompressed, compressed, id) = match (header.header, keep, told) {
            (_, _, Some(told)) => {
                let stream = told
                    .end
                    .checked_sub(offset + u64::from(header_size))
                    .filter(|stream| *stream > 0)
                    .ok_or_else(|| at(&"told an end before its stream"))?;
                self.pass(stream).map_err(|err| at(&err))?;
                (header.decompressed_size, stream, Some(told.id))
            }
            (Header::Blob, _, _) if header.decompressed_size >= self.hash_from => {
                let (compressed, id) = self.hash_blob(header.decompressed_size, offset)?;
                (header.decompressed_size, compressed, Some(id))
            }
            (_, Some((keep, out)), _) if keep(offset, &header.header, header.decompressed_size) => {
                let compressed = self.inflate_into(header.decompressed_size, offset, out)?;
                kept = true;
                (header.decompressed_size, compressed, None)
            }
            _ => {
                let (decompressed, compressed) =
                    self.measure.read(&mut self.read).map_err(|err| at(&err))?;
                (decompressed, compressed, None)
            }
        };
        if decompressed != header.decompressed_size {
            return Err(invalid(&format!(
                "the entry at offset {offset} inflates to {decompressed} bytes, its header says {}",
                header.decompressed_size
            )));
        }
        let entry = IncomingEntry {
            offset,
            header: header.header,
            header_size,
            size: decompressed,
            compressed_size: compressed,
            crc32: std::mem::take(&mut self.read.crc).finalize(),
            id,
        };
        if told.is_some_and(|told| told.crc32 != entry.crc32) {
            return Err(at(&"not the blob told (its CRC-32 differs)"));
        }
        self.offset = entry.end();
        Ok(Some((entry, kept)))
    }

    /// The pack's trailer, read after the last entry: the checksum it claims (checking it is
    /// the reader's, who sees every byte).
    pub fn trailer(&mut self) -> Result<ObjectId, Error> {
        if self.left != 0 {
            return Err(invalid(&format!("{} entries are still to read", self.left)));
        }
        let mut trailer = [0; 64];
        let trailer = &mut trailer[..self.hash.len_in_bytes()];
        (self.read.inner)
            .read_exact(trailer)
            .map_err(|err| invalid(&format!("the pack's trailer: {err}")))?;
        Ok(ObjectId::from_bytes_or_panic(trailer))
    }

    /// Pass over the next `bytes` of the reader (their CRC-32 taken), inflating nothing.
    fn pass(&mut self, mut bytes: u64) -> std::io::Result<()> {
        while bytes > 0 {
            let buffered = self.read.fill_buf()?.len();
            if buffered == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let amount = buffered.min(usize::try_from(bytes).unwrap_or(usize::MAX));
            self.read.consume(amount);
            bytes -= amount as u64;
        }
        Ok(())
    }

    /// Inflate the zlib stream of an entry of `size` bytes at `offset` from the reader into
    /// `out`: the bytes of its stream. `size` is held to by the caller; one byte more is
    /// room to find a stream longer than its header says.
    fn inflate_into(&mut self, size: u64, offset: u64, out: &mut Vec<u8>) -> Result<u64, Error> {
        let corrupt = |what: &dyn std::fmt::Display| {
            invalid(&format!("the entry at offset {offset}: {what}"))
        };
        let size = usize::try_from(size)
            .ok()
            .filter(|size| *size < usize::MAX)
            .ok_or_else(|| corrupt(&"too large to hold"))?;
        out.clear();
        self.inflate.reset();
        loop {
            let input = self.read.fill_buf().map_err(|err| corrupt(&err))?;
            if input.is_empty() {
                return Err(corrupt(&"the pack ends inside it"));
            }
            let (read, written) = (self.inflate.total_in(), self.inflate.total_out());
            let at = written as usize;
            if at == out.len() {
                // Grown as the stream gives (doubling), not to the size the header claims:
                // a header claiming much for a short stream costs nothing.
                out.resize(at.saturating_mul(2).max(1 << 12).min(size + 1), 0);
            }
            let status = (self.inflate)
                .decompress(input, &mut out[at..], gix_zlib::FlushDecompress::None)
                .map_err(|err| corrupt(&err))?;
            let used = (self.inflate.total_in() - read) as usize;
            let made = (self.inflate.total_out() - written) as usize;
            self.read.consume(used);
            if self.inflate.total_out() as usize > size {
                return Err(corrupt(&format_args!(
                    "it inflates to more than {size} bytes"
                )));
            }
            match status {
                gix_zlib::Status::StreamEnd => break,
                _ if used == 0 && made == 0 => return Err(corrupt(&"its stream is stuck")),
                _ => {}
            }
        }
        if self.inflate.total_out() as usize != size {
            return Err(corrupt(&format_args!(
                "it inflates to {} bytes, its header says {size}",
                self.inflate.total_out()
            )));
        }
        out.truncate(size);
        Ok(self.inflate.total_in())
    }

    /// Inflate the zlib stream of a blob of `size` bytes at `offset` from the reader, hashing
    /// it as it comes: the bytes of its stream and its id. Any size is taken, as git takes
    /// it: nothing here grows with it, and inflating it costs what following its stream to
    /// the end costs any entry.
    fn hash_blob(&mut self, size: u64, offset: u64) -> Result<(u64, ObjectId), Error> {
        let corrupt =
            |what: &dyn std::fmt::Display| invalid(&format!("the blob at offset {offset}: {what}"));
        self.out.resize(1 << 16, 0);
        self.inflate.reset();
        let mut hasher = gix_hash::hasher(self.hash);
        hasher.update(&gix_object::encode::loose_header(
            gix_object::Kind::Blob,
            size,
        ));
        loop {
            let input = self.read.fill_buf().map_err(|err| corrupt(&err))?;
            if input.is_empty() {
                return Err(corrupt(&"the pack ends inside it"));
            }
            let (read, written) = (self.inflate.total_in(), self.inflate.total_out());
            let status = (self.inflate)
                .decompress(input, &mut self.out, gix_zlib::FlushDecompress::None)
                .map_err(|err| corrupt(&err))?;
            let used = (self.inflate.total_in() - read) as usize;
            let made = (self.inflate.total_out() - written) as usize;
            self.read.consume(used);
            if self.inflate.total_out() > size {
                return Err(corrupt(&format_args!(
                    "it inflates to more than {size} bytes"
                )));
            }
            hasher.update(&self.out[..made]);
            match status {
                gix_zlib::Status::StreamEnd => break,
                // No way forward with input there and room for output: not a stream.
                _ if used == 0 && made == 0 => return Err(corrupt(&"its stream is stuck")),
                _ => {}
            }
        }
        if self.inflate.total_out() != size {
            return Err(corrupt(&format_args!(
                "it inflates to {} bytes, its header says {size}",
                self.inflate.total_out()
            )));
        }
        let id = hasher.try_finalize().map_err(|err| corrupt(&err))?;
        Ok((self.inflate.total_in(), id))
    }
}

fn invalid(what: &dyn std::fmt::Display) -> Error {
    Error::odb(format!("invalid pack: {what}"))
}

/// A reader taking the CRC-32 of the bytes consumed from it.
struct Crc<'a, R: BufRead + ?Sized> {
    inner: &'a mut R,
    crc: crc32fast::Hasher,
}

impl<R: BufRead + ?Sized> Read for Crc<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

impl<R: BufRead + ?Sized> BufRead for Crc<'_, R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        // What was filled is still there, unread: filling again reads nothing new.
        if let Ok(data) = self.inner.fill_buf() {
            self.crc.update(&data[..amount.min(data.len())]);
        }
        self.inner.consume(amount);
    }
}
