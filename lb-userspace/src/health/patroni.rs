//! `check.type: patroni` of a database cluster: `GET /primary` and `GET /replica` on the
//! member's Patroni REST address, concurrently, each over a fresh HTTP/1.1 connection (hyper's
//! client connection, no pool).
//!
//! - `/primary` 200 (and `/replica` not): the member is Patroni's leader
//!   (`patroni_primary = Some(true)`, `in_recovery = false`);
//! - `/replica` 200 (and `/primary` not): a running replica (`Some(false)`, `in_recovery = true`);
//! - neither (Patroni answers 503 to both while PostgreSQL is stopped, starting, or a replica
//!   is excluded, e.g. `noloadbalance` or lagging beyond `?lag`) or both (never seen; a
//!   confused node): [`MemberProbe::NotUsable`];
//! - no answer (refused, reset, timeout, not HTTP): [`MemberProbe::Failed`].
//!
//! The JSON document Patroni sends with either answer fills the rest of the observation when
//! present: `timeline`, `database_system_identifier`, `xlog.location` (primary),
//! `xlog.received_location` / `xlog.replayed_location` (replica), and `replication_state ==
//! "streaming"`. Patroni does not say which upstream a replica streams from: `upstream` stays
//! `None`.

use super::local_shortage;
use super::role::{MemberObservation, MemberProbe};
use crate::config::format_duration;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{header, Request};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Settings of the Patroni role probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatroniCheck {
    /// Total time of one probe (both requests run concurrently within it).
    pub timeout: Duration,
}

/// Largest response body read (Patroni's documents are well under 4 KiB).
const MAX_BODY: usize = 64 * 1024;

/// Probes the Patroni REST API at `patroni` once: `GET /primary` and `GET /replica`
/// concurrently, at most `spec.timeout` in total.
pub async fn probe(spec: &PatroniCheck, patroni: SocketAddr) -> MemberProbe {
    let both = async { tokio::join!(get(patroni, "/primary"), get(patroni, "/replica")) };
    match tokio::time::timeout(spec.timeout, both).await {
        Err(_) => MemberProbe::Failed(format!("timed out after {}", format_duration(spec.timeout))),
        Ok((Err(e), _)) | Ok((_, Err(e))) => e,
        Ok((Ok(primary), Ok(replica))) => from_answers(primary, replica),
    }
}

/// One answer: status code and body.
type Answer = (u16, Bytes);

/// The probe outcome from the answers to `/primary` and `/replica`.
pub fn from_answers(primary: Answer, replica: Answer) -> MemberProbe {
    let is_primary = match (primary.0, replica.0) {
        (200, 200) => {
            return MemberProbe::NotUsable("both /primary and /replica answered 200".into())
        }
        (200, _) => true,
        (_, 200) => false,
        (p, r) => {
            return MemberProbe::NotUsable(format!(
                "not primary nor replica (/primary {p}, /replica {r}){}",
                state_suffix(&primary.1)
            ))
        }
    };
    let body = if is_primary { &primary.1 } else { &replica.1 };
    MemberProbe::Observed(observation(is_primary, body))
}

/// `, state <state>` when the document carries Patroni's PostgreSQL state.
fn state_suffix(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("state")?.as_str().map(|s| format!(", state {s}")))
        .unwrap_or_default()
}

/// The observation for a member Patroni calls primary (or replica), with what its JSON
/// document says (fields missing or malformed are left unset).
pub fn observation(is_primary: bool, body: &[u8]) -> MemberObservation {
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let xlog = |k: &str| {
        doc.get("xlog")
            .and_then(|x| x.get(k))
            .and_then(|v| v.as_u64())
    };
    let system_identifier = match doc.get("database_system_identifier") {
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        Some(v) => v.as_u64().unwrap_or(0),
        None => 0,
    };
    MemberObservation {
        in_recovery: !is_primary,
        current_lsn: if is_primary { xlog("location") } else { None },
        receive_lsn: xlog("received_location"),
        replay_lsn: xlog("replayed_location"),
        timeline: doc
            .get("timeline")
            .and_then(|t| t.as_u64())
            .and_then(|t| u32::try_from(t).ok()),
        system_identifier,
        upstream: None,
        streaming: doc.get("replication_state").and_then(|s| s.as_str()) == Some("streaming"),
        patroni_primary: Some(is_primary),
    }
}

/// `GET path` over a fresh connection: the status and (bounded) body, or the failed probe.
async fn get(addr: SocketAddr, path: &str) -> Result<Answer, MemberProbe> {
    let io_failure = |what: &str, e: &std::io::Error| {
        let detail = format!("GET {path}: {what}: {e}");
        match local_shortage(e) {
            Some(reason) => MemberProbe::NotRun(format!("{reason}: {detail}")),
            None => MemberProbe::Failed(detail),
        }
    };
    let http_failure = |e: &dyn std::fmt::Display| MemberProbe::Failed(format!("GET {path}: {e}"));
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| io_failure("connect", &e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_failure(&e))?;
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(
            header::USER_AGENT,
            concat!("lbd-check/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| http_failure(&e))?;
    // The exchange owns the sender: when it ends, the connection task ends too.
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http_failure(&e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| http_failure(&e))?
            .to_bytes();
        Ok((status, body))
    };
    let (answer, _) = tokio::join!(exchange, connection);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A Patroni 3.0 leader's document (trimmed).
    const LEADER: &str = r#"{"state": "running", "postmaster_start_time": "2026-11-27 18:00:00.1+00:00",
        "role": "master", "server_version": 150018, "xlog": {"location": 67110088}, "timeline": 2,
        "replication": [{"usename": "replicator", "application_name": "n2", "client_addr": "10.2.2.2",
        "state": "streaming", "sync_state": "async", "sync_priority": 0}],
        "dcs_last_seen": 1796000000, "database_system_identifier": "7311234567890123456",
        "patroni": {"version": "3.0.2", "scope": "pg"}}"#;

    /// A Patroni 3.0 replica's document (trimmed).
    const REPLICA: &str = r#"{"state": "running", "role": "replica", "server_version": 150018,
        "xlog": {"received_location": 67110088, "replayed_location": 67109000,
        "replayed_timestamp": null, "paused": false}, "timeline": 2,
        "replication_state": "streaming", "dcs_last_seen": 1796000000,
        "database_system_identifier": "7311234567890123456",
        "patroni": {"version": "3.0.2", "scope": "pg"}}"#;

    #[test]
    fn leader_and_replica_documents() {
        let MemberProbe::Observed(o) = from_answers(
            (200, Bytes::from_static(LEADER.as_bytes())),
            (503, Bytes::from_static(LEADER.as_bytes())),
        ) else {
            panic!("not observed")
        };
        assert_eq!(
            o,
            MemberObservation {
                in_recovery: false,
                current_lsn: Some(67_110_088),
                receive_lsn: None,
                replay_lsn: None,
                timeline: Some(2),
                system_identifier: 7_311_234_567_890_123_456,
                upstream: None,
                streaming: false,
                patroni_primary: Some(true),
            }
        );
        let MemberProbe::Observed(o) = from_answers(
            (503, Bytes::from_static(REPLICA.as_bytes())),
            (200, Bytes::from_static(REPLICA.as_bytes())),
        ) else {
            panic!("not observed")
        };
        assert!(o.in_recovery && o.streaming);
        assert_eq!(o.patroni_primary, Some(false));
        assert_eq!((o.current_lsn, o.receive_lsn), (None, Some(67_110_088)));
        assert_eq!(o.replay_lsn, Some(67_109_000));
        // Not JSON: the role still counts, the rest is unknown.
        let MemberProbe::Observed(o) =
            from_answers((200, Bytes::new()), (503, Bytes::from_static(b"<html>")))
        else {
            panic!("not observed")
        };
        assert_eq!(o.patroni_primary, Some(true));
        assert_eq!((o.system_identifier, o.timeline), (0, None));
    }

    #[test]
    fn neither_or_both_is_not_usable() {
        let stopped = Bytes::from_static(br#"{"state": "stopped", "role": "replica"}"#);
        assert_eq!(
            from_answers((503, stopped.clone()), (503, stopped)),
            MemberProbe::NotUsable(
                "not primary nor replica (/primary 503, /replica 503), state stopped".into()
            )
        );
        assert_eq!(
            from_answers((200, Bytes::new()), (200, Bytes::new())).kind(),
            "not_usable"
        );
    }

    /// A fake Patroni REST API answering `/primary` with `primary` and `/replica` with
    /// `replica` (HTTP/1.0 style: body then close, as Python's http.server does).
    async fn fake_patroni(primary: u16, replica: u16, body: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(m) => n += m,
                        }
                    }
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = if req.starts_with("GET /primary ") {
                        primary
                    } else if req.starts_with("GET /replica ") {
                        replica
                    } else {
                        404
                    };
                    let head = format!(
                        "HTTP/1.0 {status} X\r\nServer: BaseHTTP/0.6 Python/3.11.2\r\nContent-Type: application/json\r\n\r\n"
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(body.as_bytes()).await;
                });
            }
        });
        addr
    }

    fn spec() -> PatroniCheck {
        PatroniCheck {
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn probes_a_rest_api() {
        let leader = fake_patroni(200, 503, LEADER).await;
        match probe(&spec(), leader).await {
            MemberProbe::Observed(o) => {
                assert_eq!(o.patroni_primary, Some(true));
                assert_eq!(o.current_lsn, Some(67_110_088));
            }
            other => panic!("{other:?}"),
        }
        let replica = fake_patroni(503, 200, REPLICA).await;
        match probe(&spec(), replica).await {
            MemberProbe::Observed(o) => assert_eq!(o.patroni_primary, Some(false)),
            other => panic!("{other:?}"),
        }
        let stopped = fake_patroni(503, 503, r#"{"state": "starting"}"#).await;
        assert_eq!(
            probe(&spec(), stopped).await,
            MemberProbe::NotUsable(
                "not primary nor replica (/primary 503, /replica 503), state starting".into()
            )
        );
    }

    #[tokio::test]
    async fn refused_and_silent_apis_fail() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        match probe(&spec(), addr).await {
            MemberProbe::Failed(why) => assert!(why.contains(": connect: "), "{why}"),
            other => panic!("{other:?}"),
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let check = PatroniCheck {
            timeout: Duration::from_millis(150),
        };
        assert_eq!(
            probe(&check, addr).await,
            MemberProbe::Failed("timed out after 150ms".into())
        );
        drop(listener);
    }
}
