//! `check.type: postgres` of a database cluster: a role probe speaking the PostgreSQL protocol.
//!
//! Each probe opens a fresh connection (so a hung postmaster, which keeps existing sessions
//! alive but accepts no new one, is caught by the timeout), runs [`ROLE_QUERY`] once with the
//! simple-query protocol (one round trip), closes the session politely (Terminate) and turns
//! the answer into a [`MemberObservation`], or the error into one of the other
//! [`MemberProbe`] variants ([`classify_error`]).
//!
//! The protocol, SCRAM-SHA-256 and md5 authentication come from `tokio-postgres` (`NoTls`;
//! TLS to the member is not supported yet). The password is read from `password_file` at every
//! probe, never from the YAML: a rotated password is picked up without a reload, and an
//! unreadable file is a [`MemberProbe::NotRun`] (a problem on this host, not the member's).

use super::local_shortage;
pub use super::role::{MemberObservation, MemberProbe};
use crate::config::format_duration;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// Settings of the PostgreSQL role probe (from a `db_clusters[].check` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresCheck {
    /// Role to log in as (a member of `pg_monitor`, so `pg_stat_wal_receiver` shows the
    /// upstream).
    pub user: String,
    /// Database to connect to (`postgres` by default in the config).
    pub database: String,
    /// File holding the password (one line; a trailing newline is ignored). `None`: no
    /// password (trust or peer-less setups).
    pub password_file: Option<PathBuf>,
    /// Connect timeout and total time of one probe (connect, authenticate, query, close).
    pub timeout: Duration,
}

/// `application_name` of the probe's sessions, so they are recognisable in
/// `pg_stat_activity` and the server log.
pub const APPLICATION_NAME: &str = "lbd-check";

/// The one query of a round. Works on a primary and on a replica as a `pg_monitor` member:
/// primary-only functions are behind a `CASE` on a single, materialised
/// `pg_is_in_recovery()` (a replica promoted during the query cannot make them fail), the
/// primary's timeline comes from its current WAL file name (`pg_control_checkpoint()` lags
/// after a promotion), a replica's from its WAL receiver. At most one row in
/// `pg_stat_wal_receiver`; the `LEFT JOIN` keeps the row when there is none.
pub const ROLE_QUERY: &str = "\
WITH s AS MATERIALIZED (SELECT pg_is_in_recovery() AS in_recovery) \
SELECT s.in_recovery, \
  CASE WHEN s.in_recovery THEN NULL ELSE pg_current_wal_lsn() END AS current_lsn, \
  pg_last_wal_receive_lsn() AS receive_lsn, \
  pg_last_wal_replay_lsn() AS replay_lsn, \
  CASE WHEN s.in_recovery THEN r.received_tli \
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS timeline, \
  (SELECT system_identifier FROM pg_control_system()) AS system_identifier, \
  r.sender_host, r.sender_port, r.status AS receiver_status \
FROM s LEFT JOIN pg_stat_wal_receiver r ON true";

/// Probes the PostgreSQL server at `member` once with `spec`: a fresh connection, one query,
/// at most `spec.timeout` in total. Never panics; every outcome is a [`MemberProbe`].
pub async fn probe(spec: &PostgresCheck, member: SocketAddr) -> MemberProbe {
    let password = match &spec.password_file {
        None => None,
        Some(path) => match read_password(path).await {
            Ok(p) => Some(p),
            Err(e) => return MemberProbe::NotRun(e),
        },
    };
    match tokio::time::timeout(spec.timeout, probe_once(spec, member, password)).await {
        Ok(p) => p,
        Err(_) => MemberProbe::Failed(format!("timed out after {}", format_duration(spec.timeout))),
    }
}

/// Reads the password: the file's content without one trailing newline.
async fn read_password(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut p = tokio::fs::read(path)
        .await
        .map_err(|e| format!("password_file {}: {e}", path.display()))?;
    if p.last() == Some(&b'\n') {
        p.pop();
        if p.last() == Some(&b'\r') {
            p.pop();
        }
    }
    if p.is_empty() {
        return Err(format!("password_file {}: empty", path.display()));
    }
    Ok(p)
}

async fn probe_once(
    spec: &PostgresCheck,
    member: SocketAddr,
    password: Option<Vec<u8>>,
) -> MemberProbe {
    let mut config = tokio_postgres::Config::new();
    config
        .hostaddr(member.ip())
        .port(member.port())
        .user(&spec.user)
        .dbname(&spec.database)
        .application_name(APPLICATION_NAME)
        .ssl_mode(SslMode::Disable)
        .connect_timeout(spec.timeout);
    if let Some(p) = password {
        config.password(p);
    }
    let (client, connection) = match config.connect(NoTls).await {
        Ok(c) => c,
        Err(e) => return classify_error("connect", &e),
    };
    let mut connection = std::pin::pin!(connection);
    let answer = tokio::select! {
        r = client.simple_query(ROLE_QUERY) => r,
        c = &mut connection => {
            return match c {
                Err(e) => classify_error("query", &e),
                Ok(()) => MemberProbe::Failed("query: connection closed by the server".into()),
            };
        }
    };
    // Dropping the client makes the connection send Terminate and finish (the caller's
    // timeout bounds this too).
    drop(client);
    let _ = connection.await;
    match answer {
        Ok(messages) => match observation(&messages) {
            Ok(o) => MemberProbe::Observed(o),
            Err(e) => MemberProbe::Failed(format!("unexpected answer: {e}")),
        },
        Err(e) => classify_error("query", &e),
    }
}

/// The observation in the answer to [`ROLE_QUERY`] (exactly one row).
fn observation(messages: &[SimpleQueryMessage]) -> Result<MemberObservation, String> {
    let mut rows = messages.iter().filter_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    });
    let row = rows.next().ok_or("no row")?;
    if rows.next().is_some() {
        return Err("more than one row".into());
    }
    parse_row(|column| row.try_get(column).ok().flatten())
}

/// Builds the observation from the text columns of [`ROLE_QUERY`]'s row (`get(name)` is
/// `None` for NULL). Errors name the column.
pub fn parse_row<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<MemberObservation, String> {
    let lsn = |column: &str| -> Result<Option<u64>, String> {
        get(column)
            .map(|v| parse_lsn(v).ok_or_else(|| format!("{column} = {v:?} is not an LSN")))
            .transpose()
    };
    let in_recovery = match get("in_recovery") {
        Some("t") => true,
        Some("f") => false,
        other => return Err(format!("in_recovery = {other:?}, expected t or f")),
    };
    let timeline = get("timeline")
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| format!("timeline = {v:?} is not a timeline"))
        })
        .transpose()?;
    // A bigint on the wire: the unsigned control-file value reinterpreted as signed.
    let system_identifier = match get("system_identifier") {
        Some(v) => v
            .parse::<i64>()
            .map(|i| i as u64)
            .map_err(|_| format!("system_identifier = {v:?} is not an integer"))?,
        None => return Err("system_identifier is NULL".into()),
    };
    let upstream = match (get("sender_host"), get("sender_port")) {
        (Some(host), Some(port)) => Some((
            host.to_string(),
            port.parse::<u16>()
                .map_err(|_| format!("sender_port = {port:?} is not a port"))?,
        )),
        _ => None,
    };
    Ok(MemberObservation {
        in_recovery,
        current_lsn: lsn("current_lsn")?,
        receive_lsn: lsn("receive_lsn")?,
        replay_lsn: lsn("replay_lsn")?,
        timeline,
        system_identifier,
        upstream,
        streaming: get("receiver_status") == Some("streaming"),
        patroni_primary: None,
    })
}

/// Parses a PostgreSQL LSN in its text form `X/Y` (two hexadecimal 32-bit halves) into
/// `X << 32 | Y`.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let half = |h: &str| {
        if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            None
        } else {
            u32::from_str_radix(h, 16).ok()
        }
    };
    Some(u64::from(half(hi)?) << 32 | u64::from(half(lo)?))
}

/// Classifies an error of step `step` (`connect`, `query`) of a probe.
///
/// - An error from the server: by SQLSTATE ([`classify_sqlstate`]).
/// - A client-side authentication error (the server asked for a password and none is
///   configured, SCRAM verification failed, unsupported method): [`MemberProbe::AuthFailed`].
/// - An I/O error: a shortage on this host ([`local_shortage`]) is [`MemberProbe::NotRun`];
///   anything else (refused, reset, timed out, closed) is [`MemberProbe::Failed`].
pub fn classify_error(step: &str, e: &tokio_postgres::Error) -> MemberProbe {
    if let Some(db) = e.as_db_error() {
        let detail = format!(
            "{step}: {} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        );
        return classify_sqlstate(db.code(), detail);
    }
    let mut detail = format!("{step}: {e}");
    let mut io = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(&format!(": {s}"));
        if io.is_none() {
            io = s.downcast_ref::<std::io::Error>();
        }
        source = s.source();
    }
    // tokio-postgres has no public error kinds: these two Display texts are its
    // `Kind::Authentication` and `Kind::Config` (the only config error left once connected
    // is "password missing").
    let text = e.to_string();
    let client_auth = text == "authentication error" || text == "invalid configuration";
    classify_client(detail, io, client_auth)
}

/// The classification of errors that did not come from the server (see [`classify_error`]).
pub fn classify_client(
    detail: String,
    io: Option<&std::io::Error>,
    client_auth: bool,
) -> MemberProbe {
    if client_auth {
        return MemberProbe::AuthFailed(detail);
    }
    match io.and_then(local_shortage) {
        Some(reason) => MemberProbe::NotRun(format!("{reason}: {detail}")),
        None => MemberProbe::Failed(detail),
    }
}

/// The classification of a server error by its SQLSTATE:
///
/// | SQLSTATE | meaning | probe |
/// |---|---|---|
/// | class 28 (28P01 invalid_password, 28000 e.g. no `pg_hba.conf` entry) | the check's credentials | `AuthFailed` |
/// | 3D000 invalid_catalog_name, 42501 insufficient_privilege | the check's database or rights | `AuthFailed` |
/// | class 53 (53300 too_many_connections, 53200 out_of_memory, ...) | alive but short of resources | `Overloaded` |
/// | class 57 but 57014 (57P03 cannot_connect_now, 57P01 admin_shutdown, 57P02 crash_shutdown, ...) | starting, stopping, recovering | `NotUsable` |
/// | anything else (57014 query_canceled, 08xxx, XX000, ...) | | `Failed` |
pub fn classify_sqlstate(code: &SqlState, detail: String) -> MemberProbe {
    let class = code.code().get(..2).unwrap_or("");
    if class == "28"
        || *code == SqlState::INVALID_CATALOG_NAME
        || *code == SqlState::INSUFFICIENT_PRIVILEGE
    {
        MemberProbe::AuthFailed(detail)
    } else if class == "53" {
        MemberProbe::Overloaded(detail)
    } else if class == "57" && *code != SqlState::QUERY_CANCELED {
        MemberProbe::NotUsable(detail)
    } else {
        MemberProbe::Failed(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn lsns() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("0/3000148"), Some(0x0300_0148));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_lsn("a/b"), Some(0xa_0000_000b));
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "1/2/3",
            "G/0",
            "100000000/0",
            "0/-1",
            " 0/1",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    fn row<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        let m: HashMap<&str, &str> = pairs.iter().copied().collect();
        move |k| m.get(k).copied()
    }

    #[test]
    fn primary_row() {
        let o = parse_row(row(&[
            ("in_recovery", "f"),
            ("current_lsn", "0/3000148"),
            ("timeline", "2"),
            ("system_identifier", "7311234567890123456"),
        ]))
        .unwrap();
        assert_eq!(
            o,
            MemberObservation {
                in_recovery: false,
                current_lsn: Some(0x0300_0148),
                timeline: Some(2),
                system_identifier: 7_311_234_567_890_123_456,
                ..Default::default()
            }
        );
    }

    #[test]
    fn replica_row() {
        let o = parse_row(row(&[
            ("in_recovery", "t"),
            ("receive_lsn", "1/10"),
            ("replay_lsn", "1/8"),
            ("timeline", "1"),
            ("system_identifier", "-2"),
            ("sender_host", "10.2.1.2"),
            ("sender_port", "5432"),
            ("receiver_status", "streaming"),
        ]))
        .unwrap();
        assert!(o.in_recovery);
        assert_eq!(o.current_lsn, None);
        assert_eq!(o.receive_lsn, Some(0x1_0000_0010));
        assert_eq!(o.replay_lsn, Some(0x1_0000_0008));
        assert_eq!(o.system_identifier, u64::MAX - 1);
        assert_eq!(o.upstream, Some(("10.2.1.2".to_string(), 5432)));
        assert!(o.streaming);
        // A receiver that is not streaming (e.g. "waiting"), or none at all.
        let o = parse_row(row(&[
            ("in_recovery", "t"),
            ("system_identifier", "1"),
            ("receiver_status", "waiting"),
        ]))
        .unwrap();
        assert!(!o.streaming);
        assert_eq!((o.upstream, o.timeline), (None, None));
    }

    #[test]
    fn bad_rows_name_the_column() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("system_identifier", "1")], "in_recovery"),
            (
                &[("in_recovery", "yes"), ("system_identifier", "1")],
                "in_recovery",
            ),
            (&[("in_recovery", "f")], "system_identifier"),
            (
                &[
                    ("in_recovery", "f"),
                    ("system_identifier", "1"),
                    ("current_lsn", "zz"),
                ],
                "current_lsn",
            ),
            (
                &[
                    ("in_recovery", "f"),
                    ("system_identifier", "1"),
                    ("timeline", "-1"),
                ],
                "timeline",
            ),
            (
                &[
                    ("in_recovery", "t"),
                    ("system_identifier", "1"),
                    ("sender_host", "h"),
                    ("sender_port", "70000"),
                ],
                "sender_port",
            ),
        ];
        for (pairs, column) in cases {
            let e = parse_row(row(pairs)).unwrap_err();
            assert!(e.starts_with(column), "{e} should name {column}");
        }
    }

    #[test]
    fn sqlstates() {
        let kind = |s: SqlState| classify_sqlstate(&s, "d".into()).kind();
        assert_eq!(kind(SqlState::INVALID_PASSWORD), "auth_failed");
        assert_eq!(
            kind(SqlState::INVALID_AUTHORIZATION_SPECIFICATION),
            "auth_failed"
        );
        assert_eq!(kind(SqlState::INVALID_CATALOG_NAME), "auth_failed");
        assert_eq!(kind(SqlState::INSUFFICIENT_PRIVILEGE), "auth_failed");
        assert_eq!(kind(SqlState::TOO_MANY_CONNECTIONS), "overloaded");
        assert_eq!(kind(SqlState::OUT_OF_MEMORY), "overloaded");
        assert_eq!(kind(SqlState::CANNOT_CONNECT_NOW), "not_usable");
        assert_eq!(kind(SqlState::ADMIN_SHUTDOWN), "not_usable");
        assert_eq!(kind(SqlState::CRASH_SHUTDOWN), "not_usable");
        assert_eq!(kind(SqlState::QUERY_CANCELED), "failed");
        assert_eq!(kind(SqlState::CONNECTION_FAILURE), "failed");
        assert_eq!(kind(SqlState::INTERNAL_ERROR), "failed");
        assert_eq!(kind(SqlState::from_code("XY123")), "failed");
    }

    #[test]
    fn client_errors() {
        let os = std::io::Error::from_raw_os_error;
        assert_eq!(
            classify_client("d".into(), Some(&os(libc::ECONNREFUSED)), false),
            MemberProbe::Failed("d".into())
        );
        assert_eq!(
            classify_client("d".into(), Some(&os(libc::EMFILE)), false),
            MemberProbe::NotRun("emfile: d".into())
        );
        assert_eq!(
            classify_client("d".into(), None, true),
            MemberProbe::AuthFailed("d".into())
        );
        assert_eq!(classify_client("d".into(), None, false).kind(), "failed");
        // The one tokio-postgres error a caller can build.
        assert_eq!(
            classify_error("query", &tokio_postgres::Error::__private_api_timeout()).kind(),
            "failed"
        );
    }

    /// A fake server that reads the startup packet and answers with `reply`, then waits for
    /// the client to go away.
    async fn fake_server(reply: Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let len = s.read_u32().await.unwrap() as usize;
            let mut rest = vec![0u8; len - 4];
            s.read_exact(&mut rest).await.unwrap();
            s.write_all(&reply).await.unwrap();
            let mut sink = [0u8; 256];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        addr
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn error_response(code: &str, text: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (field, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', code), (b'M', text)] {
            body.push(field);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        message(b'E', &body)
    }

    fn spec(timeout_ms: u64) -> PostgresCheck {
        PostgresCheck {
            user: "lb_check".into(),
            database: "postgres".into(),
            password_file: None,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    /// Real tokio-postgres errors from a fake server, classified end to end.
    #[tokio::test]
    async fn server_errors_are_classified() {
        for (code, text, kind) in [
            ("53300", "sorry, too many clients already", "overloaded"),
            ("57P03", "the database system is starting up", "not_usable"),
            (
                "57P03",
                "the database system is shutting down",
                "not_usable",
            ),
            (
                "28P01",
                "password authentication failed for user \"lb_check\"",
                "auth_failed",
            ),
            ("28000", "no pg_hba.conf entry for host", "auth_failed"),
            ("3D000", "database \"nope\" does not exist", "auth_failed"),
            ("XX000", "internal error", "failed"),
        ] {
            let addr = fake_server(error_response(code, text)).await;
            let p = probe(&spec(2000), addr).await;
            assert_eq!(p.kind(), kind, "{code}: {p:?}");
            let reason = p.reason().unwrap();
            assert!(reason.contains(code) && reason.contains(text), "{reason}");
        }
    }

    #[tokio::test]
    async fn password_asked_but_none_configured_is_an_auth_failure() {
        // AuthenticationCleartextPassword (3) and AuthenticationMD5Password (5, with a salt).
        for body in [&3u32.to_be_bytes()[..], &[0, 0, 0, 5, 1, 2, 3, 4][..]] {
            let addr = fake_server(message(b'R', body)).await;
            match probe(&spec(2000), addr).await {
                MemberProbe::AuthFailed(why) => assert!(why.contains("password missing"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn refused_and_hung_servers_fail() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        match probe(&spec(1000), addr).await {
            MemberProbe::Failed(why) => assert!(why.starts_with("connect: "), "{why}"),
            other => panic!("{other:?}"),
        }
        // Accepts (the kernel does) but never answers the startup packet.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            probe(&spec(200), addr).await,
            MemberProbe::Failed("timed out after 200ms".into())
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
        // A server that closes the connection at once.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            drop(s);
        });
        assert_eq!(probe(&spec(1000), addr).await.kind(), "failed");
    }

    #[tokio::test]
    async fn password_file_problems_are_not_run() {
        let mut s = spec(500);
        s.password_file = Some("/nonexistent/lb-check.pass".into());
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        match probe(&s, addr).await {
            MemberProbe::NotRun(why) => {
                assert!(
                    why.starts_with("password_file /nonexistent/lb-check.pass: "),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        let dir = std::env::temp_dir().join(format!("lb-pgcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("empty");
        std::fs::write(&file, "\n").unwrap();
        s.password_file = Some(file.clone());
        assert_eq!(probe(&s, addr).await.kind(), "not_run");
        std::fs::write(&file, "s3cret\r\n").unwrap();
        assert_eq!(read_password(&file).await.unwrap(), b"s3cret");
        std::fs::write(&file, "with space \n\n").unwrap();
        assert_eq!(read_password(&file).await.unwrap(), b"with space \n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
