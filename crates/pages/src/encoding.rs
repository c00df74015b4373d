//! Compressed answers: which encoding a client accepts (`Accept-Encoding`), which files are
//! worth compressing, and the compression itself. Compressed copies are kept by
//! [`crate::site::Pages`] beside the blobs, so that a hot file is compressed once.

/// A content coding this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `br`.
    Brotli,
    /// `gzip`.
    Gzip,
}

/// Files smaller than this are sent as they are: the headers would eat the gain.
pub const MIN_BYTES: u64 = 512;
/// Files larger than this are sent as they are: compressing them on a request costs too long.
pub const MAX_BYTES: u64 = 8 << 20;

impl Encoding {
    /// Its `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }

    /// `data` compressed.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(data.len() / 3 + 64);
        match self {
            Encoding::Brotli => {
                let params = brotli::enc::BrotliEncoderParams {
                    quality: 6,
                    lgwin: 22,
                    ..Default::default()
                };
                let mut reader = data;
                // Writing into a Vec cannot fail.
                let _ = brotli::BrotliCompress(&mut reader, &mut out, &params);
            }
            Encoding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
                let _ = encoder.write_all(data);
                out = encoder.finish().unwrap_or_default();
            }
        }
        out
    }
}

/// Whether a file of `content_type` and `size` bytes is worth compressing: text, scripts,
/// styles, JSON, XML, SVG and WebAssembly between [`MIN_BYTES`] and [`MAX_BYTES`]. Images,
/// fonts and archives are compressed already.
pub fn worth_compressing(content_type: &str, size: u64) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    (MIN_BYTES..=MAX_BYTES).contains(&size)
        && (essence.starts_with("text/")
            || matches!(
                essence,
                "application/json"
                    | "application/xml"
                    | "application/wasm"
                    | "application/manifest+json"
                    | "image/svg+xml"
                    | "image/x-icon"
            ))
}

/// The encoding to answer with, from an `Accept-Encoding` value: `br` before `gzip` at equal
/// weight, none that the client weighs `q=0`, `*` standing for those not named.
pub fn negotiate(accept: &str) -> Option<Encoding> {
    let mut br: Option<u16> = None;
    let mut gzip: Option<u16> = None;
    let mut any: Option<u16> = None;
    for item in accept.split(',').take(64) {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut weight = 1000u16;
        for param in parts {
            if let Some((name, value)) = param.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                weight = quality(value.trim()).unwrap_or(0);
            }
        }
        match token.as_str() {
            "br" => br = Some(weight),
            "gzip" | "x-gzip" => gzip = Some(weight),
            "*" => any = Some(weight),
            _ => {}
        }
    }
    let br = br.or(any).unwrap_or(0);
    let gzip = gzip.or(any).unwrap_or(0);
    if br > 0 && br >= gzip {
        Some(Encoding::Brotli)
    } else if gzip > 0 {
        Some(Encoding::Gzip)
    } else {
        None
    }
}

/// A `q` value in thousandths (`0`, `0.5`, `1.000`), or `None` when it is not one.
fn quality(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_negotiated_by_weight() {
        assert_eq!(negotiate("gzip, deflate, br, zstd"), Some(Encoding::Brotli));
        assert_eq!(negotiate("gzip"), Some(Encoding::Gzip));
        assert_eq!(negotiate("br;q=0.5, gzip"), Some(Encoding::Gzip));
        assert_eq!(negotiate("br;q=0, gzip;q=0"), None);
        assert_eq!(negotiate("identity"), None);
        assert_eq!(negotiate(""), None);
        assert_eq!(negotiate("*"), Some(Encoding::Brotli));
        assert_eq!(negotiate("*;q=0.1, br;q=0"), Some(Encoding::Gzip));
        assert_eq!(negotiate("gzip;q=2"), None, "not a weight");
        assert_eq!(negotiate("gzip;q=0.001"), Some(Encoding::Gzip));
    }

    #[test]
    fn compressed_bytes_decompress_to_the_original() {
        use std::io::Read as _;
        let text = "<p>hello, pages</p>\n".repeat(200);
        let gz = Encoding::Gzip.compress(text.as_bytes());
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, text);
        assert!(gz.len() < text.len() / 10);
        let br = Encoding::Brotli.compress(text.as_bytes());
        let mut back = Vec::new();
        brotli::BrotliDecompress(&mut &br[..], &mut back).unwrap();
        assert_eq!(back, text.as_bytes());
        assert!(worth_compressing("text/html; charset=utf-8", 4000));
        assert!(!worth_compressing("image/png", 4000));
        assert!(!worth_compressing("text/css", 100));
    }
}
