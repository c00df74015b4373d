//! A pack made of some of the entries of another, copied as they are: no object is decoded,
//! and an offset delta only has its distance to its base written anew. What a mirror's
//! first pack answers early is written so: the objects found as it arrived
//! ([`crate::early::Found::write_pack`]), or the entries of the kinds a filtered clone takes.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An empty pack: its header, no entry, and its checksum.
//! let read_at = |_: &mut [u8], _: u64| -> std::io::Result<usize> { Ok(0) };
//! let (pack, checksum) =
//!     gitcache_pack::copy::copy_entries(&read_at, &[], gix_hash::Kind::Sha1, Vec::new(), |_, _| Ok(()))?;
//! assert_eq!(&pack[..12], b"PACK\0\0\0\x02\0\0\0\0");
//! assert_eq!(&pack[12..], checksum.as_bytes());
//! # Ok(())
//! # }
//! ```

use std::io::Write;

use gix_hash::ObjectId;
use gix_pack::data::entry::Header;

use crate::Error;

/// Where an entry was copied to (see [`copy_entries`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Its offset in the new pack.
    pub offset: u64,
    /// The CRC-32 of its bytes as written there (what an index keeps).
    pub crc32: u32,
    /// The CRC-32 of its bytes as read from the pack copied from.
    pub source_crc32: u32,
}

/// Write to `out` a pack of the entries of another pack (read with `read_at`, as
/// `std::os::unix::fs::FileExt::read_at` reads a file) that lie at `entries` (where each
/// starts and where it ends, rising), in that order, its checksum after them: each entry's
/// bytes as they are, but for an offset delta's distance to its base, which must be one of
/// the entries before it. `copied` is told of each entry copied, by its place in
/// `entries`; an error from it stops the copy. `out` (flushed) and the new pack's checksum.
pub fn copy_entries<W: Write>(
    read_at: &dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
    entries: &[(u64, u64)],
    hash: gix_hash::Kind,
    out: W,
    copied: impl FnMut(usize, Copied) -> Result<(), Error>,
) -> Result<(W, ObjectId), Error> {
    let bytes: u64 = entries
        .iter()
        .map(|(start, end)| end.saturating_sub(*start))
        .sum();
    std::thread::scope(|scope| {
        let out = match bytes >= HASHED_ASIDE_FROM {
            true => Hashed::aside(out, hash, scope),
            false => Hashed::here(out, hash),
        };
        copy_into(read_at, entries, out, copied)
    })
}

/// [`copy_entries`], through `out`.
fn copy_into<W: Write>(
    read_at: &dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
    entries: &[(u64, u64)],
    mut out: Hashed<'_, W>,
    mut copied: impl FnMut(usize, Copied) -> Result<(), Error>,
) -> Result<(W, ObjectId), Error> {
    let hash = out.hash;
    let count =
        u32::try_from(entries.len()).map_err(|_| Error::odb("too many objects for one pack"))?;
    out.write_all(b"PACK")?;
    out.write_all(&2u32.to_be_bytes())?;
    out.write_all(&count.to_be_bytes())?;
    // Where each entry is written, by its place.
    let mut written: Vec<u64> = Vec::with_capacity(entries.len());
    // An entry is copied a piece at a time: the memory is the same for any size.
    let mut piece = vec![0; 1 << 16];
    let mut header = Vec::new();
    // The entries are read in their order, a window at a time, not each with reads of its
    // own, and nothing past the last of them.
    let last = entries.last().map_or(0, |(_, end)| *end);
    let mut ahead = Ahead::new(read_at, last);
    for (place, &(offset, end)) in entries.iter().enumerate() {
        if end <= offset || entries[..place].last().is_some_and(|prev| offset < prev.1) {
            return Err(Error::odb("entries to copy out of order"));
        }
        let len = end - offset;
        // The header: at most its longest form, within the entry.
        let head_len = len.min(crate::incoming::LONGEST_HEADER as u64) as usize;
        ahead.read(&mut piece[..head_len], offset)?;
        let parsed = gix_pack::data::Entry::from_bytes(&piece[..head_len], offset, hash)
            .map_err(Error::odb)?;
        let header_size = parsed.header_size() as u64;
        let at = out.offset;
        let mut source = crc32fast::Hasher::new();
        source.update(&piece[..header_size as usize]);
        header.clear();
        match parsed.header {
            Header::OfsDelta { base_distance } => {
                let base = offset
                    .checked_sub(base_distance)
                    .and_then(|base| entries[..place].binary_search_by_key(&base, |e| e.0).ok())
                    .and_then(|place| written.get(place).copied())
                    .ok_or_else(|| Error::odb("a delta copied without its base"))?;
                Header::OfsDelta {
                    base_distance: at - base,
                }
                .write_to(parsed.decompressed_size, &mut header)?;
            }
            _ => header.extend_from_slice(&piece[..header_size as usize]),
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        out.write_all(&header)?;
        let mut done = header_size;
        while done < len {
            let n = (len - done).min(piece.len() as u64) as usize;
            ahead.read(&mut piece[..n], offset + done)?;
            source.update(&piece[..n]);
            crc.update(&piece[..n]);
            out.write_all(&piece[..n])?;
            done += n as u64;
        }
        written.push(at);
        copied(
            place,
            Copied {
                offset: at,
                crc32: crc.finalize(),
                source_crc32: source.finalize(),
            },
        )?;
    }
    let (mut out, checksum) = out.finish()?;
    out.write_all(checksum.as_bytes())?;
    out.flush()?;
    Ok((out, checksum))
}

/// From how many bytes of entries [`copy_entries`] hashes what it writes on a thread of its
/// own: the new pack's checksum took about two fifths of copying 22 MB of a mirror's first
/// pack (`early_scan ... copy=`), and a thread costs next to nothing beside a MiB.
const HASHED_ASIDE_FROM: u64 = 1 << 20;

/// How much [`Hashed`] hands its thread at a time (at most five such pieces are held: the
/// one filling, two waiting, one being hashed, one on its way back).
const HASHED_PIECE: usize = 256 << 10;

/// Writes to `out` and hashes what it wrote, counting it: here, or on a thread of its own in
/// pieces of [`HASHED_PIECE`] bytes while the writing goes on.
struct Hashed<'scope, W: Write> {
    out: W,
    hash: gix_hash::Kind,
    /// Bytes written so far.
    offset: u64,
    how: Hashing<'scope>,
}

enum Hashing<'scope> {
    Here(crate::Checksum),
    Aside {
        /// What was written since the last piece was handed over.
        piece: Vec<u8>,
        /// Pieces to hash (`None` once all were handed over), and the hashed ones back.
        to_hash: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
        spare: std::sync::mpsc::Receiver<Vec<u8>>,
        thread: std::thread::ScopedJoinHandle<'scope, crate::Checksum>,
    },
}

impl<'scope, W: Write> Hashed<'scope, W> {
    fn here(out: W, hash: gix_hash::Kind) -> Self {
        Hashed {
            out,
            hash,
            offset: 0,
            how: Hashing::Here(crate::Checksum::new(hash)),
        }
    }

    /// Hashing on a thread of `scope`; here when none can be started.
    fn aside<'env>(
        out: W,
        hash: gix_hash::Kind,
        scope: &'scope std::thread::Scope<'scope, 'env>,
    ) -> Self {
        let (to_hash, pieces) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let (back, spare) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("pack-checksum".into())
            .spawn_scoped(scope, move || {
                let mut sum = crate::Checksum::new(hash);
                for mut piece in pieces {
                    sum.update(&piece);
                    piece.clear();
                    // The writer may be done with pieces: nothing to give back then.
                    let _ = back.send(piece);
                }
                sum
            });
        match spawned {
            Ok(thread) => Hashed {
                out,
                hash,
                offset: 0,
                how: Hashing::Aside {
                    piece: Vec::with_capacity(HASHED_PIECE),
                    to_hash: Some(to_hash),
                    spare,
                    thread,
                },
            },
            Err(_) => Hashed::here(out, hash),
        }
    }

    /// Write out and hand over what was written since the last piece.
    fn hand_over(&mut self) -> std::io::Result<()> {
        let Hashing::Aside {
            piece,
            to_hash,
            spare,
            ..
        } = &mut self.how
        else {
            return Ok(());
        };
        if piece.is_empty() {
            return Ok(());
        }
        self.out.write_all(piece)?;
        let next = spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(HASHED_PIECE));
        let full = std::mem::replace(piece, next);
        to_hash
            .as_ref()
            .and_then(|to_hash| to_hash.send(full).ok())
            .ok_or_else(|| std::io::Error::other("the pack's checksum stopped being computed"))
    }

    /// `out`, and the checksum of everything written.
    fn finish(mut self) -> Result<(W, ObjectId), Error> {
        self.hand_over()?;
        let sum = match self.how {
            Hashing::Here(sum) => sum,
            Hashing::Aside {
                mut to_hash,
                thread,
                ..
            } => {
                // No more pieces: the thread ends once it hashed those it has.
                drop(to_hash.take());
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }
        };
        Ok((self.out, sum.finish()?))
    }
}

impl<W: Write> Write for Hashed<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A full piece is handed over before more is taken: the pieces stay their size, and
        // a failure takes nothing of `buf`.
        if let Hashing::Aside { piece, .. } = &self.how
            && piece.len() >= HASHED_PIECE
        {
            self.hand_over()?;
        }
        let n = match &mut self.how {
            Hashing::Here(sum) => {
                let n = self.out.write(buf)?;
                sum.update(&buf[..n]);
                n
            }
            Hashing::Aside { piece, .. } => {
                let n = buf.len().min(HASHED_PIECE - piece.len());
                piece.extend_from_slice(&buf[..n]);
                n
            }
        };
        self.offset += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.hand_over()?;
        self.out.flush()
    }
}

/// Fill `buf` with the bytes of a pack at `at`, which are there (an entry chosen from it).
pub(crate) fn read_fully(
    read_at: &dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
    buf: &mut [u8],
    at: u64,
) -> Result<(), Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match read_at(&mut buf[filled..], at + filled as u64)? {
            0 => {
                return Err(Error::odb("the pack ends before an entry copied from it"));
            }
            n => filled = filled.saturating_add(n).min(buf.len()),
        }
    }
    Ok(())
}

/// Reads of a pack's bytes at rising offsets, served from a window read ahead in one go, up
/// to an end not read past.
struct Ahead<'a> {
    read_at: &'a dyn Fn(&mut [u8], u64) -> std::io::Result<usize>,
    window: Vec<u8>,
    /// Where the window starts in the pack, and how much of it was read.
    start: u64,
    len: usize,
    end: u64,
}

/// How much [`Ahead`] reads at a time.
const READ_AHEAD: usize = 1 << 20;

impl<'a> Ahead<'a> {
    fn new(read_at: &'a dyn Fn(&mut [u8], u64) -> std::io::Result<usize>, end: u64) -> Self {
        Ahead {
            read_at,
            window: Vec::new(),
            start: 0,
            len: 0,
            end,
        }
    }

    /// Fill `buf` with the pack's bytes at `at`.
    fn read(&mut self, buf: &mut [u8], at: u64) -> Result<(), Error> {
        let within = at
            .checked_sub(self.start)
            .and_then(|from| usize::try_from(from).ok())
            .filter(|from| from.saturating_add(buf.len()) <= self.len);
        let from = match within {
            Some(from) => from,
            None if buf.len() > READ_AHEAD => return read_fully(self.read_at, buf, at),
            None => {
                let ahead = usize::try_from(self.end.saturating_sub(at)).unwrap_or(usize::MAX);
                let len = ahead.clamp(buf.len(), READ_AHEAD);
                self.window.resize(READ_AHEAD, 0);
                // Emptied first: a failed read leaves nothing to be taken for the pack's.
                self.len = 0;
                read_fully(self.read_at, &mut self.window[..len], at)?;
                (self.start, self.len) = (at, len);
                0
            }
        };
        buf.copy_from_slice(&self.window[from..from + buf.len()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pack of entries a copy takes as they are, and where they lie: blobs' headers, then
    /// bytes (from a few to several pieces long), and an offset delta on the first of them,
    /// the third entry left out (the delta's distance to its base changes).
    fn entries_to_copy() -> (Vec<u8>, Vec<(u64, u64)>) {
        let mut pack = b"PACK\0\0\0\x02\0\0\0\x00".to_vec();
        let mut entries = Vec::new();
        let mut header = Vec::new();
        for (i, len) in [5usize, 3 * HASHED_PIECE + 7, 1, HASHED_PIECE - 3, 70_000]
            .into_iter()
            .enumerate()
        {
            let start = pack.len() as u64;
            header.clear();
            Header::Blob.write_to(len as u64, &mut header).unwrap();
            pack.extend_from_slice(&header);
            pack.extend((0..len).map(|j| (j * 31 + i * 7) as u8));
            entries.push((start, pack.len() as u64));
        }
        let delta_at = pack.len() as u64;
        header.clear();
        Header::OfsDelta {
            base_distance: delta_at - entries[0].0,
        }
        .write_to(9, &mut header)
        .unwrap();
        pack.extend_from_slice(&header);
        pack.extend_from_slice(b"delta bytes");
        entries.push((delta_at, pack.len() as u64));
        entries.remove(2);
        (pack, entries)
    }

    fn read_at_of(pack: &[u8]) -> impl Fn(&mut [u8], u64) -> std::io::Result<usize> + '_ {
        |buf: &mut [u8], at: u64| {
            let at = (at as usize).min(pack.len());
            let n = buf.len().min(pack.len() - at);
            buf[..n].copy_from_slice(&pack[at..at + n]);
            Ok(n)
        }
    }

    /// A copy hashed on a thread of its own, in pieces, writes the same bytes with the same
    /// checksum as one hashed as it goes, and that checksum is the SHA-1 of what precedes it;
    /// an offset delta's distance is written anew either way.
    #[test]
    fn a_copy_hashed_aside_is_the_copy_hashed_here() {
        let (pack, entries) = entries_to_copy();
        let read_at = read_at_of(&pack);
        let copy = |aside: bool| {
            std::thread::scope(|scope| {
                let out = match aside {
                    true => Hashed::aside(Vec::new(), gix_hash::Kind::Sha1, scope),
                    false => Hashed::here(Vec::new(), gix_hash::Kind::Sha1),
                };
                assert_eq!(matches!(out.how, Hashing::Aside { .. }), aside);
                let mut places = Vec::new();
                let copied = copy_into(&read_at, &entries, out, |place, copy| {
                    places.push((place, copy.offset));
                    Ok(())
                })
                .unwrap();
                (copied, places)
            })
        };
        let ((here, here_sum), here_places) = copy(false);
        let ((aside, aside_sum), aside_places) = copy(true);
        assert!(here == aside, "the same bytes");
        assert_eq!((here_sum, &here_places), (aside_sum, &aside_places));
        let body = &aside[..aside.len() - 20];
        let sha1: [u8; 20] = <sha1::Sha1 as sha1::Digest>::digest(body).into();
        assert_eq!(
            aside_sum.as_bytes(),
            sha1,
            "the checksum of what precedes it"
        );
        assert_eq!(&aside[aside.len() - 20..], sha1);
        assert!(
            body.len() > 4 * HASHED_PIECE,
            "handed over in several pieces"
        );
        assert_eq!(u32::from_be_bytes(body[8..12].try_into().unwrap()), 5);
        // The delta, now after four entries, names its base at its new distance.
        let (_, delta_offset) = aside_places[4];
        let entry = gix_pack::data::Entry::from_bytes(
            &body[delta_offset as usize..],
            delta_offset,
            gix_hash::Kind::Sha1,
        )
        .unwrap();
        assert_eq!(
            entry.header,
            Header::OfsDelta {
                base_distance: delta_offset - 12
            }
        );
        // From a MiB of entries on, `copy_entries` hashes aside: the same pack.
        assert!(entries.iter().map(|(s, e)| e - s).sum::<u64>() >= HASHED_ASIDE_FROM);
        let (whole, sum) = copy_entries(
            &read_at,
            &entries,
            gix_hash::Kind::Sha1,
            Vec::new(),
            |_, _| Ok(()),
        )
        .unwrap();
        assert!(whole == aside && sum == aside_sum);
    }

    /// A copy hashed aside that fails (its writer, after a few pieces; or what it is told of
    /// each entry copied, past the pieces) ends with that error, its thread ended with it.
    #[test]
    fn a_copy_hashed_aside_that_fails_ends() {
        /// Takes `left` bytes, then fails.
        struct Failing {
            left: usize,
        }
        impl Write for Failing {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.left == 0 {
                    return Err(std::io::Error::other("the disk is full"));
                }
                let n = buf.len().min(self.left);
                self.left -= n;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (pack, entries) = entries_to_copy();
        let read_at = read_at_of(&pack);
        let Err(failed) = copy_entries(
            &read_at,
            &entries,
            gix_hash::Kind::Sha1,
            Failing {
                left: 2 * HASHED_PIECE + 5,
            },
            |_, _| Ok(()),
        ) else {
            panic!("a writer that fails made a copy");
        };
        assert!(
            format!("{failed:?}").contains("the disk is full"),
            "{failed:?}"
        );
        let Err(failed) = copy_entries(
            &read_at,
            &entries,
            gix_hash::Kind::Sha1,
            Vec::new(),
            |place, _| match place {
                2 => Err(Error::odb("told to stop")),
                _ => Ok(()),
            },
        ) else {
            panic!("a copy told to stop went on");
        };
        assert!(failed.to_string().contains("told to stop"), "{failed}");
    }

    /// Reads at rising offsets are served from one window read ahead, never past its end;
    /// one straddling the window's end, or larger than a window, reads again; a failed read
    /// leaves no window to be served from.
    #[test]
    fn reads_ahead_within_the_end() {
        let pack: Vec<u8> = (0..(3 * READ_AHEAD + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        let reads = std::cell::RefCell::new(Vec::new());
        let fail = std::cell::Cell::new(false);
        let read_at = |buf: &mut [u8], at: u64| -> std::io::Result<usize> {
            if fail.get() {
                return Err(std::io::Error::other("failed"));
            }
            reads.borrow_mut().push((at, buf.len()));
            let at = at as usize;
            let n = buf.len().min(pack.len().saturating_sub(at));
            buf[..n].copy_from_slice(&pack[at..at + n]);
            Ok(n)
        };
        let end = 2 * READ_AHEAD as u64 + 5;
        let mut ahead = Ahead::new(&read_at, end);
        let mut check = |at: u64, len: usize| {
            let mut buf = vec![0; len];
            ahead.read(&mut buf, at).unwrap();
            assert_eq!(buf, pack[at as usize..at as usize + len]);
        };
        check(0, 10);
        check(10, 1000);
        check(READ_AHEAD as u64 - 4, 8);
        check(READ_AHEAD as u64 + 10, 100);
        check(READ_AHEAD as u64 + 2, READ_AHEAD + 1);
        check(end - 3, 3);
        let reads = reads.borrow().clone();
        assert_eq!(reads[0], (0, READ_AHEAD), "one window for the first two");
        assert_eq!(reads[1], (READ_AHEAD as u64 - 4, READ_AHEAD));
        assert!(reads.len() <= 5, "{reads:?}");
        assert!(
            reads.iter().all(|(at, len)| at + *len as u64 <= end),
            "nothing read past the end: {reads:?}"
        );
        fail.set(true);
        let mut buf = [0; 4];
        assert!(ahead.read(&mut buf, end - 100).is_err());
        fail.set(false);
        ahead.read(&mut buf, end - 4).unwrap();
        assert_eq!(buf, pack[end as usize - 4..end as usize]);
    }
}
