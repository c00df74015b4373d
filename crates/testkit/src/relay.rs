//! A TCP relay on loopback that can be cut: what a test puts between gitcache and a server
//! (the object store) to take that server away and bring it back without losing its data.
//!
//! While cut, new connections are closed at once and every open one is shut down, so a
//! client sees the server as unreachable (not merely slow).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A running relay; it stops taking connections when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Relay {
    /// Relay `127.0.0.1:<free port>` to `target`, up.
    pub fn start(target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let relay = Relay {
            addr: listener.local_addr()?,
            up: Arc::new(AtomicBool::new(true)),
            open: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (up, open, stop) = (
            Arc::clone(&relay.up),
            Arc::clone(&relay.open),
            Arc::clone(&relay.stop),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                if !up.load(Ordering::Acquire) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                {
                    let mut open = open.lock().unwrap();
                    open.retain(|s| s.peer_addr().is_ok());
                    open.extend(client.try_clone().ok());
                    open.extend(server.try_clone().ok());
                }
                std::thread::spawn(move || pipe(client, server2));
                std::thread::spawn(move || pipe(server, client2));
            }
        });
        Ok(relay)
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cut the relay (`false`: every open connection is shut, new ones are refused) or
    /// restore it.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        if !up {
            for stream in self.open.lock().unwrap().drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.set_up(false);
        // Wake the accept loop so that it sees the stop.
        let _ = TcpStream::connect(self.addr);
    }
}
