//! Git's delta format, written here: a target described as copies from a source and
//! inserted literals, for objects whose stored delta base is not sent.
//!
//! A delta starts with the source's and the target's sizes, each a little-endian base-128
//! number. Instructions follow. A byte with the high bit set copies from the source: its low
//! four bits say which bytes of the offset follow, the next three which bytes of the size (a
//! size of 0 means 0x10000). A byte from 1 to 127 inserts that many literal bytes, which
//! follow it. 0 is reserved.
//!
//! The encoder indexes the source in blocks of [`BLOCK`] bytes and looks each position of
//! the target up, so its time is linear in both sizes and its memory (a table of four bytes
//! per block, rounded up to a power of two) at most the source's size.

/// Bytes hashed together: shorter common runs are not found.
const BLOCK: usize = 16;
/// The largest copy one instruction can state (three size bytes).
const MAX_COPY: usize = 0xff_ffff;
/// The longest literal run one instruction can state.
const MAX_INSERT: usize = 0x7f;
/// How far back from a block found in the source a copy is extended over bytes not yet
/// described. Bytes further back than this are literals for good, so a delta over its limit
/// is known as soon as they are, without reading the rest of the target (a target unlike
/// its source was read to its end before). Longer extensions only happen where many blocks
/// in a row were not found, which a table of twice as many buckets as blocks makes rare.
const MAX_BACK: usize = 512;

/// A source indexed for [`encode`].
pub(crate) struct SourceIndex<'a> {
    source: &'a [u8],
    /// By hash bucket, one more than the offset of a block of `source` (0: none).
    table: Vec<u32>,
    shift: u32,
}

impl<'a> SourceIndex<'a> {
    /// Index `source`; `None` when it is too large for a delta's four offset bytes.
    pub(crate) fn new(source: &'a [u8]) -> Option<Self> {
        if source.len() >= u32::MAX as usize {
            return None;
        }
        let blocks = source.len() / BLOCK;
        let bits = (blocks * 2).max(16).next_power_of_two().trailing_zeros();
        let mut table = vec![0u32; 1 << bits];
        let shift = 64 - bits;
        // From the end, so that the first of equal blocks is the one kept.
        for (block, bytes) in source.chunks_exact(BLOCK).enumerate().rev() {
            let Ok(bytes) = bytes.try_into() else {
                continue;
            };
            table[(hash(bytes) >> shift) as usize] = (block * BLOCK) as u32 + 1;
        }
        Some(SourceIndex {
            source,
            table,
            shift,
        })
    }

    /// Where a block equal to `window` starts in the source, if known.
    fn find(&self, window: &[u8; BLOCK]) -> Option<usize> {
        let at = self.table[(hash(window) >> self.shift) as usize];
        let at = at.checked_sub(1)? as usize;
        // Compared as one number: a call to compare 16 bytes took a tenth of a depth-1
        // answer's time, most of it on hash collisions of targets unlike their source.
        let block = block_at(self.source, at)?;
        (u128::from_ne_bytes(*block) == u128::from_ne_bytes(*window)).then_some(at)
    }
}

/// The [`BLOCK`] bytes of `bytes` at `at`, if there are so many.
fn block_at(bytes: &[u8], at: usize) -> Option<&[u8; BLOCK]> {
    bytes.get(at..at + BLOCK)?.try_into().ok()
}

fn hash(window: &[u8; BLOCK]) -> u64 {
    let (a, b) = window.split_at(8);
    let a = u64::from_le_bytes(a.try_into().unwrap_or_default());
    let b = u64::from_le_bytes(b.try_into().unwrap_or_default());
    (a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
}

/// The delta that makes `target` from the indexed source, or `None` if it would take more
/// than `limit` bytes (then the target is better sent whole).
pub(crate) fn encode(index: &SourceIndex<'_>, target: &[u8], limit: usize) -> Option<Vec<u8>> {
    let source = index.source;
    let mut out = Vec::with_capacity(limit.min(target.len() / 4 + 64));
    put_size(&mut out, source.len() as u64);
    put_size(&mut out, target.len() as u64);
    // Target bytes not yet described start at `pending`.
    let mut pending = 0;
    let mut at = 0;
    while let Some(window) = block_at(target, at) {
        let Some(found) = index.find(window) else {
            // Bytes more than `MAX_BACK` behind go in as literals whatever comes next, with a
            // byte of instruction for each 127 of them.
            let literal = at.saturating_sub(pending + MAX_BACK);
            if out.len() + literal + literal.div_ceil(MAX_INSERT) > limit {
                return None;
            }
            at += 1;
            continue;
        };
        let ahead = common_prefix(&source[found + BLOCK..], &target[at + BLOCK..]);
        let reach = pending.max(at.saturating_sub(MAX_BACK));
        let back = common_suffix(&source[..found], &target[reach..at]);
        insert(&mut out, &target[pending..at - back]);
        copy(&mut out, found - back, back + BLOCK + ahead);
        at += BLOCK + ahead;
        pending = at;
        if out.len() > limit {
            return None;
        }
    }
    insert(&mut out, &target[pending..]);
    (out.len() <= limit).then_some(out)
}

/// How many bytes `a` and `b` share at their start.
pub(crate) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let most = a.len().min(b.len());
    let (a, b) = (&a[..most], &b[..most]);
    let mut n = 0;
    // Long runs a block at a time (the C library compares those with vector instructions).
    while n + ALIKE_BLOCK <= most && a[n..n + ALIKE_BLOCK] == b[n..n + ALIKE_BLOCK] {
        n += ALIKE_BLOCK;
    }
    // Then eight bytes at a time, as numbers: the first differing byte is the lowest
    // differing bit's of the little-endian difference.
    for (x, y) in a[n..].chunks_exact(8).zip(b[n..].chunks_exact(8)) {
        let x = u64::from_le_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_le_bytes(y.try_into().unwrap_or_default());
        if x != y {
            return n + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + a[n..]
        .iter()
        .zip(&b[n..])
        .take_while(|(p, q)| p == q)
        .count()
}

/// How many bytes `a` and `b` share at their end.
pub(crate) fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let most = a.len().min(b.len());
    let (a, b) = (&a[a.len() - most..], &b[b.len() - most..]);
    let mut n = 0;
    while n + ALIKE_BLOCK <= most
        && a[most - n - ALIKE_BLOCK..most - n] == b[most - n - ALIKE_BLOCK..most - n]
    {
        n += ALIKE_BLOCK;
    }
    // Then eight bytes at a time from the end: the last differing byte is the highest
    // differing bit's of the little-endian difference.
    let (a, b) = (&a[..most - n], &b[..most - n]);
    for (x, y) in a.rchunks_exact(8).zip(b.rchunks_exact(8)) {
        let x = u64::from_le_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_le_bytes(y.try_into().unwrap_or_default());
        if x != y {
            return n + ((x ^ y).leading_zeros() / 8) as usize;
        }
        n += 8;
    }
    let left = most - n;
    n + a[..left]
        .iter()
        .rev()
        .zip(b[..left].iter().rev())
        .take_while(|(p, q)| p == q)
        .count()
}

/// Bytes compared at once, first, by [`common_prefix`] and [`common_suffix`].
const ALIKE_BLOCK: usize = 64;

fn put_size(out: &mut Vec<u8>, mut size: u64) {
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn insert(out: &mut Vec<u8>, literal: &[u8]) {
    for run in literal.chunks(MAX_INSERT) {
        out.push(run.len() as u8);
        out.extend_from_slice(run);
    }
}

fn copy(out: &mut Vec<u8>, mut offset: usize, mut len: usize) {
    while len > 0 {
        let n = len.min(MAX_COPY);
        let command = out.len();
        out.push(0x80);
        for i in 0..4 {
            let byte = (offset >> (8 * i)) as u8;
            if byte != 0 {
                out[command] |= 1 << i;
                out.push(byte);
            }
        }
        for i in 0..3 {
            let byte = (n >> (8 * i)) as u8;
            if byte != 0 {
                out[command] |= 0x10 << i;
                out.push(byte);
            }
        }
        offset += n;
        len -= n;
    }
}

/// Apply `delta` to `source`, as a client would: the check that what [`encode`] writes means
/// what it should.
pub(crate) fn apply(source: &[u8], delta: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut rest = delta;
    let source_size = take_size(&mut rest)?;
    let target_size = take_size(&mut rest)?;
    if source_size != source.len() as u64 {
        return Err("source size differs");
    }
    let mut out = Vec::with_capacity(usize::try_from(target_size.min(1 << 20)).unwrap_or(0));
    while let Some((&command, tail)) = rest.split_first() {
        rest = tail;
        if command & 0x80 != 0 {
            let mut field = |bits: u8, bytes: usize| -> Result<usize, &'static str> {
                let mut value = 0usize;
                for i in 0..bytes {
                    if bits & (1 << i) != 0 {
                        let (&byte, tail) = rest.split_first().ok_or("truncated copy")?;
                        rest = tail;
                        value |= usize::from(byte) << (8 * i);
                    }
                }
                Ok(value)
            };
            let offset = field(command & 0x0f, 4)?;
            let size = match field((command >> 4) & 0x07, 3)? {
                0 => 0x10000,
                n => n,
            };
            let run = offset
                .checked_add(size)
                .and_then(|end| source.get(offset..end))
                .ok_or("copy outside the source")?;
            out.extend_from_slice(run);
        } else if command != 0 {
            let n = usize::from(command);
            let run = rest.get(..n).ok_or("truncated insert")?;
            out.extend_from_slice(run);
            rest = &rest[n..];
        } else {
            return Err("reserved instruction");
        }
        if out.len() as u64 > target_size {
            return Err("longer than the target size");
        }
    }
    if out.len() as u64 != target_size {
        return Err("shorter than the target size");
    }
    Ok(out)
}

/// The size of what `delta` makes, as it states it.
pub(crate) fn target_size(delta: &[u8]) -> Option<u64> {
    let mut rest = delta;
    take_size(&mut rest).ok()?;
    take_size(&mut rest).ok()
}

fn take_size(rest: &mut &[u8]) -> Result<u64, &'static str> {
    let mut size = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest.split_first().ok_or("truncated size")?;
        *rest = tail;
        size |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(size);
        }
    }
    Err("size too long")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn common_ends() {
        let a: Vec<u8> = (0..200u8).collect();
        let mut b = a.clone();
        b[130] = 0;
        assert_eq!(common_prefix(&a, &b), 130);
        assert_eq!(common_suffix(&a, &b), 69);
        assert_eq!(common_prefix(&a, &a[..70]), 70);
        assert_eq!(common_suffix(&a, &a[150..]), 50);
        assert_eq!(common_suffix(&a[..3], &a[150..]), 0);
        assert_eq!(common_prefix(&[], &a), 0);
        assert_eq!(common_suffix(&a, &[]), 0);
    }

    proptest! {
        /// Eight bytes at a time, as one byte at a time finds them.
        #[test]
        fn common_ends_as_byte_by_byte(
            shared in proptest::collection::vec(0u8..4, 0..300),
            a in proptest::collection::vec(0u8..4, 0..40),
            b in proptest::collection::vec(0u8..4, 0..40),
        ) {
            let (x, y) = ([&shared[..], &a].concat(), [&shared[..], &b].concat());
            let prefix = x.iter().zip(&y).take_while(|(p, q)| p == q).count();
            prop_assert_eq!(common_prefix(&x, &y), prefix);
            let (x, y) = ([&a[..], &shared].concat(), [&b[..], &shared].concat());
            let suffix = x.iter().rev().zip(y.iter().rev()).take_while(|(p, q)| p == q).count();
            prop_assert_eq!(common_suffix(&x, &y), suffix);
        }
    }

    fn round_trip(source: &[u8], target: &[u8]) -> Option<usize> {
        let index = SourceIndex::new(source).unwrap();
        let delta = encode(&index, target, usize::MAX).unwrap();
        assert_eq!(apply(source, &delta).unwrap(), target);
        encode(&index, target, target.len() / 2).map(|d| d.len())
    }

    /// Bytes that do not repeat within a few KiB, like the ids in a tree.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn edits_become_small_deltas() {
        let source = noise(1, 50_000);
        let mut target = source.clone();
        target[10_000..10_020].copy_from_slice(&noise(2, 20));
        target.splice(30_000..30_000, noise(3, 100));
        target.drain(40_000..40_500);
        let size = round_trip(&source, &target).expect("a small delta");
        assert!(size < 400, "{size} bytes for three small edits");
    }

    #[test]
    fn unrelated_content_is_refused() {
        assert_eq!(round_trip(&noise(1, 4096), &noise(9, 4096)), None);
    }

    #[test]
    fn literals_count_against_the_limit_as_they_are_passed() {
        let source = noise(14, 20_000);
        // 3,000 new bytes, then the source: one insert run and one copy.
        let mut target = noise(16, 3_000);
        target.extend_from_slice(&source);
        let index = SourceIndex::new(&source).unwrap();
        let unlimited = encode(&index, &target, usize::MAX).unwrap();
        assert!(unlimited.len() < 3_100, "{} bytes", unlimited.len());
        assert_eq!(apply(&source, &unlimited).unwrap(), target);
        // Any limit it fits in gives the same delta; a smaller one gives none, also where
        // the literals alone pass it.
        assert_eq!(
            encode(&index, &target, unlimited.len()),
            Some(unlimited.clone())
        );
        assert_eq!(encode(&index, &target, unlimited.len() - 1), None);
        assert_eq!(encode(&index, &target, 1_000), None);
        // A copy found right after new bytes extends back over the ones it covers, however
        // many new bytes came before them.
        let mut target = noise(18, 5_000);
        target.extend_from_slice(&source[7..]);
        let delta = encode(&index, &target, usize::MAX).unwrap();
        assert_eq!(apply(&source, &delta).unwrap(), target);
        assert!(delta.len() < 5_100, "{} bytes", delta.len());
    }

    #[test]
    fn copies_extend_back_at_most_max_back() {
        let source = noise(20, 8192);
        let mut index = SourceIndex::new(&source).unwrap();
        // Every block lost but one past the middle (as if all before it had collided): the
        // target, the source itself, is found there first.
        let found = index
            .table
            .iter()
            .filter_map(|&at| at.checked_sub(1))
            .map(|at| at as usize)
            .filter(|&at| at > 2 * MAX_BACK)
            .min()
            .unwrap();
        let buckets = 1 << (64 - index.shift);
        let keep = (hash(block_at(&source, found).unwrap()) >> index.shift) as usize;
        index.table = (0..buckets)
            .map(|bucket| if bucket == keep { found as u32 + 1 } else { 0 })
            .collect();
        let delta = encode(&index, &source, usize::MAX).unwrap();
        assert_eq!(apply(&source, &delta).unwrap(), source);
        // What comes before the copy: the bytes more than `MAX_BACK` before the block found.
        let mut rest = &delta[..];
        take_size(&mut rest).unwrap();
        take_size(&mut rest).unwrap();
        let mut literal = 0;
        while let Some((&command, tail)) = rest.split_first()
            && command & 0x80 == 0
        {
            literal += usize::from(command);
            rest = &tail[usize::from(command)..];
        }
        assert_eq!(literal, found - MAX_BACK);
        // The limit it fits in gives it, one byte less none.
        assert_eq!(encode(&index, &source, delta.len()), Some(delta.clone()));
        assert_eq!(encode(&index, &source, delta.len() - 1), None);
    }

    #[test]
    fn edge_cases_round_trip() {
        for (source, target) in [
            (Vec::new(), Vec::new()),
            (Vec::new(), b"short".to_vec()),
            (b"short".to_vec(), Vec::new()),
            (noise(4, 15), noise(4, 15)),
            (noise(5, 1 << 17), noise(5, 1 << 17)),
            (vec![0; 100_000], vec![0; 300_000]),
        ] {
            round_trip(&source, &target);
        }
        // A copy longer than one instruction can say.
        let source = noise(6, MAX_COPY + 1000);
        let index = SourceIndex::new(&source).unwrap();
        let delta = encode(&index, &source, 64).unwrap();
        assert_eq!(apply(&source, &delta).unwrap(), source);
    }

    #[test]
    fn corrupt_deltas_are_errors() {
        let source = noise(7, 64);
        for bad in [
            &b""[..],
            &[64, 10, 0][..],
            &[64, 4, 0x91, 60, 10][..],
            &[64, 4, 5, 1, 2, 3, 4, 5][..],
            &[64, 4, 4, 1, 2][..],
            &[63, 0][..],
        ] {
            assert!(apply(&source, bad).is_err(), "{bad:?}");
        }
    }
}
