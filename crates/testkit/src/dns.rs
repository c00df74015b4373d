//! A DNS server on loopback that answers TXT questions from a table the test sets, and
//! nothing else (NXDOMAIN): what authorizes pages deploys in tests.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

/// A running responder; it stops with the test process.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

impl DnsServer {
    /// A responder on `127.0.0.1:<free port>` with no records.
    pub fn start() -> std::io::Result<DnsServer> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let server = DnsServer {
            addr: socket.local_addr()?,
            records: Arc::default(),
        };
        let records = Arc::clone(&server.records);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = socket.recv_from(&mut buf) {
                if let Some(answer) = answer(&buf[..n], &records.lock().unwrap()) {
                    let _ = socket.send_to(&answer, peer);
                }
            }
        });
        Ok(server)
    }

    /// Its address (what `--pages-dns-server` takes).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer TXT questions for `name` with `records`.
    pub fn set_txt(&self, name: &str, records: &[&str]) {
        self.records.lock().unwrap().insert(
            name.to_ascii_lowercase(),
            records.iter().map(|r| (*r).to_owned()).collect(),
        );
    }
}

/// The answer to the query `query`: its TXT records, or NXDOMAIN.
fn answer(query: &[u8], records: &HashMap<String, Vec<String>>) -> Option<Vec<u8>> {
    // The question's name, from byte 12 up to its root label.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at + 1..at + 1 + len)?).to_ascii_lowercase());
        at += 1 + len;
    }
    let question_end = at + 5;
    let mut out = query.get(..question_end)?.to_vec();
    out[2] = 0x81; // an answer, recursion desired
    out[3] = 0x80; // recursion available
    let found = records.get(&labels.join("."));
    match found {
        None => out[3] |= 3, // NXDOMAIN
        Some(texts) => {
            out[6..8].copy_from_slice(&(texts.len() as u16).to_be_bytes());
            for text in texts {
                out.extend_from_slice(&[0xC0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
                let chunks: Vec<&[u8]> = text.as_bytes().chunks(255).collect();
                let length: usize = chunks.iter().map(|c| c.len() + 1).sum();
                out.extend_from_slice(&(length as u16).to_be_bytes());
                for chunk in chunks {
                    out.push(chunk.len() as u8);
                    out.extend_from_slice(chunk);
                }
            }
        }
    }
    Some(out)
}
