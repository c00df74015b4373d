//! A fake of the two GitHub REST endpoints a GitHub App uses to act as an installation:
//! `GET /repos/{owner}/{repo}/installation` and `POST /app/installations/{id}/access_tokens`,
//! on loopback. Both check the App's JWT (RS256, signed with [`APP_KEY`], issued by the App
//! id given, not expired, at most ten minutes long) as GitHub does; tokens are handed out
//! from a list, each valid for the lifetime given, so that expiry and renewal can be tested.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A GitHub App private key for tests only (RSA 2048, PKCS#1 as GitHub hands keys out).
pub const APP_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEpQIBAAKCAQEAvJ+a5xk5s2650io88M+Qr2yLx1Pe8eWf+PzHhNHXurtX1bET
7r/o6Cy8BLxGhSv3kC7f868WlNFKuihnFf9wsmSxLtk5C51nJAeYnO1ZW//QmlH2
1eRGvLqBrdamw6ymd59CDBH4Y+dT0HR6e6ur4raK9z9xMfAxx5cdR6XHX8V1Rxy3
vpA709Sk66WxI64vO2XRJ44+BsOyb26SVOe9ZtNmJYPtnJV1MkGY+2lmEol7M6AI
A86TzEUy0wbgenpHMc58W1Og7XQoeE2ByY/6dnEceKpen/LayesColSbGSMUoe/Z
f0AMPdeywO7IBj6GRVOv+WI+a902ua0xPquX8QIDAQABAoIBACt+I+Ios2DX5bn7
qkyel86TWVGvWaduWqo3YywRlMxGWXT5HU7+ak5qzjnLTfl0D2PsIxCV7T+IWNI+
8bIlUc+YnzBdvyUZ+Mfahoqcwe+QN4H151QfjF4FJVS3u4FABKxtiPWuiRdEJlPZ
H8r3ZS1kCPwE4W1x5JCQnBxCsgu3XvwI59VozOnp3P7uiwlTwxzcbMPAPTrgoaX8
X6FO9X3BAiJTBlNCXG0vJdJ8BvZ2n+g+xy+IorlQ0FsULCY6fiaEase/k+zTJNje
Y1dfPLKeKFHmNN6vjBhlKhqvNa6HH3P1SGR5G38zs7JNlDF96to2Ku+ZHPIuiqPu
q4gad88CgYEA7IQbS3Om5jy9eWgn5yOGTwmJYFFKQ0M2MyrTXBs1OtnDzOMpQAsr
GgDz1rZlPc4d2eh6SfLy7F7lALb9BlP9EzOgGt0dvUZsfXt7T2OKMD0JQ7AyBKMb
4ZS0uf28zkeYzlncrq70cSuSOXwalLPLTXbDveLRw8LSsijXlNzM/jcCgYEAzCl9
jNBCG1gkenyC2K6Uvxcpby6piiPNy5eu7crLEaeBZDqikEF4DLa+pLSs2qUbtLFh
tJLhmImDgXy4BBsTu2rA1BglG0VDhm3jWIcZHBNtTYMl7iUMzEPaWKvjnLYVHwUe
/pGOKG/FvgOpZCtkLmCvLo/ko9aYTm6b3nR8xxcCgYEAtvIUvs8tiSfwk6laPDLB
X/+LcKJQZCjoEroMlVFCYkwxZRlNPgmlhE66Thn1w9HcS0LE3NB80RMx5dSlcTCk
MCcdr8nbiB2iK4nJPwZKzLdZpC708ZtNJLdG+Brp4VGGRA9EYSZZU/SU/bweP2m3
VysHi6iYAul+2mo3HyGPuw8CgYEAtJINxTl8/opa2Sq+376pOMnXj8qJkPBR2Dv0
L8UpDhhEzM0/cq806qnGvA5Aw7E8a/hnHjq65RrbAO+6IYeBUEX+/pfMWe5M5tzS
Mz5p6vcTuXbBWXvTceahe8OrsLMqwyDYZPd/8CvLjV/Xtgzaslo5FsmVw4LNerFB
kuMcaUkCgYEAuTlB2EEfaF5xXtnrMS/UzZ9eA+UW2Xu6H+hWaVKUruUrAc5t9zCW
athc8dTDJ+YgO7ekI1KV6Kdm94fY4UAOt8mIYZlfhPZ9kn2xE1ek2iotj8TQRbMf
3Q73LDEGUYf5gCzCOBtSJXAFDfwZKOrawAiGnBQdBVcwpOWGbf8wDkk=
-----END RSA PRIVATE KEY-----
";

/// The public half of [`APP_KEY`].
const APP_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAvJ+a5xk5s2650io88M+Q
r2yLx1Pe8eWf+PzHhNHXurtX1bET7r/o6Cy8BLxGhSv3kC7f868WlNFKuihnFf9w
smSxLtk5C51nJAeYnO1ZW//QmlH21eRGvLqBrdamw6ymd59CDBH4Y+dT0HR6e6ur
4raK9z9xMfAxx5cdR6XHX8V1Rxy3vpA709Sk66WxI64vO2XRJ44+BsOyb26SVOe9
ZtNmJYPtnJV1MkGY+2lmEol7M6AIA86TzEUy0wbgenpHMc58W1Og7XQoeE2ByY/6
dnEceKpen/LayesColSbGSMUoe/Zf0AMPdeywO7IBj6GRVOv+WI+a902ua0xPquX
8QIDAQAB
-----END PUBLIC KEY-----
";

/// The installation every repository belongs to.
pub const INSTALLATION: u64 = 4711;

#[derive(Debug, Default)]
struct State {
    lookups: usize,
    minted: Vec<String>,
    refused: usize,
}

/// A running fake; it stops taking connections when dropped.
#[derive(Debug)]
pub struct FakeGitHub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeGitHub {
    /// A fake for the App `app_id` that mints `tokens` in turn (the last again once all are
    /// out), each expiring `lifetime` after it is minted, its `expires_at` written by
    /// `timestamp` (seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`).
    pub fn start(
        app_id: &str,
        tokens: &[&str],
        lifetime: Duration,
        timestamp: fn(i64) -> String,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let fake = FakeGitHub {
            addr: listener.local_addr()?,
            state: Arc::default(),
        };
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(APP_PUBLIC_KEY.as_bytes())
            .map_err(std::io::Error::other)?;
        let (state, app_id) = (Arc::clone(&fake.state), app_id.to_owned());
        let tokens: Vec<String> = tokens.iter().map(|t| (*t).to_owned()).collect();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if Arc::strong_count(&state) == 1 {
                    return;
                }
                let minting = Minting {
                    tokens: &tokens,
                    lifetime,
                    timestamp,
                };
                let _ = answer(stream, &state, &key, &app_id, &minting);
            }
        });
        Ok(fake)
    }

    /// The API URL (what `--github-api-url` takes).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many installation lookups were answered.
    pub fn lookups(&self) -> usize {
        self.state.lock().unwrap().lookups
    }

    /// The tokens minted so far, in order.
    pub fn minted(&self) -> Vec<String> {
        self.state.lock().unwrap().minted.clone()
    }

    /// How many requests were refused for a missing or bad JWT.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        // Wakes the accepting thread, which then sees it is alone and stops.
        let state = std::mem::take(&mut self.state);
        drop(state);
        let _ = TcpStream::connect(self.addr);
    }
}

#[derive(serde::Deserialize)]
struct Claims {
    iat: u64,
    exp: u64,
}

/// What tokens are handed out, and how their expiry is written.
struct Minting<'a> {
    tokens: &'a [String],
    lifetime: Duration,
    timestamp: fn(i64) -> String,
}

fn answer(
    stream: TcpStream,
    state: &Mutex<State>,
    key: &jsonwebtoken::DecodingKey,
    app_id: &str,
    minting: &Minting<'_>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            match name.to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_owned()),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let valid = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|jwt| {
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_issuer(&[app_id]);
            validation.set_required_spec_claims(&["exp", "iat", "iss"]);
            jsonwebtoken::decode::<Claims>(jwt, key, &validation)
                .is_ok_and(|data| data.claims.exp.saturating_sub(data.claims.iat) <= 600)
        });
    let (status, json) = if !valid {
        state.lock().unwrap().refused += 1;
        (
            "401 Unauthorized",
            r#"{"message":"A JSON web token could not be decoded"}"#.to_owned(),
        )
    } else if method == "GET" && path.starts_with("/repos/") && path.ends_with("/installation") {
        state.lock().unwrap().lookups += 1;
        ("200 OK", format!(r#"{{"id":{INSTALLATION},"app_id":1}}"#))
    } else if method == "POST" && path == format!("/app/installations/{INSTALLATION}/access_tokens")
    {
        let mut state = state.lock().unwrap();
        let token = minting
            .tokens
            .get(state.minted.len())
            .or(minting.tokens.last())
            .cloned()
            .unwrap_or_default();
        state.minted.push(token.clone());
        let expires = (SystemTime::now() + minting.lifetime)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (
            "201 Created",
            format!(
                r#"{{"token":"{token}","expires_at":"{}"}}"#,
                (minting.timestamp)(expires)
            ),
        )
    } else {
        ("404 Not Found", r#"{"message":"Not Found"}"#.to_owned())
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )?;
    stream.flush()
}
