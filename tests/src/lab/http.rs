//! The minimal HTTP/1.1 the lab's clients and test servers speak: requests and responses with
//! `Content-Length` bodies, keep-alive by default, and the deterministic byte pattern bulk
//! transfers carry.

use super::{LabError, Result};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// Byte `offset` of the deterministic pattern (splitmix64 of the 8-byte block index), so a
/// transfer's content is known to both sides without being stored.
pub fn pattern_byte(offset: u64) -> u8 {
    let mut z = (offset / 8).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    z.to_le_bytes()[(offset % 8) as usize]
}

/// Fills `buf` with the pattern starting at `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// SHA-256 (hex) of the first `len` bytes of the pattern.
pub fn pattern_sha256(len: u64) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        fill_pattern(off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    hex(&h.finalize())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed request or response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The first line split on spaces: `[method, target, version]` or
    /// `[version, status, reason...]`.
    pub start: Vec<String>,
    /// Value of `Content-Length` (0 when absent).
    pub content_length: u64,
    /// `Connection: close` was present.
    pub close: bool,
}

/// Parses a head (everything up to and excluding the blank line).
pub fn parse_head(text: &str) -> Result<Head> {
    let mut lines = text.split("\r\n");
    let start: Vec<String> = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if start.len() < 2 {
        return Err(LabError::Http(format!("bad start line in {text:?}")));
    }
    let mut content_length = 0;
    let mut close = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| LabError::Http(format!("bad header line {line:?}")))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| LabError::Http(format!("bad Content-Length {value:?}")))?;
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(Head {
        start,
        content_length,
        close,
    })
}

/// Reads one head from `r`; `Ok(None)` on a clean EOF before any byte.
pub async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> Result<Option<Head>> {
    let mut text = String::new();
    loop {
        let before = text.len();
        let n = r
            .read_line(&mut text)
            .await
            .map_err(|e| LabError::Http(format!("reading head: {e}")))?;
        if n == 0 {
            if text.is_empty() {
                return Ok(None);
            }
            return Err(LabError::Http(format!("EOF inside head {text:?}")));
        }
        if text.len() > MAX_HEAD {
            return Err(LabError::Http("head too large".into()));
        }
        if &text[before..] == "\r\n" {
            text.truncate(before);
            return parse_head(text.trim_end_matches("\r\n")).map(Some);
        }
    }
}

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive client connection.
pub struct HttpConn {
    stream: BufReader<TcpStream>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl HttpConn {
    /// Connects to `addr` within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<HttpConn> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| LabError::Http(format!("connect to {addr}: timed out after {timeout:?}")))?
            .map_err(|e| LabError::Http(format!("connect to {addr}: {e}")))?;
        stream
            .set_nodelay(true)
            .map_err(|e| LabError::Http(format!("nodelay: {e}")))?;
        let local = stream
            .local_addr()
            .map_err(|e| LabError::Http(format!("local_addr: {e}")))?;
        let peer = stream
            .peer_addr()
            .map_err(|e| LabError::Http(format!("peer_addr: {e}")))?;
        Ok(HttpConn {
            stream: BufReader::with_capacity(64 * 1024, stream),
            local,
            peer,
        })
    }

    /// The connection's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connection's peer address as the client sees it.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    async fn send_head(&mut self, method: &str, path: &str, body_len: u64) -> Result<()> {
        let head =
            format!("{method} {path} HTTP/1.1\r\nHost: lab\r\nContent-Length: {body_len}\r\n\r\n");
        self.stream
            .get_mut()
            .write_all(head.as_bytes())
            .await
            .map_err(|e| LabError::Http(format!("sending {method} {path}: {e}")))
    }

    async fn recv_head(&mut self, what: &str) -> Result<Head> {
        let head = read_head(&mut self.stream).await?.ok_or_else(|| {
            LabError::Http(format!("{what}: connection closed before the response"))
        })?;
        Ok(head)
    }

    fn status(head: &Head) -> Result<u16> {
        head.start[1]
            .parse()
            .map_err(|_| LabError::Http(format!("bad status {:?}", head.start)))
    }

    /// Sends a request with `body` and reads the whole response.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Response> {
        self.send_head(method, path, body.len() as u64).await?;
        self.stream
            .get_mut()
            .write_all(body)
            .await
            .map_err(|e| LabError::Http(format!("sending body: {e}")))?;
        let head = self.recv_head(path).await?;
        let mut body = vec![0u8; head.content_length as usize];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|e| LabError::Http(format!("{method} {path}: reading body: {e}")))?;
        Ok(Response {
            status: Self::status(&head)?,
            body,
        })
    }

    /// `GET path`, streaming the body through SHA-256; returns (status, length, hex digest).
    /// `on_progress` is called with the bytes received so far after every read.
    pub async fn get_hashed(
        &mut self,
        path: &str,
        mut on_progress: impl FnMut(u64),
    ) -> Result<(u16, u64, String)> {
        self.send_head("GET", path, 0).await?;
        let head = self.recv_head(path).await?;
        let mut h = Sha256::new();
        let mut left = head.content_length;
        let mut got = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = self
                .stream
                .read(&mut buf[..want])
                .await
                .map_err(|e| LabError::Http(format!("GET {path}: after {got} bytes: {e}")))?;
            if n == 0 {
                return Err(LabError::Http(format!(
                    "GET {path}: connection closed after {got} of {} bytes",
                    head.content_length
                )));
            }
            h.update(&buf[..n]);
            left -= n as u64;
            got += n as u64;
            on_progress(got);
        }
        Ok((Self::status(&head)?, got, hex(&h.finalize())))
    }

    /// `POST path` with `len` bytes of the pattern as body (generated on the fly); returns the
    /// response.
    pub async fn post_pattern(&mut self, path: &str, len: u64) -> Result<Response> {
        self.send_head("POST", path, len).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            fill_pattern(off, &mut buf[..n]);
            self.stream
                .get_mut()
                .write_all(&buf[..n])
                .await
                .map_err(|e| LabError::Http(format!("POST {path}: after {off} bytes: {e}")))?;
            off += n as u64;
        }
        let head = self.recv_head(path).await?;
        let mut body = vec![0u8; head.content_length as usize];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|e| LabError::Http(format!("POST {path}: reading body: {e}")))?;
        Ok(Response {
            status: Self::status(&head)?,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_not_periodic() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        fill_pattern(1000, &mut a);
        fill_pattern(1000, &mut b);
        assert_eq!(a, b);
        assert_eq!(a[0], pattern_byte(1000));
        let mut c = vec![0u8; 4096];
        fill_pattern(1000 + 256, &mut c);
        assert_ne!(a, c);
        assert_ne!(pattern_sha256(1000), pattern_sha256(1001));
        // sha256 of the empty input.
        assert_eq!(
            pattern_sha256(0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn heads_parse() {
        let h =
            parse_head("GET /id HTTP/1.1\r\nHost: x\r\ncontent-length: 12\r\nConnection: close")
                .unwrap();
        assert_eq!(h.start, ["GET", "/id", "HTTP/1.1"]);
        assert_eq!(h.content_length, 12);
        assert!(h.close);
        assert!(parse_head("garbage").is_err());
        assert!(parse_head("GET / HTTP/1.1\r\nContent-Length: x").is_err());
        assert!(parse_head("GET / HTTP/1.1\r\nno colon").is_err());
    }
}
