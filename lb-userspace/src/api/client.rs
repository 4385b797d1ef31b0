//! A blocking client of lbd's control socket (used by `lbctl` and the tests).
//!
//! One [`Client`] is one connection: each [`Client::call`] writes one request line and reads
//! one response line, both bounded by the client's timeout (5 s by default). Errors say what
//! failed and what to do about it, in one line.

use super::proto::{ProtoError, Request, Response, MAX_RESPONSE_BYTES};
use serde::de::DeserializeOwned;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a call may wait for lbd (connect, write and read each) by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of talking to lbd.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to.
    #[error("cannot reach lbd at {path}: {hint} ({reason})", path = .path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What to check (e.g. "is lbd running?").
        hint: &'static str,
        /// The OS reason, short (e.g. "connection refused").
        reason: String,
    },
    /// lbd did not answer within the timeout.
    #[error("lbd at {path} did not answer within {secs} s (is it stuck? see its log)", path = .path.display(), secs = .timeout.as_secs_f64())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// lbd closed the connection before answering.
    #[error("lbd at {path} closed the connection without answering (see its log)", path = .path.display())]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// lbd's answer was longer than [`MAX_RESPONSE_BYTES`].
    #[error("lbd's response is longer than {MAX_RESPONSE_BYTES} bytes; refusing it")]
    TooLong,
    /// Any other I/O error on the connection.
    #[error("talking to lbd at {path}: {source}", path = .path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// lbd rejected the request: its error message, verbatim.
    #[error("{0}")]
    Server(String),
    /// lbd answered something that is not a valid response.
    #[error("unexpected answer from lbd (is lbctl the same version as lbd?): {0}")]
    Protocol(ProtoError),
}

impl From<ProtoError> for ClientError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::Server(message) => ClientError::Server(message),
            other => ClientError::Protocol(other),
        }
    }
}

/// A connection to lbd's control socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path` with [`DEFAULT_TIMEOUT`].
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Connects to the socket at `path`; every later read and write waits at most `timeout`.
    pub fn connect_with_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|e| connect_error(&path, &e))?;
        let io = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            path,
            timeout,
        })
    }

    /// The socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `request` and returns the response's data, or the server's error as
    /// [`ClientError::Server`].
    pub fn call(&mut self, request: &Request) -> Result<serde_json::Value, ClientError> {
        Ok(self.exchange(request)?.into_data()?)
    }

    /// Like [`Client::call`], decoding the data as `T`.
    pub fn call_typed<T: DeserializeOwned>(&mut self, request: &Request) -> Result<T, ClientError> {
        Ok(self.exchange(request)?.into_typed(request.command())?)
    }

    /// Sends `request` and returns the raw [`Response`] (either shape).
    pub fn exchange(&mut self, request: &Request) -> Result<Response, ClientError> {
        let line = request.to_line();
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
            .map_err(|e| self.io_error(e))?;
        let mut buf = Vec::new();
        let limit = MAX_RESPONSE_BYTES as u64;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.io_error(e))?;
        if n == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        if buf.last() != Some(&b'\n') {
            return Err(if n as u64 >= limit {
                ClientError::TooLong
            } else {
                ClientError::Closed {
                    path: self.path.clone(),
                }
            });
        }
        let text = String::from_utf8_lossy(&buf);
        Ok(Response::from_line(&text)?)
    }

    fn io_error(&self, source: std::io::Error) -> ClientError {
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout {
                path: self.path.clone(),
                timeout: self.timeout,
            },
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof => {
                ClientError::Closed {
                    path: self.path.clone(),
                }
            }
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }
}

/// Maps a connect failure to an error with a hint an operator can act on.
fn connect_error(path: &Path, e: &std::io::Error) -> ClientError {
    let (hint, reason) = match e.kind() {
        ErrorKind::ConnectionRefused => ("is lbd running?", "connection refused".to_string()),
        ErrorKind::NotFound => ("is lbd running?", "no such socket".to_string()),
        ErrorKind::PermissionDenied => (
            "the socket is root-only, run lbctl as root",
            "permission denied".to_string(),
        ),
        _ => ("is lbd running and is --socket right?", e.to_string()),
    };
    ClientError::Connect {
        path: path.to_path_buf(),
        hint,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A socket path in a fresh temporary directory (removed by the guard).
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "lbctl-client-{tag}-{}-{:?}",
                std::process::id(),
                thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn sock(&self) -> PathBuf {
            self.0.join("lbd.sock")
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Serves one connection: for each request line, answers with `answer(line)`
    /// (`None` closes the connection).
    fn serve(
        listener: UnixListener,
        answer: impl Fn(&str) -> Option<String> + Send + 'static,
    ) -> thread::JoinHandle<Vec<String>> {
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(stream).lines() {
                let line = line.unwrap();
                seen.push(line.clone());
                match answer(&line) {
                    Some(reply) => writer.write_all(reply.as_bytes()).unwrap(),
                    None => break,
                }
            }
            seen
        })
    }

    #[test]
    fn refused_and_missing_sockets_give_the_documented_line() {
        let dir = TempDir::new("refused");
        let err = Client::connect(dir.sock()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach lbd at {}: is lbd running? (no such socket)",
                dir.sock().display()
            )
        );
        // A socket file nobody listens on: connection refused.
        drop(UnixListener::bind(dir.sock()).unwrap());
        let err = Client::connect(dir.sock()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot reach lbd at {}: is lbd running? (connection refused)",
                dir.sock().display()
            )
        );
    }

    #[test]
    fn calls_send_one_line_and_read_one_line() {
        let dir = TempDir::new("calls");
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let server = serve(listener, |line| {
            let req = Request::from_line(line).unwrap();
            Some(match req {
                Request::Status => Response::success(&"fine").to_line(),
                other => Response::failure(format!("{} refused", other.command())).to_line(),
            })
        });
        let mut client = Client::connect(dir.sock()).unwrap();
        assert_eq!(
            client.call(&Request::Status).unwrap(),
            serde_json::json!("fine")
        );
        let s: String = client.call_typed(&Request::Status).unwrap();
        assert_eq!(s, "fine");
        match client.call(&Request::Reload) {
            Err(ClientError::Server(m)) => assert_eq!(m, "reload refused"),
            other => panic!("unexpected {other:?}"),
        }
        drop(client);
        let seen = server.join().unwrap();
        assert_eq!(
            seen,
            vec![
                "{\"command\":\"status\"}",
                "{\"command\":\"status\"}",
                "{\"command\":\"reload\"}"
            ]
        );
    }

    #[test]
    fn silent_server_times_out() {
        let dir = TempDir::new("timeout");
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            // Read the request, never answer, hold the connection until the client is gone.
            let mut r = BufReader::new(stream);
            let mut s = String::new();
            r.read_line(&mut s).unwrap();
            let _ = r.read_line(&mut s);
        });
        let mut client =
            Client::connect_with_timeout(dir.sock(), Duration::from_millis(200)).unwrap();
        let err = client.call(&Request::Status).unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("did not answer within 0.2 s"));
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn closed_and_garbage_answers_are_errors() {
        let dir = TempDir::new("closed");
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let server = serve(listener, |_| None);
        let mut client = Client::connect(dir.sock()).unwrap();
        let err = client.call(&Request::Status).unwrap_err();
        assert!(matches!(err, ClientError::Closed { .. }), "{err:?}");
        server.join().unwrap();

        let dir = TempDir::new("garbage");
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let server = serve(listener, |_| Some("hello\n".to_string()));
        let mut client = Client::connect(dir.sock()).unwrap();
        let err = client.call(&Request::Status).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        drop(client);
        server.join().unwrap();
    }
}
