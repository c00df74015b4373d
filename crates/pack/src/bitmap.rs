//! Reachability bitmaps in git's `.bitmap` format (version 1): which objects of a pack each
//! selected commit reaches, one bit per object in pack order, EWAH-compressed, plus one
//! bitmap per object type.
//!
//! Read for selection (a fetch's objects become a few bitmap operations instead of a walk)
//! and written beside a consolidated mirror pack. Git reads the files this module writes
//! (`git rev-list --test-bitmap` checks them in the tests), and this module reads git's.

use gix_hash::{Kind as HashKind, ObjectId};

use crate::Error;
use crate::objects::{EntryKind, Objects};
use std::sync::Arc;

use crate::packs::{RevIndex, StoredPack};
use crate::{OidMap, OidSet};

const MAGIC: &[u8; 4] = b"BITM";
const VERSION: u16 = 1;
/// The bitmaps hold the whole closure of each commit: the only kind git writes or reads.
const OPT_FULL_DAG: u16 = 0x1;
/// A name hash per object, in index order, after the entries and the lookup table (git's
/// "hash cache"): the hash of the path each object was first met at, which pack writing
/// sorts delta candidates by.
const OPT_HASH_CACHE: u16 = 0x4;
/// A table of the entries, by commit, before the name-hashes: loads read it instead of
/// every entry's header.
const OPT_LOOKUP_TABLE: u16 = 0x10;
/// Bytes of one lookup table row: commit's index position, entry offset, XOR base row.
const TABLE_ROW: usize = 16;
/// No XOR base, in a lookup table row.
const NO_ROW: u32 = u32::MAX;
/// Bytes of decoded objects kept while writing bitmaps, every base of a delta chain included
/// (git keeps 96 MiB).
const HISTORY_CACHE_BYTES: usize = 64 << 20;
/// How far back a bitmap's XOR base may be (git's limit too).
const MAX_XOR_OFFSET: usize = 10;

/// A plain bit set, bit `i` in word `i / 64` at `1 << (i % 64)`, as EWAH words hold them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    pub(crate) fn with_len(bits: usize) -> Self {
        Bits(vec![0; bits.div_ceil(64)])
    }

    pub(crate) fn set(&mut self, i: usize) {
        let word = i / 64;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (i % 64);
    }

    pub(crate) fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub(crate) fn or(&mut self, other: &Bits) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    pub(crate) fn and_not(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a &= !b;
        }
    }

    fn xor(&mut self, other: &Bits) {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a ^= b;
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The positions set, in order.
    pub(crate) fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &word)| {
            let mut w = word;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

/// Why a bitmap file cannot be used.
fn bad(reason: impl Into<String>) -> Error {
    Error::Bitmap(reason.into())
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, Error> {
    data.get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("four bytes")))
        .ok_or_else(|| bad("truncated"))
}

/// Decode one EWAH bitmap at the start of `data` into at most `max_bits` bits; returns it and
/// the bytes it took.
pub(crate) fn ewah_decode(data: &[u8], max_bits: usize) -> Result<(Bits, usize), Error> {
    let mut bits = Bits::default();
    let used = ewah_xor_into(data, max_bits, &mut bits)?;
    Ok((bits, used))
}

/// XOR the EWAH bitmap at the start of `data` (of at most `max_bits` bits) into `acc`, which
/// grows to hold it; returns the bytes it took. Decoding is XORing into nothing.
fn ewah_xor_into(data: &[u8], max_bits: usize, acc: &mut Bits) -> Result<usize, Error> {
    let bit_size = u32_at(data, 0)? as usize;
    let word_count = u32_at(data, 4)? as usize;
    // Git counts whole words: up to 63 bits past the last object, never set.
    if bit_size > max_bits.div_ceil(64) * 64 {
        return Err(bad(format!(
            "a bitmap of {bit_size} bits for a pack of {max_bits} objects"
        )));
    }
    let words_end = 8 + word_count * 8;
    let raw = data
        .get(8..words_end)
        .ok_or_else(|| bad("truncated bitmap"))?;
    u32_at(data, words_end)?;
    let wanted = bit_size.div_ceil(64);
    let keep = bit_size.min(max_bits);
    let last = keep.div_ceil(64);
    if acc.0.len() < last {
        acc.0.resize(last, 0);
    }
    // No bit past the last object.
    let tail = if keep.is_multiple_of(64) {
        u64::MAX
    } else {
        (1u64 << (keep % 64)) - 1
    };
    let mut xor = |at: usize, w: u64| {
        if at + 1 < last {
            acc.0[at] ^= w;
        } else if at + 1 == last {
            acc.0[at] ^= w & tail;
        }
    };
    let word = |i: usize| u64::from_be_bytes(raw[i * 8..i * 8 + 8].try_into().expect("eight"));
    let (mut i, mut at) = (0, 0usize);
    while i < word_count {
        let rlw = word(i);
        i += 1;
        let run = ((rlw >> 1) & 0xffff_ffff) as usize;
        let literals = (rlw >> 33) as usize;
        let end = at.checked_add(run).and_then(|e| e.checked_add(literals));
        if end.is_none_or(|end| end > wanted + 1) || i + literals > word_count {
            return Err(bad("a bitmap longer than it says"));
        }
        if rlw & 1 == 1 {
            for w in at..(at + run).min(last) {
                xor(w, u64::MAX);
            }
        }
        at += run;
        for l in 0..literals {
            xor(at + l, word(i + l));
        }
        at += literals;
        i += literals;
    }
    Ok(words_end + 4)
}

/// Encode `bits` (of `bit_size` bits) as EWAH.
pub(crate) fn ewah_encode(bits: &Bits, bit_size: usize, out: &mut Vec<u8>) {
    const MAX_RUN: usize = 0xffff_ffff;
    const MAX_LITERALS: usize = 0x7fff_ffff;
    let words = &bits.0[..bits.0.len().min(bit_size.div_ceil(64))];
    let mut encoded: Vec<u64> = Vec::new();
    let mut last_rlw;
    let mut i = 0;
    loop {
        let mut run = 0;
        let mut fill = 0u64;
        if i < words.len() && (words[i] == 0 || words[i] == u64::MAX) {
            fill = words[i];
            while i < words.len() && words[i] == fill && run < MAX_RUN {
                run += 1;
                i += 1;
            }
        }
        let start = i;
        while i < words.len() && words[i] != 0 && words[i] != u64::MAX && i - start < MAX_LITERALS {
            i += 1;
        }
        last_rlw = encoded.len();
        encoded.push((fill & 1) | ((run as u64) << 1) | (((i - start) as u64) << 33));
        encoded.extend_from_slice(&words[start..i]);
        if i >= words.len() {
            break;
        }
    }
    out.extend_from_slice(&(bit_size as u32).to_be_bytes());
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    for w in encoded {
        out.extend_from_slice(&w.to_be_bytes());
    }
    out.extend_from_slice(&(last_rlw as u32).to_be_bytes());
}

/// A bitmap file's bytes: read whole (a file without a lookup table, whose every entry
/// header a load reads anyway), or read piece by piece as they are needed (a file with one:
/// a fetch reads the table and the few entries it decodes, whatever the page cache holds).
enum Source {
    Whole(Vec<u8>),
    #[cfg(unix)]
    Pieces {
        file: std::fs::File,
        len: usize,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("len", &self.len()).finish()
    }
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Whole(data) => data.len(),
            #[cfg(unix)]
            Source::Pieces { len, .. } => *len,
        }
    }

    /// `len` bytes at `at`.
    fn read(&self, at: usize, len: usize) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
        let end = at
            .checked_add(len)
            .filter(|&end| end <= self.len())
            .ok_or_else(|| bad("truncated bitmap"))?;
        match self {
            Source::Whole(data) => Ok(std::borrow::Cow::Borrowed(&data[at..end])),
            #[cfg(unix)]
            Source::Pieces { file, .. } => {
                let mut buf = vec![0; len];
                std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, at as u64)?;
                Ok(std::borrow::Cow::Owned(buf))
            }
        }
    }

    /// The EWAH bitmap at `at`, decoded into at most `max_bits` bits, and where it ends.
    fn ewah(&self, at: usize, max_bits: usize) -> Result<(Bits, usize), Error> {
        let data = self.ewah_bytes(at)?;
        let (bits, used) = ewah_decode(&data, max_bits)?;
        Ok((bits, at + used))
    }

    /// The EWAH bitmap at `at` (of at most `max_bits` bits) XORed into `acc`.
    fn ewah_xor(&self, at: usize, max_bits: usize, acc: &mut Bits) -> Result<(), Error> {
        let data = self.ewah_bytes(at)?;
        ewah_xor_into(&data, max_bits, acc).map(drop)
    }

    /// The bytes of the EWAH bitmap at `at`.
    fn ewah_bytes(&self, at: usize) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
        let head = self.read(at, 8)?;
        let words = u32_at(&head, 4)? as usize;
        let len = words
            .checked_mul(8)
            .and_then(|w| w.checked_add(12))
            .ok_or_else(|| bad("truncated bitmap"))?;
        self.read(at, len)
    }
}

/// Where one stored bitmap is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Where its EWAH starts (after the entry's 6-byte header).
    start: usize,
    /// The entry it is XORed with, if any.
    base: Option<usize>,
    /// Its commit's index position, as the header says it.
    position: u32,
}

/// A pack's bitmaps: the type bitmaps decoded, each commit's decoded when first asked for.
#[derive(Debug)]
pub(crate) struct PackBitmaps {
    /// Objects by type, in pack order.
    pub(crate) commits: Bits,
    pub(crate) trees: Bits,
    pub(crate) blobs: Bits,
    pub(crate) tags: Bits,
    data: Source,
    objects: usize,
    entries: Vec<Entry>,
    /// Entries by their commit's index position (no object ids read to build it).
    by_commit: std::collections::HashMap<u32, usize>,
    decoded: std::sync::Mutex<std::collections::HashMap<usize, Arc<Bits>>>,
    /// Where the name hashes start, if the file has them.
    names_at: Option<usize>,
    /// The name hashes, in index order, when first asked for.
    names: std::sync::OnceLock<Arc<[u32]>>,
    /// Entries XORed so far (each decoding of one counts), for tests.
    #[cfg(test)]
    xors: std::sync::atomic::AtomicUsize,
}

impl PackBitmaps {
    /// Read `pack-<hash>.bitmap` beside `pack`, if there is one that belongs to it.
    ///
    /// As git does, the file's trailing checksum is not verified here (that would read the
    /// whole file for every repository handle; see [`verify_checksum`]): its structure is,
    /// as each part is read.
    pub(crate) fn load(pack: &StoredPack, hash: HashKind) -> Result<Option<PackBitmaps>, Error> {
        let Ok(file) = std::fs::File::open(pack.pack.with_extension("bitmap")) else {
            return Ok(None);
        };
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| bad("too large"))?;
        #[cfg(unix)]
        let source = Source::Pieces { file, len };
        #[cfg(not(unix))]
        let source = {
            let mut data = Vec::with_capacity(len);
            std::io::Read::read_to_end(&mut { file }, &mut data)?;
            Source::Whole(data)
        };
        Self::parse(source, pack, hash).map(Some)
    }

    /// Read `data` as `pack`'s bitmap file (the fuzz target's way in: no file).
    pub(crate) fn parse_bytes(
        data: Vec<u8>,
        pack: &StoredPack,
        hash: HashKind,
    ) -> Result<PackBitmaps, Error> {
        Self::parse(Source::Whole(data), pack, hash)
    }

    /// The index positions of the commits that have a stored bitmap.
    pub(crate) fn commit_positions(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.iter().map(|e| e.position)
    }

    fn parse(data: Source, pack: &StoredPack, hash: HashKind) -> Result<PackBitmaps, Error> {
        let n = pack.num_objects();
        let hash_len = hash.len_in_bytes();
        if data.len() < 12 + 2 * hash_len {
            return Err(bad("not a bitmap file"));
        }
        let header = data.read(0, 12 + hash_len)?.into_owned();
        if &header[..4] != MAGIC {
            return Err(bad("not a bitmap file"));
        }
        let version = u16::from_be_bytes([header[4], header[5]]);
        let options = u16::from_be_bytes([header[6], header[7]]);
        if version != VERSION || options & OPT_FULL_DAG == 0 {
            return Err(bad(format!(
                "bitmap version {version} with options {options:#x}"
            )));
        }
        let count = u32_at(&header, 8)? as usize;
        if header[12..] != *pack.index.pack_checksum().as_bytes() {
            return Err(bad("the bitmap belongs to another pack"));
        }
        // Without a table, every entry's header is read to find them: the whole file at once.
        #[cfg(unix)]
        let data = match data {
            Source::Pieces { .. } if options & OPT_LOOKUP_TABLE == 0 => {
                Source::Whole(data.read(0, data.len())?.into_owned())
            }
            data => data,
        };
        let mut at = 12 + hash_len;
        let mut types = Vec::with_capacity(4);
        for _ in 0..4 {
            let (bits, end) = data.ewah(at, n)?;
            types.push(bits);
            at = end;
        }
        // Only the entries' places now: each is decoded when a fetch needs it. Per entry:
        // its commit's index position, where its EWAH starts, the entry it is XORed with.
        let mut places: Vec<(usize, usize, Option<usize>)> = Vec::with_capacity(count.min(n));
        // The name hashes end the file, before its checksum.
        let names_at = match options & OPT_HASH_CACHE {
            0 => None,
            _ => Some(
                (data.len() - hash_len)
                    .checked_sub(n.checked_mul(4).ok_or_else(|| bad("too many objects"))?)
                    .filter(|&start| start >= at)
                    .ok_or_else(|| bad("truncated bitmap"))?,
            ),
        };
        if options & OPT_LOOKUP_TABLE != 0 {
            // From the table alone: the entries' own pages are read only when needed.
            let end = names_at.unwrap_or(data.len() - hash_len);
            let table = end
                .checked_sub(count * TABLE_ROW)
                .filter(|&t| t >= at)
                .ok_or_else(|| bad("truncated bitmap"))?;
            let rows = data.read(table, count * TABLE_ROW)?;
            for row in 0..count {
                let r = row * TABLE_ROW;
                let offset = u64::from_be_bytes(rows[r + 4..r + 12].try_into().expect("eight"));
                let start = usize::try_from(offset)
                    .ok()
                    .filter(|&o| o >= at && o.checked_add(6 + 12).is_some_and(|end| end <= table))
                    .ok_or_else(|| bad("a bitmap entry outside the file"))?
                    + 6;
                let base = match u32_at(&rows, r + 12)? {
                    NO_ROW => None,
                    x if (x as usize) < count && x as usize != row => Some(x as usize),
                    _ => return Err(bad("an XOR row outside the table")),
                };
                places.push((u32_at(&rows, r)? as usize, start, base));
            }
        } else {
            // Each entry's header, one after the other (the file was read whole).
            let whole = data.read(0, data.len())?;
            for i in 0..count {
                let position = u32_at(&whole, at)? as usize;
                let xor = *whole.get(at + 4).ok_or_else(|| bad("truncated"))? as usize;
                at += 6;
                let words = u32_at(&whole, at + 4)? as usize;
                let start = at;
                at += 12 + words * 8;
                if at > names_at.unwrap_or(whole.len() - hash_len) {
                    return Err(bad("truncated bitmap"));
                }
                let base = match xor {
                    0 => None,
                    x => Some(
                        i.checked_sub(x)
                            .ok_or_else(|| bad("an XOR offset past the first bitmap"))?,
                    ),
                };
                places.push((position, start, base));
            }
        }
        let mut entries = Vec::with_capacity(places.len());
        let mut by_commit = std::collections::HashMap::with_capacity(places.len());
        for (i, (position, start, base)) in places.into_iter().enumerate() {
            if position >= n {
                return Err(bad("a bitmap for an object outside the pack"));
            }
            entries.push(Entry {
                start,
                base,
                position: position as u32,
            });
            by_commit.insert(position as u32, i);
        }
        let mut types = types.into_iter();
        let mut next = || types.next().expect("four type bitmaps");
        let commits = next();
        let trees = next();
        Ok(PackBitmaps {
            commits,
            trees,
            blobs: next(),
            tags: next(),
            data,
            objects: n,
            entries,
            by_commit,
            decoded: Default::default(),
            names_at,
            names: Default::default(),
            #[cfg(test)]
            xors: Default::default(),
        })
    }

    /// The name hash of each object, in index order (the hash of the path the object was
    /// first met at when the file was written), if the file has them: read when first asked
    /// for.
    pub(crate) fn names(&self) -> Result<Option<Arc<[u32]>>, Error> {
        let Some(at) = self.names_at else {
            return Ok(None);
        };
        if let Some(names) = self.names.get() {
            return Ok(Some(Arc::clone(names)));
        }
        let len = self
            .objects
            .checked_mul(4)
            .ok_or_else(|| bad("too many objects"))?;
        let bytes = self.data.read(at, len)?;
        let names: Arc<[u32]> = bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("four bytes")))
            .collect();
        Ok(Some(Arc::clone(self.names.get_or_init(|| names))))
    }

    /// Whether the file has the objects' name hashes.
    pub(crate) fn has_names(&self) -> bool {
        self.names_at.is_some()
    }

    /// The name hash of the object at `index_position`, from the table if it was read, else
    /// read from the file alone (`None`: the file has no names, or none there).
    fn name(&self, index_position: u32) -> Option<u32> {
        let at = self.names_at?;
        if let Some(names) = self.names.get() {
            return names.get(index_position as usize).copied();
        }
        if index_position as usize >= self.objects {
            return None;
        }
        let bytes = self.data.read(at + 4 * index_position as usize, 4).ok()?;
        Some(u32::from_be_bytes(bytes[..].try_into().ok()?))
    }

    /// What the commit at `index_position` (in the pack's `.idx`) reaches, if it has a
    /// stored bitmap.
    pub(crate) fn get(&self, index_position: u32) -> Result<Option<Arc<Bits>>, Error> {
        match self.by_commit.get(&index_position) {
            Some(&i) => self.entry(i).map(Some),
            None => Ok(None),
        }
    }

    /// Entry `i` decoded: its EWAH XORed with its base's bitmap, which is its own EWAH XORed
    /// with its base's, and so on down the chain to an entry stored as it is or one decoded
    /// already. The chain is decoded from that end up, into one accumulator, so every entry
    /// on it is decoded on the way: every [`KEEP_EVERY`]th is kept, where the chains of
    /// other commits asked for next are likely to meet it (a clone of many tips met the
    /// same chain's far end again for each one, half the time of a `tree:0` clone of 400
    /// tips).
    fn entry(&self, i: usize) -> Result<Arc<Bits>, Error> {
        let cached = |i: usize| {
            self.decoded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&i)
                .cloned()
        };
        if let Some(bits) = cached(i) {
            return Ok(bits);
        }
        let mut chain = Vec::new();
        let mut below: Option<Arc<Bits>> = None;
        let mut next = Some(i);
        while let Some(e) = next {
            if chain.len() > self.entries.len() {
                return Err(bad("an XOR chain that loops"));
            }
            if e != i
                && let Some(known) = cached(e)
            {
                below = Some(known);
                break;
            }
            chain.push(e);
            next = self.entries[e].base;
        }
        let mut acc = match below {
            Some(known) => (*known).clone(),
            None => Bits::default(),
        };
        for (k, &e) in chain.iter().enumerate().rev() {
            self.xor_entry(e, &mut acc)?;
            if k > 0 && k % KEEP_EVERY == 0 {
                self.keep(e, || Arc::new(acc.clone()), false);
            }
        }
        let bits = Arc::new(acc);
        self.keep(i, || Arc::clone(&bits), true);
        Ok(bits)
    }

    /// XOR entry `e`'s stored EWAH into `acc`.
    fn xor_entry(&self, e: usize, acc: &mut Bits) -> Result<(), Error> {
        let Entry {
            start, position, ..
        } = self.entries[e];
        // What a lookup table says must be what the entry says.
        if u32_at(&self.data.read(start - 6, 4)?, 0)? != position {
            return Err(bad("a lookup table row names another entry"));
        }
        #[cfg(test)]
        self.xors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.data.ewah_xor(start, self.objects, acc)
    }

    /// OR the bitmaps of entries `wanted` into `into`, decoding each entry on their XOR
    /// chains once: a chain shared by many of them (the tips of a clone of every branch
    /// meet the same ones) is decoded once for all, not once per tip as [`Self::entry`]
    /// does once the kept bitmaps no longer hold them all (611 tips of a 1 GB pack, 160 KB
    /// each, XORed down chains into the same older entries).
    ///
    /// Each wanted entry comes with its commit's pack position: taken in the order given,
    /// one whose commit is in `into` already (reached by one before it) is not decoded, and
    /// one met on the chain of one before it is taken there. Decoded entries that entries
    /// still to be decoded are XORed against are held until the last of those is, within
    /// [`UNION_HELD_BYTES`]; past that, a base is decoded again when needed. The wanted
    /// ones are kept for later requests when they fit in the budget of kept bitmaps.
    pub(crate) fn union_into(
        &self,
        wanted: &[(usize, usize)],
        into: &mut Bits,
    ) -> Result<(), Error> {
        let held = UNION_HELD_BYTES / self.objects.div_ceil(8).max(1);
        self.union_holding(wanted, into, held.max(2))
    }

    /// [`Self::union_into`], holding at most `most_held` decoded bases at a time.
    fn union_holding(
        &self,
        wanted: &[(usize, usize)],
        into: &mut Bits,
        most_held: usize,
    ) -> Result<(), Error> {
        use std::collections::{HashMap, HashSet};
        let cached: HashMap<usize, Arc<Bits>> = {
            let decoded = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
            decoded.iter().map(|(&i, b)| (i, Arc::clone(b))).collect()
        };
        let wanted: Vec<(usize, usize)> = wanted
            .iter()
            .copied()
            .filter(|&(w, _)| w < self.entries.len())
            .collect();
        // Entries XORed against each one and not yet decoded, over every wanted one's chain
        // down to an entry stored as it is or one kept.
        let mut uses: HashMap<usize, usize> = HashMap::new();
        let mut met = HashSet::new();
        for &(w, _) in &wanted {
            let mut e = w;
            let mut steps = 0;
            while met.insert(e) && !cached.contains_key(&e) {
                let Some(b) = self.entries[e].base else { break };
                *uses.entry(b).or_default() += 1;
                e = b;
                steps += 1;
                if steps > self.entries.len() {
                    return Err(bad("an XOR chain that loops"));
                }
            }
        }
        let keep_asked = wanted.len() <= (DECODED_BYTES / self.objects.div_ceil(8).max(1)) / 2;
        let keep = |e: usize, bits: &Bits| {
            if keep_asked {
                self.keep(e, || Arc::new(bits.clone()), true);
            }
        };
        let mut pending: HashSet<usize> = wanted.iter().map(|&(w, _)| w).collect();
        // Entries decoded: the count of their base's uses taken off.
        let mut done: HashSet<usize> = HashSet::new();
        let mut held: HashMap<usize, Bits> = HashMap::new();
        let mut chain = Vec::new();
        for (w, position) in wanted {
            // Taken on the chain of one before it, or named twice.
            if !pending.remove(&w) || into.get(position) {
                continue;
            }
            if let Some(bits) = cached.get(&w).map(|b| &**b).or_else(|| held.get(&w)) {
                into.or(bits);
                continue;
            }
            // Down to an entry held, kept, or stored as it is.
            chain.clear();
            let mut next = Some(w);
            let mut acc = Bits::default();
            while let Some(e) = next {
                if e != w
                    && let Some(bits) = cached.get(&e).map(|b| &**b).or_else(|| held.get(&e))
                {
                    acc = bits.clone();
                    break;
                }
                if chain.len() > self.entries.len() {
                    return Err(bad("an XOR chain that loops"));
                }
                chain.push(e);
                next = self.entries[e].base;
            }
            for k in (0..chain.len()).rev() {
                let e = chain[k];
                self.xor_entry(e, &mut acc)?;
                if done.insert(e)
                    && let Some(b) = self.entries[e].base
                    && let Some(n) = uses.get_mut(&b)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        held.remove(&b);
                    }
                }
                // Held for entries to come besides the one above it here, decoded next.
                let above = usize::from(k > 0 && !done.contains(&chain[k - 1]));
                let later = uses.get(&e).map_or(0, |&n| n.saturating_sub(above));
                if later > 0 && held.len() < most_held && !held.contains_key(&e) {
                    held.insert(e, acc.clone());
                }
                if e != w && pending.remove(&e) {
                    into.or(&acc);
                    keep(e, &acc);
                }
            }
            into.or(&acc);
            keep(w, &acc);
        }
        Ok(())
    }

    /// Keep the decoded bitmap of entry `i`, within [`DECODED_BYTES`]: one asked for
    /// (`asked`) always, all others dropped when the budget is reached; one met on the way
    /// only while half the budget is free (so that long chains on a large pack do not drop
    /// the bitmaps asked for at every request).
    fn keep(&self, i: usize, bits: impl FnOnce() -> Arc<Bits>, asked: bool) {
        let most = (DECODED_BYTES / self.objects.div_ceil(8).max(1)).max(DECODED_LEAST);
        let mut decoded = self.decoded.lock().unwrap_or_else(|p| p.into_inner());
        if !asked && decoded.len() >= most / 2 {
            return;
        }
        if decoded.len() >= most {
            decoded.clear();
        }
        decoded.insert(i, bits());
    }
}

/// Bytes of decoded bitmaps a repository handle keeps (each is a bit per object of the
/// pack), and how many it keeps however large the pack.
const DECODED_BYTES: usize = 16 << 20;
const DECODED_LEAST: usize = 16;
/// Bytes of decoded bitmaps [`PackBitmaps::union_into`] holds while entries XORed against
/// them are still to come.
const UNION_HELD_BYTES: usize = 64 << 20;

/// Of the entries an XOR chain is decoded through, every this many is kept.
const KEEP_EVERY: usize = 4;

/// Whether the bitmap file at `path` ends with the checksum of what precedes it (a full
/// read: done where a file is written, not where it is loaded).
pub(crate) fn verify_checksum(path: &std::path::Path, hash: HashKind) -> Result<(), Error> {
    read_checked(path, hash).map(drop)
}

/// The file at `path` (a bitmap file, or a pack index: both end with a checksum of all
/// before it), read whole, if its checksum matches.
fn read_checked(path: &std::path::Path, hash: HashKind) -> Result<Vec<u8>, Error> {
    let data = std::fs::read(path)?;
    let hash_len = hash.len_in_bytes();
    if data.len() < 12 + 2 * hash_len {
        return Err(bad("too short for its checksum"));
    }
    let (body, trailer) = data.split_at(data.len() - hash_len);
    let mut hasher = gix_hash::hasher(hash);
    hasher.update(body);
    let digest = hasher.try_finalize().map_err(|e| bad(e.to_string()))?;
    if digest.as_bytes() != trailer {
        return Err(bad(format!(
            "the checksum of {} does not match",
            path.display()
        )));
    }
    Ok(data)
}

/// Where a walk finds stored bitmaps.
pub(crate) trait Known {
    fn bitmap(&self, commit: &ObjectId) -> Result<Option<Arc<Bits>>, Error>;

    /// OR into `bits` the stored bitmaps of those of `commits` that have one, taken in the
    /// order given (one whose commit `bits` holds already is passed over), all at once where
    /// that saves work (the default does nothing: the walk asks for each).
    fn or_stored(&self, _commits: &[ObjectId], _bits: &mut Bits) -> Result<(), Error> {
        Ok(())
    }
}

impl Known for Loaded {
    fn bitmap(&self, commit: &ObjectId) -> Result<Option<Arc<Bits>>, Error> {
        match crate::packs::lookup(&self.pos.index, commit) {
            Some(i) => self.bitmaps.get(i),
            None => Ok(None),
        }
    }

    fn or_stored(&self, commits: &[ObjectId], bits: &mut Bits) -> Result<(), Error> {
        let entries: Vec<(usize, usize)> = commits
            .iter()
            .filter_map(|c| {
                let i = crate::packs::lookup(&self.pos.index, c)?;
                let entry = *self.bitmaps.by_commit.get(&i)?;
                Some((entry, self.pos.rev.pack_position(&self.pos.index, i)?))
            })
            .collect();
        if entries.len() > 1 {
            self.bitmaps.union_into(&entries, bits)?;
        }
        Ok(())
    }
}

impl Known for OidMap<Arc<Bits>> {
    fn bitmap(&self, commit: &ObjectId) -> Result<Option<Arc<Bits>>, Error> {
        Ok(self.get(commit).cloned())
    }
}

/// A pack's bitmaps with its positions, as selection uses them.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) bitmaps: PackBitmaps,
    pub(crate) pos: Positions,
}

/// Name hashes as an answer reads them (see [`Loaded::names_for`]).
#[derive(Debug, Clone)]
pub(crate) enum Names {
    /// The whole table, by index position.
    Table(Arc<[u32]>),
    /// Each read from the file when asked for.
    Each(Arc<Loaded>),
}

impl Names {
    /// The name hash of the object at `index_position`.
    pub(crate) fn get(&self, index_position: u32) -> Option<u32> {
        match self {
            Names::Table(names) => names.get(index_position as usize).copied(),
            Names::Each(loaded) => loaded.bitmaps.name(index_position),
        }
    }
}

/// An answer that wants the names of at most one object in this many of the pack reads each
/// from the file (a read each) rather than the whole table (4 bytes an object: 16 MB at 4
/// million objects, read for the hundred an incremental fetch sends whole, a third of its
/// time in a process of its own).
const NAMES_READ_EACH_SHARE: usize = 1024;

impl Loaded {
    /// The name hashes for an answer that wants about `wanted` of them: the table if it was
    /// read, or if they are many, else each read when asked for; `None` if the file has none.
    pub(crate) fn names_for(self: &Arc<Self>, wanted: usize) -> Result<Option<Names>, Error> {
        let few = wanted.saturating_mul(NAMES_READ_EACH_SHARE) <= self.bitmaps.objects;
        if few && self.bitmaps.names_at.is_some() && self.bitmaps.names.get().is_none() {
            return Ok(Some(Names::Each(Arc::clone(self))));
        }
        Ok(self.bitmaps.names()?.map(Names::Table))
    }

    /// The bitmaps of a pack no longer in the repository, from its index at `index` and the
    /// `.bitmap` beside it.
    ///
    /// Both files are read whole and checked against their checksums, and the pack order
    /// is built from the index's offsets (a `.rev` is not trusted here): a wrong order would
    /// make every translated bitmap name the wrong objects.
    pub(crate) fn replaced(index: &std::path::Path, hash: HashKind) -> Option<Arc<Loaded>> {
        read_checked(index, hash).ok()?;
        let bitmap = read_checked(&index.with_extension("bitmap"), hash).ok()?;
        let index = gix_pack::index::File::at(index, hash).ok()?;
        let pack = StoredPack {
            pack: index.path().with_extension("pack"),
            index: Arc::new(index),
            tips: None,
            data: Default::default(),
            graph: None,
        };
        let bitmaps = PackBitmaps::parse_bytes(bitmap, &pack, hash).ok()?;
        let pos = Positions::new(&pack, Arc::new(RevIndex::from_offsets(&pack)));
        Some(Arc::new(Loaded { bitmaps, pos }))
    }
}

/// Bitmaps by pack file, read once per repository handle (a pack and its bitmap never
/// change; a bitmap that cannot be read counts as none) and taken by the handle that replaces
/// it (see [`BitmapCache::adopt`]), each with its file as it was before it was read.
#[derive(Debug, Default)]
pub(crate) struct BitmapCache(
    std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, BitmapEntry>>,
);

/// A pack's bitmaps (`None`: none, or unreadable) with the file as it was before it was read.
type BitmapEntry = (Option<Arc<Loaded>>, Option<crate::packs::Stamp>);

impl BitmapCache {
    pub(crate) fn get(
        &self,
        pack: &StoredPack,
        revs: &crate::packs::RevCache,
        hash: HashKind,
    ) -> Option<Arc<Loaded>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(pack.pack.clone())
            .or_insert_with(|| {
                let stamp = crate::packs::Stamp::of(&pack.pack.with_extension("bitmap"));
                let loaded = PackBitmaps::load(pack, hash).ok().flatten().map(|bitmaps| {
                    let pos = Positions::new(pack, revs.get(pack, hash));
                    Arc::new(Loaded { bitmaps, pos })
                });
                (loaded, stamp)
            })
            .0
            .clone()
    }

    /// The bitmaps read for `pack`, if they were.
    #[cfg(test)]
    pub(crate) fn held(&self, pack: &std::path::Path) -> Option<Arc<Loaded>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(pack).and_then(|(loaded, _)| loaded.clone())
    }

    /// Whether bitmaps were read for some pack, and whether name hashes were for some.
    pub(crate) fn read_any(&self) -> (bool, bool) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut loaded = map.values().filter_map(|(loaded, _)| loaded.as_ref());
        let any = loaded.clone().next().is_some();
        (any, loaded.any(|l| l.bitmaps.names.get().is_some()))
    }

    /// Take `from`'s (another handle's) bitmaps of `packs` (taken whole from it: see
    /// [`crate::packs::IndexCache::adopt`]) read with the index taken with the pack, whose
    /// file is as it was read, with what they decoded since. A pack that had none is looked
    /// at again: maintenance writes bitmaps after the pack, and removes damaged ones. Bitmaps
    /// whose positions come from a reverse index read unread are taken only by a handle that
    /// `trusts` them too.
    pub(crate) fn adopt(&self, from: &BitmapCache, packs: &[crate::packs::Adopted], trusts: bool) {
        let from = from.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut into = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (pack, index) in packs {
            if let Some((Some(loaded), stamp)) = from.get(pack)
                && (trusts || !loaded.pos.rev.is_unread())
                && Arc::ptr_eq(&loaded.pos.index, index)
                && crate::packs::Stamp::unchanged(&pack.with_extension("bitmap"), *stamp)
            {
                into.insert(pack.clone(), (Some(Arc::clone(loaded)), *stamp));
            }
        }
    }
}

/// Pack positions of a pack's objects, and back, from its index and reverse index.
pub(crate) struct Positions {
    index: Arc<gix_pack::index::File>,
    /// Index position at each pack position, and back.
    rev: Arc<RevIndex>,
    /// Pack positions by object, when made.
    map: Option<IdMap>,
}

/// Pack positions by object id. SHA-1 ids are kept as their 20 bytes: an object id takes 33
/// (room for SHA-256), which made the map 40 bytes a slot, 330 MB at 4 million objects.
enum IdMap {
    Sha1(gix_hashtable::hash_map::HashMap<Sha1Key, u32, gix_hashtable::hash::Builder>),
    Other(OidMap<u32>),
}

/// A SHA-1 id as a map key, hashed as object ids are (by its first bytes: ids are hashes).
#[derive(PartialEq, Eq)]
struct Sha1Key([u8; 20]);

impl std::hash::Hash for Sha1Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

impl IdMap {
    fn get(&self, oid: &ObjectId) -> Option<u32> {
        match self {
            IdMap::Sha1(map) => {
                let key = Sha1Key(oid.as_bytes().try_into().ok()?);
                map.get(&key).copied()
            }
            IdMap::Other(map) => map.get(oid).copied(),
        }
    }
}

impl std::fmt::Debug for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Positions")
            .field("objects", &self.len())
            .finish_non_exhaustive()
    }
}

impl Positions {
    pub(crate) fn new(pack: &StoredPack, rev: Arc<RevIndex>) -> Self {
        Positions {
            index: Arc::clone(&pack.index),
            rev,
            map: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rev.len()
    }

    /// The pack position of `oid`, if the pack holds it.
    pub(crate) fn of(&self, oid: &ObjectId) -> Option<usize> {
        if let Some(map) = &self.map {
            return map.get(oid).map(|p| p as usize);
        }
        crate::packs::lookup(&self.index, oid).and_then(|i| self.rev.pack_position(&self.index, i))
    }

    /// Look objects up in a hash map from now on (worth it for walks over the whole
    /// history, as when bitmaps are written).
    pub(crate) fn with_map(mut self) -> Self {
        let ids = (0..self.len()).map(|p| (self.oid(p), p as u32));
        let sha1 = self.index.object_hash() == gix_hash::Kind::Sha1;
        self.map = Some(match sha1 {
            true => IdMap::Sha1(
                ids.filter_map(|(id, p)| Some((Sha1Key(id.as_bytes().try_into().ok()?), p)))
                    .collect(),
            ),
            false => IdMap::Other(ids.collect()),
        });
        self
    }

    /// The pack's reverse index.
    pub(crate) fn rev(&self) -> Arc<RevIndex> {
        Arc::clone(&self.rev)
    }

    /// The object at pack position `p`.
    pub(crate) fn oid(&self, p: usize) -> ObjectId {
        self.index.oid_at_index(self.rev.at(p)).to_owned()
    }
}

/// The objects reachable from `tips` as a bitmap over `pos`, using the stored bitmaps of
/// `known` where the walk meets their commits. Objects outside the pack are kept in `beyond`
/// (as git keeps them in its bitmap's extended index): without it, `None` if the walk meets
/// one.
pub(crate) fn reach(
    objects: &mut Objects,
    pos: &Positions,
    known: &dyn Known,
    tips: &[ObjectId],
    seed: Option<&Bits>,
    beyond: Option<&mut Beyond>,
) -> Result<Option<Bits>, Error> {
    let keep = match beyond {
        Some(beyond) => Keep::Beyond(beyond),
        None => Keep::Nothing,
    };
    reach_reading(objects, None, pos, known, tips, keep, seed)
}

/// What a walk over a pack's bitmaps keeps beside the bits it sets.
enum Keep<'a> {
    /// Nothing: an object outside the pack ends the walk.
    Nothing,
    /// Each object's type and the name hash of its path (for writing bitmaps); an object
    /// outside the pack ends the walk.
    Notes(&'a mut Notes),
    /// The objects beyond the pack, by id.
    Beyond(&'a mut Beyond),
}

/// What a walk over a pack's bitmaps reached outside the pack: the objects of the packs
/// fetched since the bitmapped one (a mirror between two consolidations), found by id.
#[derive(Debug, Default)]
pub(crate) struct Beyond {
    /// Every object outside the pack reached, those it was seeded with included: a walk does
    /// not go through them again.
    seen: OidSet,
    /// Those this walk reached first, in the order met: each with its kind and the name hash
    /// of the path it was met at (0 for commits, tags and root trees), which the writer pairs
    /// objects stored whole by, as it pairs those of the pack by the names its bitmaps keep.
    pub(crate) new: Vec<Met>,
    /// Whose trees are walked among the commits beyond the pack.
    trees: BeyondTrees,
    /// Whether the paths of the objects met are hashed ([`Beyond::walk_on`]'s walk: the
    /// objects sent).
    naming: bool,
}

/// An object a walk over a pack's bitmaps met beyond the pack: its id, kind, and the name hash
/// of its path.
pub(crate) type Met = (ObjectId, gix_object::Kind, u32);

/// Whose trees a walk reads among the commits beyond the bitmapped pack.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BeyondTrees {
    /// Every commit's: what the wants reach is sent.
    #[default]
    All,
    /// The tips' own only: what the haves reach is left out of the answer, and, as git
    /// marks the client's side when it walks without bitmaps, their edge is enough. An object
    /// of an older tree of the client's that comes back later is sent again (never one
    /// missed); reading the trees of every commit since the consolidation, for a fetch whose
    /// have is a few commits old, made it ten times slower.
    OfTips,
    /// None (an answer that sends no trees or blobs, as `tree:0`'s).
    None,
}

impl Beyond {
    /// Nothing seen yet; the trees of commits beyond the pack walked as `trees` says.
    pub(crate) fn new(trees: BeyondTrees) -> Self {
        Beyond {
            trees,
            ..Beyond::default()
        }
    }

    /// Walk on from what was seen (taken as reached already, and not gone through again),
    /// the trees of commits beyond the pack walked as `trees` says, the paths of what it meets
    /// hashed; what was new so far is forgotten.
    pub(crate) fn walk_on(&mut self, trees: BeyondTrees) {
        self.trees = trees;
        self.naming = true;
        self.new.clear();
    }

    /// Every object seen but `new` (the last walk's).
    pub(crate) fn into_seen_without(mut self, new: &[Met]) -> OidSet {
        for (oid, _, _) in new {
            self.seen.remove(oid);
        }
        self.seen
    }

    /// Whether `oid` was new: then noted as met, of kind `kind` (0 commit, 1 tree, 2 blob,
    /// 3 tag, as the walks number them), at a path of hash `name`.
    fn note(&mut self, oid: &ObjectId, kind: usize, name: u32) -> bool {
        if !self.seen.insert(*oid) {
            return false;
        }
        let kind = match kind {
            0 => gix_object::Kind::Commit,
            1 => gix_object::Kind::Tree,
            2 => gix_object::Kind::Blob,
            _ => gix_object::Kind::Tag,
        };
        self.new.push((*oid, kind, name));
        true
    }
}

/// git's name hash (`pack_name_hash`) of a path, continued over `more` of it: whitespace is
/// skipped and each byte shifts the ones before it right by two, so the last sixteen or so
/// characters decide it (files named alike sort together). A path is hashed whole as
/// `name_hash(0, path)`; its child's as `name_hash(name_hash(parent, b"/"), name)`.
pub(crate) fn name_hash(mut hash: u32, more: &[u8]) -> u32 {
    for &c in more {
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        }
        hash = (hash >> 2).wrapping_add(u32::from(c) << 24);
    }
    hash
}

/// What the walks that write bitmaps note of each object the first time they reach it, by
/// pack position: its type, and the name hash of the path it was met at (0 for commits, tags
/// and root trees, as in git). An object at several paths gets the first this walk meets,
/// which need not be the one git's walk (newest commits first) meets first.
pub(crate) struct Notes {
    types: [Bits; 4],
    names: Vec<u32>,
}

impl Notes {
    fn new(n: usize) -> Self {
        Notes {
            types: std::array::from_fn(|_| Bits::with_len(n)),
            names: vec![0; n],
        }
    }

    /// Note the object at `p`, of type `kind`, met at a path of hash `name`: the first note
    /// of an object stands.
    fn note(&mut self, p: usize, kind: usize, name: u32) {
        if !self.types.iter().any(|t| t.get(p)) {
            self.types[kind].set(p);
            self.names[p] = name;
        }
    }
}

/// [`reach`], reading the pack's trees with `chains` where it can.
fn reach_reading(
    objects: &mut Objects,
    mut chains: Option<&mut crate::chains::ChainReader<'_>>,
    pos: &Positions,
    known: &dyn Known,
    tips: &[ObjectId],
    mut keep: Keep<'_>,
    seed: Option<&Bits>,
) -> Result<Option<Bits>, Error> {
    // What `seed` holds is taken as reached already, and not walked through.
    let mut bits = seed.cloned().unwrap_or_else(|| Bits::with_len(pos.len()));
    let mut commits: Vec<ObjectId> = Vec::new();
    let mut trees: Vec<ObjectId> = Vec::new();
    // Names are hashed for bitmaps written, and for the objects sent from beyond the pack.
    let naming = match &keep {
        Keep::Notes(_) => true,
        Keep::Beyond(beyond) => beyond.naming,
        Keep::Nothing => false,
    };
    let beyond_trees = match &keep {
        Keep::Beyond(beyond) => beyond.trees,
        _ => BeyondTrees::All,
    };
    // Set the bit at `p` (the object's position, `None` outside the pack: then noted in
    // `beyond`, if kept), noting its type and the hash of its path: whether it was new.
    let mut note = |bits: &mut Bits,
                    p: Option<usize>,
                    oid: &ObjectId,
                    kind: usize,
                    name: u32|
     -> Option<bool> {
        let Some(p) = p else {
            return match &mut keep {
                Keep::Beyond(beyond) => Some(beyond.note(oid, kind, name)),
                _ => None,
            };
        };
        if bits.get(p) {
            return Some(false);
        }
        bits.set(p);
        if let Keep::Notes(notes) = &mut keep {
            notes.note(p, kind, name);
        }
        Some(true)
    };
    for tip in tips {
        let (mut kind, _) = objects
            .header(tip)?
            .ok_or(Error::MissingObject { oid: *tip })?;
        // Tags: each one in the chain is reached.
        let mut current = *tip;
        let mut hops = 0;
        while kind == gix_object::Kind::Tag {
            if note(&mut bits, pos.of(&current), &current, 3, 0).is_none() {
                return Ok(None);
            }
            (current, kind) = objects.tag_target(&current)?;
            hops += 1;
            if hops > 64 {
                return Err(bad(crate::TAG_CHAIN_TOO_LONG));
            }
        }
        match kind {
            gix_object::Kind::Commit => commits.push(current),
            gix_object::Kind::Tree => trees.push(current),
            gix_object::Kind::Blob => {
                if note(&mut bits, pos.of(&current), &current, 2, 0).is_none() {
                    return Ok(None);
                }
            }
            gix_object::Kind::Tag => unreachable!("followed above"),
        }
    }
    // The tips' own stored bitmaps, decoded together in the order the walk takes them (those
    // reached already, as by `seed`, are passed over there).
    let in_walk_order: Vec<ObjectId> = commits.iter().rev().copied().collect();
    known.or_stored(&in_walk_order, &mut bits)?;
    // The tips' commits, whose trees are walked beyond the pack with `OfTips`.
    let tip_commits: OidSet = match beyond_trees {
        BeyondTrees::OfTips => in_walk_order.iter().copied().collect(),
        _ => OidSet::default(),
    };
    // Commits first, down to the nearest stored bitmaps; then the trees of the commits
    // walked, skipping whatever those bitmaps already hold (most of each tree).
    while let Some(commit) = commits.pop() {
        // Reached already (walked, or in a bitmap taken): what it reaches is in too.
        let p = pos.of(&commit);
        if p.is_some_and(|p| bits.get(p)) {
            continue;
        }
        if let Some(stored) = known.bitmap(&commit)? {
            bits.or(&stored);
            continue;
        }
        match note(&mut bits, p, &commit, 0, 0) {
            None => return Ok(None),
            Some(false) => continue,
            Some(true) => {}
        }
        let parsed = objects.commit(&commit)?;
        let walk_tree = p.is_some()
            || match beyond_trees {
                BeyondTrees::All => true,
                BeyondTrees::OfTips => tip_commits.contains(&commit),
                BeyondTrees::None => false,
            };
        if walk_tree {
            trees.push(parsed.tree);
        }
        commits.extend(parsed.parents.clone());
    }
    // Root trees in the order their commits were met, newest first, each one's subtrees
    // before the next. Stored trees are deltas against newer versions, and the object cache
    // keeps what was read, not the bases it went through: oldest first, every tree's chain
    // was resolved from its far end again (most of the time of writing bitmaps).
    // A tree is pushed with its position, the hash of its path, and that of its path and a
    // slash (to hash its entries'); one reached already is not pushed.
    // Each also with a key of its path (see [`TreesWalked`]).
    let mut stack: Vec<(ObjectId, Option<usize>, u32, u32, u64)> = Vec::new();
    // Only trees of many commits share entries.
    let mut recent = Recent {
        on: trees.len() > 1,
        slots: Vec::new(),
    };
    let mut walked = TreesWalked {
        on: trees.len() > 1,
        ..TreesWalked::default()
    };
    let mut buf = Vec::new();
    let (mut entries, mut starts) = (Vec::new(), Vec::new());
    for (root_no, root) in trees.into_iter().enumerate() {
        stack.push((root, pos.of(&root), 0, 0, WALKED_ROOT));
        while let Some((tree, p, name, prefix, key)) = stack.pop() {
            match note(&mut bits, p, &tree, 1, name) {
                None => return Ok(None),
                Some(false) => continue,
                Some(true) => {}
            }
            let read = match (chains.as_deref_mut(), p) {
                (Some(chains), Some(p)) => chains.read(p, &mut buf)?,
                _ => None,
            };
            let read = match read {
                Some(kind) => kind,
                None => {
                    let (kind, data) = objects.read(&tree)?;
                    buf.clear();
                    buf.extend_from_slice(data);
                    kind
                }
            };
            if read != gix_object::Kind::Tree {
                return Err(Error::Corrupt {
                    oid: tree,
                    reason: "expected a tree".into(),
                });
            }
            // All entries first, then their lookups one after the other (independent misses
            // in a map larger than the cache overlap; parsing between them made a walk over
            // 300 MB of history a third slower). Only those between what the tree shares
            // with the version of its path walked before, at its start and at its end.
            let hash = objects.hash();
            let kept = (walked.read_new(key, root_no, &mut buf, hash, &mut entries, &mut starts))
                .map_err(|reason| Error::Corrupt { oid: tree, reason })?;
            let buf = match kept {
                true => walked.data(key).unwrap_or_default(),
                false => &buf[..],
            };
            for (i, entry) in entries.iter().enumerate() {
                // Names are hashed for objects noted for the first time only.
                let entry_name = || match naming {
                    true => {
                        let own = &buf[starts[i]..starts[i + 1]];
                        name_hash(prefix, crate::objects::tree_entry_name(own))
                    }
                    false => 0,
                };
                match entry.kind {
                    EntryKind::Tree => {
                        let q = recent.of(pos, &entry.oid);
                        if !q.is_some_and(|q| bits.get(q)) {
                            let name = entry_name();
                            let prefix = if naming { name_hash(name, b"/") } else { 0 };
                            let own = &buf[starts[i]..starts[i + 1]];
                            let key = walked_key(key, crate::objects::tree_entry_name(own));
                            stack.push((entry.oid, q, name, prefix, key));
                        }
                    }
                    EntryKind::Blob => match recent.of(pos, &entry.oid) {
                        Some(q) => {
                            if !bits.get(q) {
                                note(&mut bits, Some(q), &entry.oid, 2, entry_name());
                            }
                        }
                        None => {
                            if note(&mut bits, None, &entry.oid, 2, entry_name()).is_none() {
                                return Ok(None);
                            }
                        }
                    },
                    EntryKind::Gitlink => {}
                }
            }
        }
    }
    Ok(Some(bits))
}

/// The last version of each directory a walk read, by a key of its path, with where its
/// entries start. A tree read later (an older version of that directory, met in an older
/// commit) shares most of its bytes with it at its start and at its end: the entries there
/// are byte for byte entries of the version before, reached already, and are neither read
/// again nor looked up (a fetch of 50 commits each changing one file of a directory of 1,000
/// looked up 50,000 entries to find 50 new ones). Only versions whose whole walk is over
/// are compared with (read for an earlier root tree: each root's walk ends before the next
/// begins), so that everything they hold is reached; the key only finds a likely one.
#[derive(Default)]
struct TreesWalked {
    /// Whether trees are kept (a walk from one root tree never compares with them).
    on: bool,
    by_path: std::collections::HashMap<u64, WalkedTree>,
    /// What the trees kept hold: their buffers and their entries' starts.
    bytes: usize,
}

struct WalkedTree {
    /// The root tree whose walk read it.
    root: usize,
    data: Vec<u8>,
    /// Where each entry starts, then the data's length.
    starts: Vec<u32>,
}

impl WalkedTree {
    /// The memory it holds.
    fn held(&self) -> usize {
        self.data.capacity() + 4 * self.starts.capacity()
    }
}

/// The bytes of trees [`TreesWalked`] keeps at most.
const WALKED_BYTES: usize = 4 << 20;

/// Bytes compared at a time by [`same_start`] and [`same_end`] (as slices, with `memcmp`).
const SAME_CHUNK: usize = 64;

/// How many bytes `a` and `b` share at their start.
fn same_start(a: &[u8], b: &[u8]) -> usize {
    let most = a.len().min(b.len());
    let mut at = 0;
    while at + SAME_CHUNK <= most && a[at..at + SAME_CHUNK] == b[at..at + SAME_CHUNK] {
        at += SAME_CHUNK;
    }
    at + (a[at..most].iter().zip(&b[at..most]))
        .take_while(|(x, y)| x == y)
        .count()
}

/// How many bytes `a` and `b` share at their end, at most `most`.
fn same_end(a: &[u8], b: &[u8], most: usize) -> usize {
    let (a, b) = (&a[a.len() - most..], &b[b.len() - most..]);
    let mut at = 0;
    while at + SAME_CHUNK <= most
        && a[most - at - SAME_CHUNK..most - at] == b[most - at - SAME_CHUNK..most - at]
    {
        at += SAME_CHUNK;
    }
    let (a, b) = (&a[..most - at], &b[..most - at]);
    at + (a.iter().rev().zip(b.iter().rev()))
        .take_while(|(x, y)| x == y)
        .count()
}

/// The key of the root's path.
const WALKED_ROOT: u64 = 0x2545_f491_4f6c_dd1d;

/// The key of the path of entry `name` of the tree at the path keyed `parent`.
fn walked_key(parent: u64, name: &[u8]) -> u64 {
    name.iter().fold(parent.rotate_left(17) ^ 0x2f, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What a tree shares with the version of its path walked before: its first `k` entries
/// (which end by `from`, where reading starts), and the entries from where it is the same
/// to its end.
struct Shared<'a> {
    from: usize,
    k: usize,
    /// The version before, and how long the same end of both is.
    before: Option<(&'a WalkedTree, usize)>,
}

impl Shared<'_> {
    /// When the tree's entry at `at` is the start of an end both share: that entry's index
    /// in the version before (every entry from there on is the same, at the same distance
    /// from the end).
    fn same_from(&self, at: usize, len: usize) -> Option<usize> {
        let (before, suffix) = self.before?;
        if at < len - suffix {
            return None;
        }
        let there = u32::try_from((at + before.data.len()).checked_sub(len)?).ok()?;
        // Its last start is the data's length: not an entry.
        let starts = &before.starts[..before.starts.len() - 1];
        starts.binary_search(&there).ok()
    }
}

impl TreesWalked {
    /// The entries of `data`, a tree at the path keyed `key` read for root tree `root`, that
    /// it does not share with the version of its path walked before, into `entries`, with
    /// where each starts in `starts` and then where the last ends; `data` is then kept for
    /// its path (taken, an empty buffer left), unless too much is: whether it was.
    fn read_new(
        &mut self,
        key: u64,
        root: usize,
        data: &mut Vec<u8>,
        hash: gix_hash::Kind,
        entries: &mut Vec<crate::objects::TreeEntry>,
        starts: &mut Vec<usize>,
    ) -> Result<bool, String> {
        entries.clear();
        starts.clear();
        let shared = self.shared(key, root, data);
        let mut at = shared.from;
        let mut rest = None;
        while at < data.len() {
            if let Some(j) = shared.same_from(at, data.len()) {
                rest = Some(j);
                break;
            }
            let (entry, next) = crate::objects::tree_entry(data, at, hash)?;
            entries.push(entry);
            starts.push(at);
            at = next;
        }
        starts.push(at);
        let k = shared.k;
        Ok(self.keep(key, root, data, starts, k, rest))
    }

    /// What `data`, a tree at the path keyed `key` read for root tree `root`, shares with the
    /// version kept for that path.
    fn shared(&self, key: u64, root: usize, data: &[u8]) -> Shared<'_> {
        let none = Shared {
            from: 0,
            k: 0,
            before: None,
        };
        let Some(before) = self.by_path.get(&key).filter(|b| b.root < root) else {
            return none;
        };
        let most = data.len().min(before.data.len());
        let prefix = same_start(data, &before.data);
        let suffix = same_end(data, &before.data, most - prefix);
        // Entries of the version before that end within the shared start.
        let k = before.starts[1..].partition_point(|&end| end as usize <= prefix);
        Shared {
            from: before.starts[k] as usize,
            k,
            before: Some((before, suffix)),
        }
    }

    /// Keep the tree just read (`data`, taken; an empty buffer left) for its path, its
    /// entries' starts made of the first `k` of the version before, `read` (the starts of
    /// the entries read, then where reading stopped) and, from the version before's entry
    /// `rest`, that version's (the same end). Not kept past [`WALKED_BYTES`]: whether it was.
    fn keep(
        &mut self,
        key: u64,
        root: usize,
        data: &mut Vec<u8>,
        read: &[usize],
        k: usize,
        rest: Option<usize>,
    ) -> bool {
        if !self.on {
            return false;
        }
        let old = self.by_path.get(&key);
        let freed = old.map_or(0, WalkedTree::held);
        // Counted as held: the buffer without what it has room for beyond its bytes (taken
        // as it is, a small tree read into the buffer of a large one would hold its room),
        // and the starts, with room for one more than read.
        let held = data.len() + 4 * (read.len() + k + 1);
        if self.bytes - freed + held > WALKED_BYTES {
            return false;
        }
        let Ok(len) = u32::try_from(data.len()) else {
            return false;
        };
        let mut starts = Vec::with_capacity(read.len() + k + 1);
        if let Some(old) = old {
            starts.extend_from_slice(&old.starts[..k]);
        }
        starts.extend(read[..read.len() - 1].iter().map(|&at| at as u32));
        if let (Some(old), Some(j)) = (old, rest) {
            // The same end, at the same distance from the end of each.
            let old_len = old.data.len() as u32;
            let ends = &old.starts[j..old.starts.len() - 1];
            starts.extend(ends.iter().map(|&at| at + len - old_len));
        }
        starts.push(len);
        let mut data = std::mem::take(data);
        data.shrink_to_fit();
        let tree = WalkedTree { root, data, starts };
        self.bytes = self.bytes - freed + tree.held();
        self.by_path.insert(key, tree);
        true
    }

    /// The bytes kept for `key`.
    fn data(&self, key: u64) -> Option<&[u8]> {
        self.by_path.get(&key).map(|t| &t.data[..])
    }
}

/// Positions of objects looked up lately, in a small table by id (each id has one slot; a
/// newer id takes it): the trees of successive commits share most of their entries, and a
/// walk through the trees of many commits not covered by a stored bitmap looked each entry up
/// in the index again (a sixth of a negotiated fetch of 5,000 commits). Ids that share a slot
/// only cost the lookups there would have been without it.
struct Recent {
    /// Whether the table is used (a walk of one commit's tree meets each id once).
    on: bool,
    slots: Vec<(ObjectId, u32)>,
}

/// Slots of [`Recent`] (a power of two).
const RECENT_SLOTS: usize = 1 << 14;

/// A [`Recent`] slot's position for an id the pack does not hold (`u32::MAX`: an empty
/// slot).
const NOT_IN_PACK: u32 = u32::MAX - 1;

impl Recent {
    /// [`Positions::of`], from the table when `oid` is there.
    fn of(&mut self, pos: &Positions, oid: &ObjectId) -> Option<usize> {
        if !self.on || pos.map.is_some() {
            return pos.of(oid);
        }
        if self.slots.is_empty() {
            self.slots = vec![(ObjectId::null(oid.kind()), u32::MAX); RECENT_SLOTS];
        }
        let bytes = oid.as_bytes();
        let slot = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
            & (RECENT_SLOTS - 1);
        let (id, p) = &mut self.slots[slot];
        if *p != u32::MAX && id == oid {
            return (*p != NOT_IN_PACK).then_some(*p as usize);
        }
        // Ids not in the pack are kept too: those of the packs fetched since the bitmapped
        // one recur in the trees of every commit since, and a lookup that misses costs the
        // most (a quarter of a `blob:none` answer on a mirror 2,000 commits past its
        // consolidation).
        let found = pos.of(oid);
        match found {
            None => (*id, *p) = (*oid, NOT_IN_PACK),
            Some(at) => {
                if let Some(at) = u32::try_from(at).ok().filter(|&at| at < NOT_IN_PACK) {
                    (*id, *p) = (*oid, at);
                }
            }
        }
        found
    }
}

/// The bitmaps of another pack (the one a consolidation replaces), read in the positions of
/// the pack bitmaps are being written for: a walk that meets one of its commits takes that
/// commit's bitmap, translated, instead of walking on, as git reuses the bitmaps of the pack
/// a repack replaces. A bitmap that names an object the new pack lacks is not used.
pub(crate) struct Reused {
    old: Arc<Loaded>,
    /// The new pack position of each old pack position (`u32::MAX`: not in the new pack).
    to_new: Vec<u32>,
    /// The commits whose bitmaps were taken (translated again if met again: each is met
    /// about once, and keeping them would hold a second copy of the selected ones).
    used: std::sync::Mutex<OidSet>,
}

impl std::fmt::Debug for Reused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reused")
            .field("objects", &self.to_new.len())
            .finish_non_exhaustive()
    }
}

impl Reused {
    pub(crate) fn new(old: Arc<Loaded>, new: &Positions) -> Self {
        let to_new = (0..old.pos.len())
            .map(|p| new.of(&old.pos.oid(p)).map_or(u32::MAX, |q| q as u32))
            .collect();
        Reused {
            old,
            to_new,
            used: Default::default(),
        }
    }

    /// `bits` (old positions) in the new positions: every object must be in the new pack
    /// (`strict`), or those that are not are left out.
    fn translate(&self, bits: &Bits, n: usize, strict: bool) -> Option<Bits> {
        let mut out = Bits::with_len(n);
        for p in bits.ones() {
            match self.to_new.get(p) {
                Some(&q) if q != u32::MAX => out.set(q as usize),
                _ if strict => return None,
                _ => {}
            }
        }
        Some(out)
    }

    /// Note the type of every object of the old pack that the new one holds, and its name
    /// hash if the old file has them.
    fn note_types(&self, notes: &mut Notes, n: usize) {
        let old = &self.old.bitmaps;
        for (into, from) in
            notes
                .types
                .iter_mut()
                .zip([&old.commits, &old.trees, &old.blobs, &old.tags])
        {
            if let Some(bits) = self.translate(from, n, false) {
                into.or(&bits);
            }
        }
        if let Ok(Some(names)) = old.names() {
            for (p, &q) in self.to_new.iter().enumerate() {
                if let Some(name) = notes.names.get_mut(q as usize) {
                    *name = names[self.old.pos.rev.at(p) as usize];
                }
            }
        }
    }

    /// How many of the old bitmaps were taken.
    fn used(&self) -> usize {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn bitmap(&self, commit: &ObjectId, n: usize) -> Result<Option<Arc<Bits>>, Error> {
        // An old bitmap that cannot be decoded is not used.
        let Ok(Some(old)) = self.old.bitmap(commit) else {
            return Ok(None);
        };
        let Some(new) = self.translate(&old, n, true) else {
            return Ok(None);
        };
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*commit);
        Ok(Some(Arc::new(new)))
    }
}

/// The bitmaps made so far (EWAH-compressed: kept whole, a pack of 4 million objects took
/// half a megabyte a bitmap, 6 GB for its 12,000), then those of the pack replaced.
struct MadeOrReused<'a> {
    made: &'a MadeBitmaps,
    reused: Option<&'a Reused>,
    objects: usize,
}

impl Known for MadeOrReused<'_> {
    fn bitmap(&self, commit: &ObjectId) -> Result<Option<Arc<Bits>>, Error> {
        if let Some(bits) = self.made.get(commit)? {
            return Ok(Some(bits));
        }
        match self.reused {
            Some(reused) => reused.bitmap(commit, self.objects),
            None => Ok(None),
        }
    }
}

/// A made bitmap is kept XORed with the one made just before it (neighbours in the walk reach
/// nearly the same objects) when that is smaller, in chains of at most this many.
const MADE_XOR_DEPTH: usize = 16;
/// Made bitmaps kept decoded, the last asked for: a walk most often stops at one made just
/// before it.
const MADE_DECODED: usize = 32;

/// One made bitmap, compressed: whole, or XORed with an earlier one.
enum MadeEntry {
    Whole(Vec<u8>),
    Xor { base: ObjectId, data: Vec<u8> },
}

/// The bitmaps made so far, by commit: each walk stops where it meets one. Kept whole they
/// took 1.4 GB at 500,000 commits (a bitmap of an old commit is spread over the whole pack);
/// XORed with the one made before, a few times less.
struct MadeBitmaps {
    objects: usize,
    by_commit: OidMap<MadeEntry>,
    /// The last made, decoded, and its chain's depth.
    last: Option<(ObjectId, usize, Bits)>,
    decoded: std::cell::RefCell<std::collections::VecDeque<(ObjectId, Arc<Bits>)>>,
}

impl MadeBitmaps {
    fn new(objects: usize) -> Self {
        MadeBitmaps {
            objects,
            by_commit: OidMap::default(),
            last: None,
            decoded: Default::default(),
        }
    }

    /// Keep `bits`, the bitmap of `commit`, whose whole encoding is `whole`.
    fn insert(&mut self, commit: ObjectId, bits: Bits, whole: Vec<u8>) {
        let (entry, depth) = match &self.last {
            Some((base, depth, last)) if *depth < MADE_XOR_DEPTH => {
                let mut xored = bits.clone();
                xored.xor(last);
                let mut data = Vec::new();
                ewah_encode(&xored, self.objects, &mut data);
                if data.len() < whole.len() {
                    let depth = depth + 1;
                    let base = *base;
                    (MadeEntry::Xor { base, data }, depth)
                } else {
                    (MadeEntry::Whole(whole), 0)
                }
            }
            _ => (MadeEntry::Whole(whole), 0),
        };
        self.by_commit.insert(commit, entry);
        self.last = Some((commit, depth, bits));
    }

    /// The bitmap of `commit`, if one was made.
    fn get(&self, commit: &ObjectId) -> Result<Option<Arc<Bits>>, Error> {
        // Most commits a walk meets have none.
        if !self.by_commit.contains_key(commit) {
            return Ok(None);
        }
        if let Some((last, _, bits)) = &self.last
            && last == commit
        {
            return Ok(Some(Arc::new(bits.clone())));
        }
        if let Some((_, bits)) = self.decoded.borrow().iter().find(|(c, _)| c == commit) {
            return Ok(Some(Arc::clone(bits)));
        }
        // Down the chain to a whole one (or one decoded already), then XORed back up.
        let mut chain = Vec::new();
        let mut at = *commit;
        let mut bits = loop {
            match self.by_commit.get(&at) {
                None if chain.is_empty() => return Ok(None),
                None => return Err(bad("a made bitmap's base is missing")),
                Some(MadeEntry::Whole(data)) => break ewah_decode(data, self.objects)?.0,
                Some(MadeEntry::Xor { base, data, .. }) => {
                    chain.push(data);
                    let cached = self
                        .decoded
                        .borrow()
                        .iter()
                        .find(|(c, _)| c == base)
                        .map(|(_, b)| Arc::clone(b));
                    if let Some(bits) = cached {
                        break (*bits).clone();
                    }
                    at = *base;
                }
            }
        };
        for data in chain.into_iter().rev() {
            bits.xor(&ewah_decode(data, self.objects)?.0);
        }
        let bits = Arc::new(bits);
        let mut decoded = self.decoded.borrow_mut();
        if decoded.len() == MADE_DECODED {
            decoded.pop_front();
        }
        decoded.push_back((*commit, Arc::clone(&bits)));
        Ok(Some(bits))
    }
}

/// The newest commits that all get a bitmap: fetches mostly want and have these.
const BITMAP_ALL_NEWEST: usize = 100;
/// Up to this many commits from the newest, one bitmap in every [`BITMAP_GAP_NEAR`] or so.
const BITMAP_NEAR: usize = 20_000;
/// The gap between two bitmaps in the near history, and the least gap past it.
const BITMAP_GAP_NEAR: usize = 100;
/// The widest gap, in the oldest history: a walk from an old commit meets a bitmap within
/// about this many commits.
const BITMAP_GAP_FAR: usize = 5_000;

/// While bitmaps are written, one is also made (and not written) for every this many commits
/// of the walk that makes them, so that no walk goes much further than this.
const BITMAP_WALK_STEP: usize = 100;

/// Tips that get a bitmap, the newest first (a repository with many more refs than this
/// has most of them on old commits, where the gaps' bitmaps serve).
const MAX_TIP_BITMAPS: usize = 2_000;

/// The newest tips whose first-parent lines get bitmaps of their own: one in every
/// [`DENSE_STEP`] of their last [`DENSE_LINE`] commits, and one in every [`LINE_STEP`] of
/// their last [`LINE`]. A fetch's haves lie there, and a have's walk goes down the lines of
/// the branches merged below it: without these, a negotiation at 500,000 commits planned in
/// 124–137 ms instead of 73–80.
const DENSE_TIPS: usize = 100;
const DENSE_LINE: usize = 100;
const DENSE_STEP: usize = 10;
const LINE: usize = 2_000;
const LINE_STEP: usize = 100;

/// A commit of the walk that writes bitmaps, as [`choose_commits`] needs it.
#[derive(Debug, Clone, Copy)]
struct Walked {
    /// Committer time.
    time: i64,
    merge: bool,
    /// Its first parent's place in the walk.
    first_parent: Option<usize>,
}

/// How many commits, newest first, to pass over after the `i`th before the next bitmap:
/// none among the newest [`BITMAP_ALL_NEWEST`], then a gap growing to [`BITMAP_GAP_NEAR`]
/// up to [`BITMAP_NEAR`], then one growing with the distance from there (so doubling the
/// position of each bitmap) up to [`BITMAP_GAP_FAR`]. These are git's figures
/// (`pack-bitmap-write.c`), which keep the number of bitmaps to a few hundred at any
/// history length.
fn gap_after(i: usize) -> usize {
    if i <= BITMAP_ALL_NEWEST {
        0
    } else if i <= BITMAP_NEAR {
        (i - BITMAP_ALL_NEWEST).min(BITMAP_GAP_NEAR)
    } else {
        (i - BITMAP_NEAR).clamp(BITMAP_GAP_NEAR, BITMAP_GAP_FAR)
    }
}

/// Which of `commits` (the closure of the tips, parents first; `walked` tells of each one)
/// get a bitmap. Taken newest first (by time, then the later in `commits`): every commit
/// among the newest, then one in each gap of [`gap_after`] (a tip in it if there is one, the
/// newest such, else its oldest merge, as a walk from below it would otherwise go down both
/// sides, else its oldest commit); every tip (up to [`MAX_TIP_BITMAPS`], newest first); and
/// along the newest [`DENSE_TIPS`] tips' first-parent lines, one in [`DENSE_STEP`] of their
/// last [`DENSE_LINE`] commits and one in [`LINE_STEP`] of their last [`LINE`]. All of them
/// when there are no more than [`BITMAP_ALL_NEWEST`].
fn choose_commits(commits: &[ObjectId], walked: &[Walked], tips: &OidSet) -> Vec<bool> {
    let mut chosen = vec![false; commits.len()];
    if commits.len() <= BITMAP_ALL_NEWEST {
        chosen.fill(true);
        return chosen;
    }
    let mut newest_first: Vec<usize> = (0..commits.len()).collect();
    newest_first.sort_unstable_by(|&a, &b| walked[b].time.cmp(&walked[a].time).then(b.cmp(&a)));
    let mut i = 0;
    loop {
        let gap = gap_after(i);
        if i + gap >= newest_first.len() {
            break;
        }
        let window = &newest_first[i..=i + gap];
        let pick = window
            .iter()
            .find(|&&c| tips.contains(&commits[c]))
            .or_else(|| window.iter().rev().find(|&&c| walked[c].merge))
            .unwrap_or(&window[gap]);
        chosen[*pick] = true;
        i += gap + 1;
    }
    // And the tips: fetches want them, and a tip's own commits (a branch not merged) would
    // be walked, trees and all, for every fetch wanting it. The newest tips' first-parent
    // lines, where incremental fetches have, get one in ten of their last hundred commits
    // and one in a hundred of their last 2,000 (a line stops where it meets one taken
    // already).
    let mut on_lines = vec![false; commits.len()];
    let newest_tips = newest_first.iter().filter(|&&c| tips.contains(&commits[c]));
    for (n, &tip) in newest_tips.take(MAX_TIP_BITMAPS).enumerate() {
        chosen[tip] = true;
        if n >= DENSE_TIPS {
            continue;
        }
        let mut at = Some(tip);
        for distance in 0..LINE {
            let Some(c) = at.filter(|&c| !on_lines[c]) else {
                break;
            };
            on_lines[c] = true;
            if distance % LINE_STEP == 0 || (distance < DENSE_LINE && distance % DENSE_STEP == 0) {
                chosen[c] = true;
            }
            at = walked[c].first_parent;
        }
    }
    chosen
}

/// Write bitmaps for `pack`, the closure of `tips`: the type bitmaps, and one bitmap for
/// each commit [`choose_commits`] picks. Written
/// beside the pack atomically; `None` if the pack is not closed under reachability. With
/// `reuse` (the bitmaps of the pack this one replaces), walks stop at its commits.
pub(crate) fn write(
    objects: &mut Objects,
    pack: &StoredPack,
    rev: Arc<RevIndex>,
    hash: HashKind,
    tips: &[ObjectId],
    reuse: Option<Arc<Loaded>>,
) -> Result<Option<crate::BitmapsWritten>, Error> {
    let mut chains = crate::chains::ChainReader::new(pack, &rev, hash, HISTORY_CACHE_BYTES);
    let pos = Positions::new(pack, Arc::clone(&rev)).with_map();
    let n = pos.len();
    let reused = reuse.map(|old| Reused::new(old, &pos));

    // Every commit the tips reach, parents first: bitmaps are made in this order, so that
    // each walk stops at the bitmaps made before it.
    let mut order: Vec<ObjectId> = Vec::new();
    let mut seen = OidSet::default();
    let mut tip_commits = Vec::new();
    for tip in tips {
        if let Some(commit) = objects.peel_to_commit(tip)? {
            tip_commits.push(commit);
        }
    }
    // Post-order walk: a commit after all its parents.
    let mut stack: Vec<(ObjectId, bool)> = tip_commits.iter().map(|c| (*c, false)).collect();
    while let Some((commit, expanded)) = stack.pop() {
        if expanded {
            order.push(commit);
            continue;
        }
        if !seen.insert(commit) {
            continue;
        }
        if pos.of(&commit).is_none() {
            return Ok(None);
        }
        stack.push((commit, true));
        let parents = objects.commit(&commit)?.parents.clone();
        stack.extend(
            parents
                .into_iter()
                .filter(|p| !seen.contains(p))
                .map(|p| (p, false)),
        );
    }
    // Which of them get a bitmap: recent history densely, older history ever more sparsely.
    let place: OidMap<usize> = order.iter().enumerate().map(|(i, c)| (*c, i)).collect();
    let mut walked = Vec::with_capacity(order.len());
    for commit in &order {
        let commit = objects.commit(commit)?;
        walked.push(Walked {
            time: commit.time,
            merge: commit.parents.len() > 1,
            first_parent: commit.parents.first().and_then(|p| place.get(p).copied()),
        });
    }
    drop(place);
    let tip_set: OidSet = tip_commits.iter().copied().collect();
    let picked = choose_commits(&order, &walked, &tip_set);
    let selected: Vec<ObjectId> = order
        .iter()
        .enumerate()
        .filter(|(i, _)| picked[*i])
        .map(|(_, c)| *c)
        .collect();
    // Made, and kept while writing only: those and every hundredth commit of the walk.
    // Without these, each branch forking from a long stretch of history without bitmaps
    // walked the whole stretch's trees again (twice the time at 300 MB).
    let made: Vec<ObjectId> = order
        .iter()
        .enumerate()
        .filter(|(i, _)| picked[*i] || (i + 1).is_multiple_of(BITMAP_WALK_STEP))
        .map(|(_, c)| *c)
        .collect();

    let mut notes = Notes::new(n);
    // Objects reached through a reused bitmap are not walked: their types come from the
    // replaced pack's type bitmaps, their names from its hash cache.
    if let Some(reused) = &reused {
        reused.note_types(&mut notes, n);
    }
    // Each selected bitmap is written (into `entries`) as soon as it is made: stored as it is
    // or XORed with one of the ten before it, whichever is smallest (neighbouring commits
    // reach nearly the same objects), as git does. Per entry: its commit's index position,
    // where it starts in `entries`, its XOR base.
    let is_selected: OidSet = selected.iter().copied().collect();
    let mut entries = Vec::new();
    let mut rows: Vec<(u32, u64, Option<usize>)> = Vec::with_capacity(selected.len());
    // The last entries, newest last: the XOR candidates.
    let mut window: std::collections::VecDeque<Bits> =
        std::collections::VecDeque::with_capacity(MAX_XOR_OFFSET + 1);
    let mut known = MadeBitmaps::new(n);
    for commit in &made {
        let both = MadeOrReused {
            made: &known,
            reused: reused.as_ref(),
            objects: n,
        };
        let Some(bits) = reach_reading(
            objects,
            chains.as_mut(),
            &pos,
            &both,
            &[*commit],
            Keep::Notes(&mut notes),
            None,
        )?
        else {
            return Ok(None);
        };
        let mut encoded = Vec::new();
        ewah_encode(&bits, n, &mut encoded);
        if is_selected.contains(commit) {
            let index = pack
                .index
                .lookup(commit)
                .ok_or_else(|| bad("a selected commit outside the pack"))?;
            let i = rows.len();
            let mut best: (u8, std::borrow::Cow<'_, [u8]>) = (0, encoded.as_slice().into());
            for back in 1..=MAX_XOR_OFFSET.min(i) {
                let mut xored = bits.clone();
                xored.xor(&window[window.len() - back]);
                let mut candidate = Vec::new();
                ewah_encode(&xored, n, &mut candidate);
                if candidate.len() < best.1.len() {
                    best = (back as u8, candidate.into());
                }
            }
            rows.push((
                index,
                entries.len() as u64,
                (best.0 > 0).then(|| i - best.0 as usize),
            ));
            entries.extend_from_slice(&index.to_be_bytes());
            entries.push(best.0); // XOR base: this many entries back, or none
            entries.push(0); // no flags
            entries.extend_from_slice(&best.1);
            if window.len() == MAX_XOR_OFFSET {
                window.pop_front();
            }
            window.push_back(bits.clone());
        }
        known.insert(*commit, bits, encoded);
    }
    drop(window);
    // Objects no selected commit reaches (tags, trees and blobs named by refs).
    let both = MadeOrReused {
        made: &known,
        reused: reused.as_ref(),
        objects: n,
    };
    let Some(all) = reach_reading(
        objects,
        chains.as_mut(),
        &pos,
        &both,
        tips,
        Keep::Notes(&mut notes),
        None,
    )?
    else {
        return Ok(None);
    };
    drop(known);
    debug_assert_eq!(
        rows.len(),
        selected.len(),
        "every selected commit has its entry"
    );
    // Types seen only through stored bitmaps were noted when those were made.
    if all.count() != n {
        // Not the closure of the tips: no bitmap (git's rule too).
        return Ok(None);
    }

    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    let options = OPT_FULL_DAG | OPT_LOOKUP_TABLE | OPT_HASH_CACHE;
    out.extend_from_slice(&options.to_be_bytes());
    out.extend_from_slice(&(selected.len() as u32).to_be_bytes());
    out.extend_from_slice(pack.index.pack_checksum().as_bytes());
    for bits in &notes.types {
        ewah_encode(bits, n, &mut out);
    }
    let entries_at = out.len() as u64;
    out.reserve(entries.len() + rows.len() * 16 + n * 4 + 64);
    out.extend_from_slice(&entries);
    drop(entries);
    // The lookup table: rows by commit index position, XOR bases named by row.
    let mut by_position: Vec<usize> = (0..rows.len()).collect();
    by_position.sort_by_key(|&i| rows[i].0);
    let mut row_of = vec![0u32; rows.len()];
    for (row, &i) in by_position.iter().enumerate() {
        row_of[i] = row as u32;
    }
    for &i in &by_position {
        let (index, offset, base) = rows[i];
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&(entries_at + offset).to_be_bytes());
        out.extend_from_slice(&base.map_or(NO_ROW, |b| row_of[b]).to_be_bytes());
    }
    // The name hashes, in index order.
    let mut names = vec![0u32; n];
    for (p, &name) in notes.names.iter().enumerate() {
        names[rev.at(p) as usize] = name;
    }
    for name in names {
        out.extend_from_slice(&name.to_be_bytes());
    }
    let mut hasher = gix_hash::hasher(hash);
    hasher.update(&out);
    let digest = hasher.try_finalize().map_err(|e| bad(e.to_string()))?;
    out.extend_from_slice(digest.as_bytes());

    let path = pack.pack.with_extension("bitmap");
    crate::packs::write_beside_pack(&path, &out)?;
    let reused = reused.map_or(0, |r| r.used());
    Ok(Some(crate::BitmapsWritten { path, reused }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tree's bytes: entries of (mode, name, id's byte).
    fn tree_of(entries: &[(&str, &str, u8)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (mode, name, id) in entries {
            out.extend_from_slice(format!("{mode} {name}\0").as_bytes());
            out.extend_from_slice(&[*id; 20]);
        }
        out
    }

    /// The ids `read_new` reads of `data`, and where it says each starts.
    fn read(
        walked: &mut TreesWalked,
        key: u64,
        root: usize,
        data: &[u8],
    ) -> (Vec<ObjectId>, Vec<usize>) {
        let (mut entries, mut starts) = (Vec::new(), Vec::new());
        let mut buf = data.to_vec();
        let hash = gix_hash::Kind::Sha1;
        let kept = walked.read_new(key, root, &mut buf, hash, &mut entries, &mut starts);
        assert!(kept.unwrap());
        // Kept as it was.
        assert_eq!(walked.data(key).unwrap(), data);
        (entries.into_iter().map(|e| e.oid).collect(), starts)
    }

    fn id(byte: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[byte; 20])
    }

    /// Trees walked kept, as for a walk from more than one root tree.
    fn walking() -> TreesWalked {
        TreesWalked {
            on: true,
            ..TreesWalked::default()
        }
    }

    /// Entries a tree shares with the version of its path walked for an earlier root, at its
    /// start and at its end, are not read; the rest are, whatever moved around them; every
    /// start kept is an entry's (the version after is compared with them).
    #[test]
    fn only_what_a_tree_does_not_share_with_its_version_before_is_read() {
        let names: Vec<String> = (0..40).map(|i| format!("file{i:02}")).collect();
        let version = |changed: &[(usize, u8)], extra: Option<(usize, &str)>| {
            let mut entries: Vec<(&str, &str, u8)> = (names.iter().enumerate())
                .map(|(i, n)| ("100644", n.as_str(), i as u8))
                .collect();
            for &(i, byte) in changed {
                entries[i].2 = byte;
            }
            if let Some((at, name)) = extra {
                entries.insert(at, ("40000", name, 0xee));
            }
            tree_of(&entries)
        };
        let mut walked = walking();
        let first = version(&[], None);
        let (ids, _) = read(&mut walked, 7, 0, &first);
        assert_eq!(ids.len(), 40, "nothing walked before: all read");
        // One entry changed in the middle: only it.
        let second = version(&[(20, 0xaa)], None);
        let (ids, starts) = read(&mut walked, 7, 1, &second);
        assert_eq!(ids, vec![id(0xaa)]);
        assert_eq!(&second[starts[0]..starts[0] + 13], b"100644 file20");
        // An entry more (the tree grows): only it, the entries after it moved.
        let third = version(&[(20, 0xaa)], Some((5, "dir")));
        let (ids, _) = read(&mut walked, 7, 2, &third);
        assert_eq!(ids, vec![id(0xee)]);
        // Two changes far apart: the entries between them are read too.
        let fourth = version(&[(1, 0xb1), (38, 0xb2)], Some((5, "dir")));
        let (ids, _) = read(&mut walked, 7, 3, &fourth);
        assert_eq!(ids.first(), Some(&id(0xb1)));
        assert_eq!(ids.last(), Some(&id(0xb2)));
        assert_eq!(ids.len(), 39, "entries 1 to 38 and the directory");
        // The starts kept for it are every entry's: the next version, the same but for its
        // last entry, reads that one alone.
        let fifth = version(&[(1, 0xb1), (39, 0xb3), (38, 0xb2)], Some((5, "dir")));
        let (ids, _) = read(&mut walked, 7, 4, &fifth);
        assert_eq!(ids, vec![id(0xb3)]);
        // Read again for the same root (its walk not over): compared with nothing.
        let (ids, _) = read(&mut walked, 7, 4, &second);
        assert_eq!(ids.len(), 40);
        // Another path: compared with nothing.
        let (ids, _) = read(&mut walked, 8, 5, &second);
        assert_eq!(ids.len(), 40);
    }

    /// The same bytes at the end of both trees that are not an entry of the version before
    /// (there, the end of a name and its id) are read: only whole entries are passed over.
    #[test]
    fn bytes_shared_at_the_end_that_are_no_entry_before_are_read() {
        let mut walked = walking();
        // One entry whose name ends the way the next version's second entry begins.
        let before = tree_of(&[("100644", "zz100644 b", 0x22)]);
        let (ids, _) = read(&mut walked, 1, 0, &before);
        assert_eq!(ids, vec![id(0x22)]);
        let after = tree_of(&[("100644", "a", 0x11), ("100644", "b", 0x22)]);
        let (ids, _) = read(&mut walked, 1, 1, &after);
        assert_eq!(ids, vec![id(0x11), id(0x22)]);
    }

    /// Trees past [`WALKED_BYTES`] are read whole and not kept; a path kept already is kept
    /// in its new version.
    #[test]
    fn trees_walked_are_kept_up_to_a_bound() {
        let mut walked = walking();
        // Entries of 37 bytes, a little over half the bound.
        let entries = WALKED_BYTES / 2 / 37 + 10;
        let names: Vec<String> = (0..entries).map(|i| format!("{i:09}")).collect();
        let big = tree_of(
            &(names.iter())
                .map(|n| ("100644", n.as_str(), 1))
                .collect::<Vec<_>>(),
        );
        assert!(big.len() > WALKED_BYTES / 2);
        read(&mut walked, 1, 0, &big);
        let (mut entries_read, mut starts) = (Vec::new(), Vec::new());
        let mut buf = big.clone();
        let hash = gix_hash::Kind::Sha1;
        let kept = walked.read_new(2, 0, &mut buf, hash, &mut entries_read, &mut starts);
        assert!(!kept.unwrap());
        assert_eq!(walked.data(2), None, "over the bound: not kept");
        assert_eq!(entries_read.len(), entries);
        assert_eq!(buf, big, "left to the caller");
        assert!(walked.bytes <= WALKED_BYTES);
        let (ids, _) = read(&mut walked, 1, 1, &big);
        assert!(ids.is_empty(), "the same version: nothing read");
        // A small tree read into the buffer of a large one is kept without its room.
        let small = tree_of(&[("100644", "a", 1)]);
        buf.clear();
        buf.extend_from_slice(&small);
        assert!(buf.capacity() >= big.len());
        let before = walked.bytes;
        let kept = walked.read_new(3, 2, &mut buf, hash, &mut entries_read, &mut starts);
        assert!(kept.unwrap());
        assert!(
            walked.bytes - before < 1024,
            "{} held",
            walked.bytes - before
        );
        // Not kept at all on a walk from one root tree: every entry read.
        let mut one = TreesWalked::default();
        let mut buf = small.clone();
        let kept = one.read_new(1, 0, &mut buf, hash, &mut entries_read, &mut starts);
        assert!(!kept.unwrap());
        assert_eq!(entries_read.len(), 1);
        assert_eq!(one.data(1), None);
    }

    fn ids(n: usize) -> Vec<ObjectId> {
        (0..n)
            .map(|i| {
                let mut id = ObjectId::null(HashKind::Sha1);
                id.as_mut_slice()[..8].copy_from_slice(&(i as u64).to_be_bytes());
                id
            })
            .collect()
    }

    /// A line of `n` commits, parents first, each `step` seconds newer than its parent.
    fn line(n: usize, step: i64) -> Vec<Walked> {
        (0..n)
            .map(|i| Walked {
                time: i as i64 * step,
                merge: false,
                first_parent: i.checked_sub(1),
            })
            .collect()
    }

    #[test]
    fn bitmaps_are_dense_near_the_tips_and_sparse_far_from_them() {
        let n = 500_000;
        let commits = ids(n);
        let walked = line(n, 1);
        let chosen = choose_commits(&commits, &walked, &OidSet::default());
        // Positions from the newest of the chosen ones.
        let from_newest: Vec<usize> = (0..n)
            .rev()
            .filter(|&i| chosen[i])
            .map(|i| n - 1 - i)
            .collect();
        assert!(
            from_newest.iter().take(101).copied().eq(0..101),
            "{:?}",
            &from_newest[..101]
        );
        let gaps: Vec<usize> = from_newest.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| (1..=BITMAP_GAP_FAR + 1).contains(&g)));
        // Within the near history no walk goes past about a hundred commits.
        for (w, &g) in from_newest.windows(2).zip(&gaps) {
            if w[1] <= BITMAP_NEAR {
                assert!(g <= BITMAP_GAP_NEAR + 1, "{w:?}");
            }
        }
        // The gaps grow to the widest one, and the count stays at a few hundred.
        assert_eq!(*gaps.iter().max().unwrap(), BITMAP_GAP_FAR + 1);
        assert!(
            (300..500).contains(&from_newest.len()),
            "{}",
            from_newest.len()
        );
        // Ten times the history, not ten times the bitmaps.
        let long = 5_000_000;
        let many = choose_commits(&ids(long), &line(long, 1), &OidSet::default());
        let count = many.iter().filter(|&&c| c).count();
        assert!(count < 1_500, "{count}");
        // Few commits: every one.
        let few = choose_commits(&commits[..100], &walked[..100], &OidSet::default());
        assert!(few.iter().all(|&c| c));
    }

    #[test]
    fn a_gap_takes_its_tip_else_its_oldest_merge() {
        let n = 30_000;
        let commits = ids(n);
        let mut walked = line(n, 10);
        let plain = choose_commits(&commits, &walked, &OidSet::default());
        // Some gap of the near history, the oldest of it taken: a merge in it, then a tip.
        let picked: Vec<usize> = (0..n).rev().filter(|&i| plain[i]).collect();
        let (upper, lower) = (picked[150], picked[151]);
        assert!(upper - lower > 50, "{upper} {lower}");
        let merge = lower + 40;
        walked[merge].merge = true;
        walked[merge + 5].merge = true;
        let with_merges = choose_commits(&commits, &walked, &OidSet::default());
        assert!(with_merges[merge] && !with_merges[lower] && !with_merges[merge + 5]);
        let tip = lower + 30;
        let tips: OidSet = [commits[tip]].into_iter().collect();
        let with_tip = choose_commits(&commits, &walked, &tips);
        assert!(with_tip[tip] && !with_tip[merge]);
        // The tip's first-parent line: one in ten of its last hundred commits, one in a
        // hundred of its last 2,000.
        assert!(tip > LINE, "{tip}");
        for d in 1..LINE + LINE_STEP {
            let on_line = d < LINE && d % LINE_STEP == 0;
            let dense = d < DENSE_LINE && d % DENSE_STEP == 0;
            assert_eq!(with_tip[tip - d], on_line || dense || plain[tip - d], "{d}");
        }
        // Equal times: the later of the walk counts as the newer.
        let mut same = walked.clone();
        same.iter_mut().for_each(|w| (w.time, w.merge) = (7, false));
        assert_eq!(choose_commits(&commits, &same, &OidSet::default()), plain);
        // Every tip has one, up to a bound: the newest tips then.
        let tips: OidSet = (0..n).step_by(10).map(|i| commits[i]).collect();
        let with_tips = choose_commits(&commits, &same, &tips);
        let newest = n - 10 * MAX_TIP_BITMAPS;
        assert!((newest..n).step_by(10).all(|i| with_tips[i]));
        // Older tips only where a gap takes one.
        let tipped = (0..newest).step_by(10).filter(|&i| with_tips[i]).count();
        assert!(tipped > 0 && tipped < 100, "{tipped}");
    }

    /// The table of recent positions answers what the index answers, for ids that share a
    /// slot too (each taking it from the other), and nothing for an id the pack lacks.
    #[test]
    fn recent_positions_are_the_index_positions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.git");
        let spec = gitcache_testkit::repo::RepoSpec::small(12);
        gitcache_testkit::repo::generate(&path, &spec).unwrap();
        gitcache_testkit::git::git_stdout(&path, &["repack", "-adq"]);
        let repo = crate::Repository::open(&path).unwrap();
        let pack = &repo.stored_packs().unwrap()[0];
        let pos = Positions::new(pack, Arc::new(RevIndex::from_offsets(pack)));
        let ids: Vec<ObjectId> = (0..pos.len()).map(|p| pos.oid(p)).collect();
        let slot = |id: &ObjectId| {
            let b = id.as_bytes();
            u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize & (RECENT_SLOTS - 1)
        };
        let mut slots: Vec<usize> = ids.iter().map(slot).collect();
        slots.sort_unstable();
        let shared = slots.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(shared > 0, "some ids share a slot ({} objects)", ids.len());
        let mut recent = Recent {
            on: true,
            slots: Vec::new(),
        };
        for round in 0..3 {
            for (p, id) in ids.iter().enumerate() {
                assert_eq!(recent.of(&pos, id), Some(p), "round {round}");
            }
        }
        // An id the pack lacks is kept as such, in the slot of the id it differs from in its
        // last byte only: each is what the index says, whichever held the slot last.
        let mut absent = ids[0];
        absent.as_mut_slice()[19] ^= 0x55;
        assert_eq!(pos.of(&absent), None);
        for _ in 0..2 {
            assert_eq!(recent.of(&pos, &absent), None);
            assert_eq!(recent.of(&pos, &absent), None, "kept as absent");
            assert_eq!(recent.of(&pos, &ids[0]), Some(0));
            assert_eq!(recent.of(&pos, &ids[0]), Some(0));
        }
    }

    /// The name hashes of a pack's objects read one at a time are those of the table: from a
    /// file read whole and from one read in pieces (with git's lookup table).
    #[test]
    fn names_read_each_are_the_tables() {
        for table in ["false", "true"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.git");
            let spec = gitcache_testkit::repo::RepoSpec::small(72);
            gitcache_testkit::repo::generate(&path, &spec).unwrap();
            let option = format!("pack.writeBitmapLookupTable={table}");
            gitcache_testkit::git::git_stdout(
                &path,
                &[
                    "-c",
                    &option,
                    "-c",
                    "pack.writeBitmapHashCache=true",
                    "repack",
                    "-adbq",
                ],
            );
            let repo = crate::Repository::open(&path).unwrap();
            let pack = &repo.stored_packs().unwrap()[0];
            let n = pack.num_objects();
            // Few wanted (fewer than one in 1,024 of the pack's objects): each read from the
            // file, the table not read.
            let loaded = repo.bitmaps(pack).unwrap();
            assert_eq!(
                matches!(loaded.bitmaps.data, Source::Pieces { .. }),
                table == "true"
            );
            let each = loaded
                .names_for(n / NAMES_READ_EACH_SHARE)
                .unwrap()
                .unwrap();
            assert!(matches!(each, Names::Each(_)), "{n} objects");
            let read: Vec<Option<u32>> = (0..n as u32).map(|i| each.get(i)).collect();
            assert_eq!(each.get(n as u32), None, "past the last");
            assert!(
                loaded.bitmaps.names.get().is_none(),
                "the table was not read"
            );
            // Many wanted: the table, and the same names.
            let Some(Names::Table(names)) = loaded.names_for(n).unwrap() else {
                panic!("the table for many");
            };
            assert!(matches!(
                loaded.names_for(0).unwrap(),
                Some(Names::Table(_))
            ));
            let expected: Vec<Option<u32>> = names.iter().copied().map(Some).collect();
            assert_eq!(read, expected, "lookup table {table}");
            assert!(read.iter().any(|name| name.is_some_and(|n| n != 0)));
        }
    }

    /// Decoded together, bitmaps are what each decoded alone makes, ORed: with and without
    /// git's lookup table, with every base held, one, or none (each decoded again), and with
    /// some decoded before.
    #[test]
    fn bitmaps_decoded_together_are_those_decoded_alone() {
        use std::sync::atomic::Ordering;
        for table in ["false", "true"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("r.git");
            let spec = gitcache_testkit::repo::RepoSpec::small(71);
            gitcache_testkit::repo::generate(&path, &spec).unwrap();
            let option = format!("pack.writeBitmapLookupTable={table}");
            gitcache_testkit::git::git_stdout(&path, &["-c", &option, "repack", "-adbq"]);
            let repo = crate::Repository::open(&path).unwrap();
            let pack = &repo.stored_packs().unwrap()[0];
            let load = || {
                PackBitmaps::load(pack, repo.object_format())
                    .unwrap()
                    .unwrap()
            };
            let alone = load();
            let count = alone.entries.len();
            let chained = alone.entries.iter().filter(|e| e.base.is_some()).count();
            assert!(chained > count / 4, "{chained} of {count} XORed");
            let rev = RevIndex::from_offsets(pack);
            let mut skipped = 0;
            for (step, backwards) in [(1, false), (1, true), (3, true), (7, false)] {
                let mut wanted: Vec<usize> = (0..count).step_by(step).collect();
                if backwards {
                    wanted.reverse();
                }
                let mut expected = Bits::default();
                for &i in &wanted {
                    expected.or(&alone.entry(i).unwrap());
                }
                // With their commits' positions (those reached by one before are skipped),
                // and with none (every one decoded).
                let placed: Vec<(usize, usize)> = wanted
                    .iter()
                    .map(|&i| {
                        let at = rev.pack_position(&pack.index, alone.entries[i].position);
                        (i, at.unwrap())
                    })
                    .collect();
                let unplaced: Vec<(usize, usize)> =
                    wanted.iter().map(|&i| (i, usize::MAX)).collect();
                skipped += placed
                    .iter()
                    .enumerate()
                    .filter(|&(k, &(_, at))| {
                        placed[..k]
                            .iter()
                            .any(|&(j, _)| alone.entry(j).unwrap().get(at))
                    })
                    .count();
                for held in [0, 1, usize::MAX] {
                    for wanted in [&placed, &unplaced] {
                        let together = load();
                        // One in the middle of the chains decoded already.
                        together.entry(count / 2).unwrap();
                        let before = together.xors.load(Ordering::Relaxed);
                        let mut got = Bits::default();
                        together.union_holding(wanted, &mut got, held).unwrap();
                        assert_eq!(got, expected, "step {step}, holding {held}, table {table}");
                        // Holding what is needed, each entry is decoded at most once.
                        let xors = together.xors.load(Ordering::Relaxed) - before;
                        if held == usize::MAX {
                            assert!(xors <= count, "{xors} decodings of {count} entries");
                        }
                    }
                }
            }
            assert!(skipped > 0, "some commits were reached by others");
        }
    }

    fn roundtrip(bits: &Bits, n: usize) -> Bits {
        let mut out = Vec::new();
        ewah_encode(bits, n, &mut out);
        let (decoded, used) = ewah_decode(&out, n).unwrap();
        assert_eq!(used, out.len());
        decoded
    }

    #[test]
    fn ewah_round_trips_runs_and_literals() {
        for n in [0usize, 1, 63, 64, 65, 200, 1000, 64 * 70 + 3] {
            let mut sparse = Bits::with_len(n);
            let mut dense = Bits::with_len(n);
            let mut mixed = Bits::with_len(n);
            for i in 0..n {
                if i % 97 == 0 {
                    sparse.set(i);
                }
                dense.set(i);
                if (i / 64) % 3 != 0 || i % 5 == 0 {
                    mixed.set(i);
                }
            }
            for bits in [sparse, dense, mixed, Bits::with_len(n)] {
                assert_eq!(roundtrip(&bits, n), bits, "{n} bits");
            }
        }
    }

    /// XORing an EWAH into a bitmap in place gives the XOR of the two, from an empty
    /// accumulator or a full one, and takes the whole EWAH.
    #[test]
    fn ewah_xored_in_place_is_decoded_and_xored() {
        for n in [1usize, 63, 64, 65, 1000, 64 * 70 + 3] {
            let mut sparse = Bits::with_len(n);
            let mut runs = Bits::with_len(n);
            for i in 0..n {
                if i % 89 == 0 {
                    sparse.set(i);
                }
                if (i / 64) % 4 != 1 {
                    runs.set(i);
                }
            }
            for (a, b) in [
                (&sparse, &runs),
                (&runs, &sparse),
                (&runs, &runs),
                (&Bits::default(), &runs),
            ] {
                let mut encoded = Vec::new();
                ewah_encode(b, n, &mut encoded);
                let mut expected = a.clone();
                expected.xor(b);
                let mut acc = a.clone();
                let used = ewah_xor_into(&encoded, n, &mut acc).unwrap();
                assert_eq!(acc, expected, "{n} bits");
                assert_eq!(used, encoded.len());
            }
            // What decoding refuses, XORing refuses.
            let mut encoded = Vec::new();
            ewah_encode(&runs, n, &mut encoded);
            if n > 64 {
                assert!(ewah_xor_into(&encoded, n - 64, &mut Bits::default()).is_err());
            }
            assert!(ewah_xor_into(&encoded[..encoded.len() - 4], n, &mut Bits::default()).is_err());
        }
    }

    #[test]
    fn ewah_refuses_what_does_not_fit() {
        let mut bits = Bits::with_len(100);
        bits.set(99);
        let mut out = Vec::new();
        ewah_encode(&bits, 100, &mut out);
        assert!(
            ewah_decode(&out, 50).is_err(),
            "more bits than the pack has"
        );
        assert!(
            ewah_decode(&out[..out.len() - 5], 100).is_err(),
            "truncated"
        );
        // A run longer than the bitmap.
        let mut hostile = Vec::new();
        hostile.extend_from_slice(&64u32.to_be_bytes());
        hostile.extend_from_slice(&1u32.to_be_bytes());
        hostile.extend_from_slice(&(0xffff_ffffu64 << 1).to_be_bytes());
        hostile.extend_from_slice(&0u32.to_be_bytes());
        assert!(ewah_decode(&hostile, 64).is_err());
    }

    #[test]
    fn bit_sets() {
        let mut a = Bits::with_len(130);
        a.set(0);
        a.set(64);
        a.set(129);
        let mut b = Bits::with_len(130);
        b.set(64);
        assert_eq!(a.ones().collect::<Vec<_>>(), [0, 64, 129]);
        a.and_not(&b);
        assert_eq!(a.ones().collect::<Vec<_>>(), [0, 129]);
        a.or(&b);
        assert_eq!(a.count(), 3);
    }

    /// Made bitmaps kept XORed along chains come back exactly as made, whichever is asked
    /// for and in whatever order (past the decoded ones kept), and no chain is longer than its
    /// bound; one that does not shrink by XOR is kept whole.
    #[test]
    fn made_bitmaps_come_back_as_made() {
        let n = 20_000;
        let commits = ids(300);
        // Each reaches what the one before did and a few more; every fiftieth is unlike the
        // others (a branch elsewhere in the pack).
        let mut made = Vec::new();
        let mut reach = Bits::with_len(n);
        for (i, _) in commits.iter().enumerate() {
            let mut bits = if i % 50 == 49 {
                let mut other = Bits::with_len(n);
                for p in (i..n).step_by(3) {
                    other.set(p);
                }
                other
            } else {
                for p in (i * 61..).take(7) {
                    reach.set(p % n);
                }
                reach.clone()
            };
            bits.set(n - 1);
            made.push(bits);
        }
        let mut kept = MadeBitmaps::new(n);
        for (commit, bits) in commits.iter().zip(&made) {
            let mut whole = Vec::new();
            ewah_encode(bits, n, &mut whole);
            kept.insert(*commit, bits.clone(), whole);
        }
        let mut longest = 0;
        for commit in &commits {
            let mut depth = 0;
            let mut at = *commit;
            while let Some(MadeEntry::Xor { base, .. }) = kept.by_commit.get(&at) {
                depth += 1;
                at = *base;
            }
            longest = longest.max(depth);
        }
        assert_eq!(longest, MADE_XOR_DEPTH);
        assert!(
            matches!(kept.by_commit.get(&commits[49]), Some(MadeEntry::Whole(_))),
            "an unlike bitmap is kept whole"
        );
        // Oldest first, newest first, and out of order: more than the decoded ones kept.
        let order: Vec<usize> = (0..300)
            .chain((0..300).rev())
            .chain((0..300).map(|i| i * 7 % 300))
            .collect();
        for i in order {
            let got = kept.get(&commits[i]).unwrap().expect("made");
            assert_eq!(*got, made[i], "bitmap {i}");
        }
        assert!(kept.get(&ids(301)[300]).unwrap().is_none());
    }
}
