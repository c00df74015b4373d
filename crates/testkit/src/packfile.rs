//! Pack files written byte by byte, for tests that need entries git would not write: zlib
//! streams of stored blocks, as long as one likes, and entries put together by hand.

use sha1::Digest;

/// `data` as a zlib stream of stored blocks (no compression: a pack's entries may be so),
/// after `padding` empty stored blocks: valid (git and gitoxide inflate it), and 5 bytes
/// longer for each.
pub fn zlib_stored(data: &[u8], padding: usize) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    for _ in 0..padding {
        out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
    }
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = u16::try_from(chunk.len()).expect("a block's length");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// A pack entry's header: its type (1 commit, 2 tree, 3 blob, 4 tag, 6 and 7 deltas) and the
/// size of what follows, in the shortest form.
pub fn entry_header(kind: u8, size: usize) -> Vec<u8> {
    let mut header = vec![(kind << 4) | (size & 0x0f) as u8];
    let mut rest = size >> 4;
    while rest > 0 {
        *header.last_mut().expect("a byte") |= 0x80;
        header.push((rest & 0x7f) as u8);
        rest >>= 7;
    }
    header
}

/// The entry of a whole object of pack type `kind` whose content is `data`, its zlib stream
/// of stored blocks after `padding` empty ones.
pub fn whole_entry(kind: u8, data: &[u8], padding: usize) -> Vec<u8> {
    let mut entry = entry_header(kind, data.len());
    entry.extend_from_slice(&zlib_stored(data, padding));
    entry
}

/// A SHA-1 pack of `entries`: a header claiming as many, and the pack's checksum.
pub fn pack_of(entries: &[&[u8]]) -> Vec<u8> {
    let mut pack = b"PACK\0\0\0\x02".to_vec();
    let count = u32::try_from(entries.len()).expect("entries of a pack");
    pack.extend_from_slice(&count.to_be_bytes());
    for entry in entries {
        pack.extend_from_slice(entry);
    }
    let sum = sha1::Sha1::digest(&pack);
    pack.extend_from_slice(&sum);
    pack
}
