//! The real binary: starts on a free port, answers health checks, stops on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw)
}

/// The server on a free port and `data`, its upstream a port nothing listens on.
fn spawn(data: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_gitcache-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:1",
        ])
        .arg("--data-dir")
        .arg(data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn serves_health_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut child = spawn(data.path());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "exited early");
        if let Some(addr) = line.trim().strip_prefix("gitcache listening on http://") {
            break addr.to_owned();
        }
    };

    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/readyz").0, 200);
    // Nothing listens upstream: a clear 502, not a hang.
    let (status, body) = get(&addr, "/acme/widgets.git/info/refs?service=git-upload-pack");
    assert_eq!(status, 502);
    assert!(body.contains("the upstream could not be reached"), "{body}");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Draining: still answering, `/readyz` with 503 so that a load balancer stops sending
    // (not a refused connection); the server goes once nobody has been connected for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while get(&addr, "/readyz").0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never turned 503"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(get(&addr, "/healthz").0, 200);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("gitcache stopped"), "{rest}");
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitcache-server"))
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid listen address 'nowhere'"));
    let out = Command::new(env!("CARGO_BIN_EXE_gitcache-server"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let help = Command::new(env!("CARGO_BIN_EXE_gitcache-server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--listen"));
}

#[test]
fn a_data_directory_has_one_server() {
    let data = tempfile::tempdir().unwrap();
    let start = || spawn(data.path());
    let mut first = start();
    let mut stderr = BufReader::new(first.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("gitcache listening on") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "exited early");
    }
    let second = start().wait_with_output().unwrap();
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(
        message.contains("in use by another gitcache process"),
        "{message}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
}
