//! `type: http`: a minimal HTTP/1.1 GET written by hand over a tokio `TcpStream`; the check
//! passes when the status line carries the expected code.

use super::{io_error, CheckError};
use std::net::SocketAddrV4;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Succeeds when `GET path HTTP/1.1` answers with the expected status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// Backend address.
    pub address: SocketAddrV4,
    /// Request path.
    pub path: String,
    /// Expected status code.
    pub expect_status: u16,
}

/// Parses the status code of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
pub fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split_ascii_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

impl HttpCheck {
    /// Runs the check once: `Ok("HTTP <status>")` or why not.
    pub async fn run(&self) -> Result<String, CheckError> {
        let mut stream = TcpStream::connect(self.address)
            .await
            .map_err(|e| io_error("connect", &e))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: lbd-health/{}\r\nConnection: close\r\n\r\n",
            self.path,
            self.address,
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| io_error("send", &e))?;
        // Only the status line matters; read until its end (bounded).
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') {
            if buf.len() > 4096 {
                return Err(CheckError::Failed(
                    "status line longer than 4096 bytes".into(),
                ));
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| io_error("receive", &e))?;
            if n == 0 {
                return Err(CheckError::Failed(
                    "connection closed before a status line".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
        let line = String::from_utf8_lossy(&buf[..end]);
        let status = parse_status_line(line.trim_end()).ok_or_else(|| {
            CheckError::Failed(format!("not an HTTP status line: {:?}", line.trim_end()))
        })?;
        if status == self.expect_status {
            Ok(format!("HTTP {status}"))
        } else {
            Err(CheckError::Failed(format!(
                "HTTP {status}, expected {}",
                self.expect_status
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(
            parse_status_line("HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line("HTTP/2 200"), None);
        assert_eq!(parse_status_line("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line("HTTP/1.1 20 OK"), None);
    }

    async fn http_server(status: &'static str) -> (SocketAddrV4, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = super::super::tests::local(&listener);
        let handle = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (addr, handle)
    }

    #[tokio::test]
    async fn http_check_expects_the_status() {
        let (addr, server) = http_server("204 No Content").await;
        let check = HttpCheck {
            address: addr,
            path: "/healthz".into(),
            expect_status: 204,
        };
        assert_eq!(check.run().await.unwrap(), "HTTP 204");
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );

        let (addr, _server) = http_server("500 Internal Server Error").await;
        let check = HttpCheck {
            address: addr,
            path: "/".into(),
            expect_status: 200,
        };
        assert_eq!(
            check.run().await.unwrap_err(),
            CheckError::Failed("HTTP 500, expected 200".into())
        );
    }
}
