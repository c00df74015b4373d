//! TXT lookups for deploy authorization: one query over UDP to a configured DNS server, its
//! answer read strictly (the server and the network are not trusted).

use std::net::SocketAddr;
use std::time::Duration;

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// A name DNS cannot carry.
    #[error("not a DNS name: {0:?}")]
    Name(String),
    /// No answer in time, or the socket failed.
    #[error("DNS: {0}")]
    Io(#[from] std::io::Error),
    /// An answer that is not one to this query.
    #[error("DNS answer: {0}")]
    Answer(&'static str),
}

const TXT: u16 = 16;
const IN: u16 = 1;

/// The query for the TXT records of `name`, with `id`.
pub fn query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(name.len() + 18);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // a query, recursion desired
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    encode_name(&mut out, name)?;
    out.extend_from_slice(&TXT.to_be_bytes());
    out.extend_from_slice(&IN.to_be_bytes());
    Ok(out)
}

fn encode_name(out: &mut Vec<u8>, name: &str) -> Result<(), DnsError> {
    let bad = || DnsError::Name(name.to_owned());
    let name = name.trim_end_matches('.');
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 || !label.is_ascii() {
            return Err(bad());
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    Ok(())
}

/// Read a name at `at` (following compression, at most 16 pointers) as lower-case text;
/// returns it and where the name ends in the message.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(DnsError::Answer("cut short"))? as usize;
        if len & 0xC0 == 0xC0 {
            let low = *msg.get(at + 1).ok_or(DnsError::Answer("cut short"))? as usize;
            end.get_or_insert(at + 2);
            at = ((len & 0x3F) << 8) | low;
            continue;
        }
        if len & 0xC0 != 0 {
            return Err(DnsError::Answer("a label type gitcache does not read"));
        }
        if len == 0 {
            return Ok((name, end.unwrap_or(at + 1)));
        }
        let label = msg
            .get(at + 1..at + 1 + len)
            .ok_or(DnsError::Answer("cut short"))?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        if name.len() > 255 {
            return Err(DnsError::Answer("a name too long"));
        }
        at += 1 + len;
    }
    Err(DnsError::Answer("a name of too many labels or pointers"))
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    msg.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(DnsError::Answer("cut short"))
}

/// The TXT records of `name` in the answer `msg` to query `id` (each record's strings
/// joined, as git-pages compares them). A name that does not exist has none.
pub fn txt_records(id: u16, name: &str, msg: &[u8]) -> Result<Vec<String>, DnsError> {
    if u16_at(msg, 0)? != id {
        return Err(DnsError::Answer("another query's id"));
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Answer("not an answer"));
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError::Answer("truncated"));
    }
    match flags & 0x000F {
        0 => {}
        3 => return Ok(Vec::new()),
        _ => return Err(DnsError::Answer("the server failed")),
    }
    let (questions, answers) = (u16_at(msg, 4)?, u16_at(msg, 6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = read_name(msg, at)?.1 + 4;
    }
    let wanted = name.trim_end_matches('.').to_ascii_lowercase();
    let mut records = Vec::new();
    for _ in 0..answers {
        let (owner, after) = read_name(msg, at)?;
        let (kind, class) = (u16_at(msg, after)?, u16_at(msg, after + 2)?);
        let length = u16_at(msg, after + 8)? as usize;
        let data = msg
            .get(after + 10..after + 10 + length)
            .ok_or(DnsError::Answer("cut short"))?;
        at = after + 10 + length;
        if kind != TXT || class != IN || owner != wanted {
            continue;
        }
        let mut text = Vec::new();
        let mut i = 0;
        while i < data.len() {
            let n = data[i] as usize;
            text.extend_from_slice(
                data.get(i + 1..i + 1 + n)
                    .ok_or(DnsError::Answer("cut short"))?,
            );
            i += 1 + n;
        }
        records.push(String::from_utf8_lossy(&text).into_owned());
        if records.len() > 64 {
            return Err(DnsError::Answer("too many records"));
        }
    }
    Ok(records)
}

/// The TXT records of `name`, asked of the DNS server at `server`, within `timeout`.
pub async fn lookup_txt(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Vec<String>, DnsError> {
    // An id an off-path sender cannot guess (with the random source port): hashed with keys
    // the process drew from the system's randomness, not read off the clock.
    let id = {
        use std::hash::BuildHasher;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::hash::RandomState::new().hash_one(nanos) as u16
    };
    let question = query(id, name)?;
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = tokio::net::UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(&question).await?;
    let mut buf = vec![0u8; 4096];
    let answered = tokio::time::timeout(timeout, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            // Answers to other ids (stale, forged) are passed over.
            match txt_records(id, name, &buf[..n]) {
                Err(DnsError::Answer("another query's id")) => continue,
                other => return other,
            }
        }
    })
    .await;
    answered.map_err(|_| DnsError::Io(std::io::Error::other("no answer in time")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_and_answers_read() {
        let q = query(7, "_git-pages-challenge.Site.Example.").unwrap();
        assert_eq!(&q[..2], &[0, 7]);
        // An answer: the question, then one TXT record through a compression pointer.
        let mut answer = q.clone();
        answer[2] = 0x81;
        answer[3] = 0x80;
        answer[7] = 1;
        answer.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
        answer.extend_from_slice(&[0, 6, 3, b'a', b'b', b'c', 1, b'd']);
        assert_eq!(
            txt_records(7, "_git-pages-challenge.site.example", &answer).unwrap(),
            ["abcd"]
        );
        assert!(txt_records(8, "_git-pages-challenge.site.example", &answer).is_err());
        for end in 0..answer.len() {
            let _ = txt_records(7, "x", &answer[..end]);
        }
        assert!(query(1, "").is_err());
        assert!(query(1, &"a".repeat(64)).is_err());
    }
}
