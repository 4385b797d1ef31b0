//! `type: tcp`: the check passes when a TCP connection to the backend can be opened.

use super::{io_error, CheckError};
use std::net::SocketAddrV4;
use tokio::net::TcpStream;

/// Succeeds when a TCP connection to the backend can be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpCheck {
    /// Backend address.
    pub address: SocketAddrV4,
}

impl TcpCheck {
    /// Runs the check once: `Ok("connected")` or why not.
    pub async fn run(&self) -> Result<String, CheckError> {
        TcpStream::connect(self.address)
            .await
            .map(|_| "connected".to_string())
            .map_err(|e| io_error("connect", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn tcp_check_connects_or_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = super::super::tests::local(&listener);
        assert!(TcpCheck { address: addr }.run().await.is_ok());
        drop(listener);
        let err = TcpCheck { address: addr }.run().await.unwrap_err();
        // Connection refused is the backend's answer: a failure, not "could not run".
        match err {
            CheckError::Failed(reason) => assert!(reason.starts_with("connect:"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
