//! Side-band framing: band 1 carries data, band 2 progress text, band 3 a fatal error.

use std::io::{self, Write};

use crate::pktline::{self, Channel, MAX_SIDEBAND_DATA};

/// A [`Write`] that frames everything written into band-1 packets of at most
/// [`MAX_SIDEBAND_DATA`] bytes, and interleaves progress and error messages.
///
/// Small writes are gathered into full packets; call [`SidebandWriter::finish`] to send the
/// last partial packet and the closing flush.
///
/// ```
/// use std::io::Write;
/// use gitcache_protocol::sideband::SidebandWriter;
/// let mut w = SidebandWriter::new(Vec::new());
/// w.write_all(b"PACK").unwrap();
/// w.progress(b"Counting objects: 1, done.\n").unwrap();
/// let bytes = w.finish().unwrap();
/// assert_eq!(bytes, b"0009\x01PACK0020\x02Counting objects: 1, done.\n0000");
/// ```
#[derive(Debug)]
pub struct SidebandWriter<W: Write> {
    out: W,
    pending: Vec<u8>,
}

impl<W: Write> SidebandWriter<W> {
    /// Frame into `out`.
    pub fn new(out: W) -> Self {
        SidebandWriter {
            out,
            pending: Vec::with_capacity(MAX_SIDEBAND_DATA),
        }
    }

    /// Send buffered data, then `text` on band 2 (split if long).
    pub fn progress(&mut self, text: &[u8]) -> Result<(), pktline::Error> {
        self.send_pending()?;
        for chunk in text.chunks(MAX_SIDEBAND_DATA) {
            pktline::write_band(&mut self.out, Channel::Progress, chunk)?;
        }
        Ok(())
    }

    /// Send buffered data, then `message` on band 3. The client stops reading after it.
    pub fn error(&mut self, message: &[u8]) -> Result<(), pktline::Error> {
        self.send_pending()?;
        let message = &message[..message.len().min(MAX_SIDEBAND_DATA)];
        pktline::write_band(&mut self.out, Channel::Error, message)?;
        Ok(())
    }

    /// Send what is buffered, write the closing flush, and hand back the writer.
    pub fn finish(mut self) -> Result<W, pktline::Error> {
        self.send_pending()?;
        pktline::write_flush(&mut self.out)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    fn send_pending(&mut self) -> Result<(), pktline::Error> {
        if !self.pending.is_empty() {
            pktline::write_band(&mut self.out, Channel::Data, &self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

fn to_io(err: pktline::Error) -> io::Error {
    match err {
        pktline::Error::Io(err) => err,
        other => io::Error::other(other),
    }
}

impl<W: Write> Write for SidebandWriter<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let len = buf.len();
        if !self.pending.is_empty() {
            let take = (MAX_SIDEBAND_DATA - self.pending.len()).min(buf.len());
            self.pending.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.pending.len() == MAX_SIDEBAND_DATA {
                self.send_pending().map_err(to_io)?;
            }
        }
        while buf.len() >= MAX_SIDEBAND_DATA {
            let (chunk, rest) = buf.split_at(MAX_SIDEBAND_DATA);
            pktline::write_band(&mut self.out, Channel::Data, chunk).map_err(to_io)?;
            buf = rest;
        }
        self.pending.extend_from_slice(buf);
        Ok(len)
    }

    /// Sends the buffered partial packet and flushes the underlying writer.
    fn flush(&mut self) -> io::Result<()> {
        self.send_pending().map_err(to_io)?;
        self.out.flush()
    }
}

/// Split a side-band packet's payload into its band and data.
pub fn split_band(data: &[u8]) -> Option<(Channel, &[u8])> {
    let (&band, rest) = data.split_first()?;
    let channel = match band {
        1 => Channel::Data,
        2 => Channel::Progress,
        3 => Channel::Error,
        _ => return None,
    };
    Some((channel, rest))
}
