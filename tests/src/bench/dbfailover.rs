//! Section 6: database failover (issue 11). Detection-to-switch time of the write VIP when the
//! PostgreSQL primary dies and a replica is promoted, lb (PostgreSQL checks every 250 ms, fall
//! 2, rise 2) next to HAProxy with Patroni-style checks (`option httpchk GET /primary`,
//! `inter 3s fall 3 rise 2`, `on-marked-down shutdown-sessions`), in the same lab.
//!
//! Patroni itself is not needed: a tiny responder per member (in the member's namespace, port
//! 8008) answers `GET /primary` with 200 only while its local instance says
//! `pg_is_in_recovery() = false`, and 503 otherwise or when it cannot ask, which is what
//! Patroni's `/primary` does.
//!
//! One round: a fresh cluster (n1 primary), the balancer up, a writer through the write VIP
//! committing every 10 ms on one session (a new one after any error); n1 killed (SIGKILL of
//! every postgres process) and n2 promoted at once. Measured: the time from the kill to the
//! first successful write after which no write failed (all later writes land on n2).

use super::report::{Measurement, Section};
use super::Scale;
use crate::lab::client::{self, spawn_in_netns};
use crate::lab::postgres::{self as pg, member_addr, write_vip, DbSpec, PgLab, DB_VIP};
use crate::lab::sys::{self, ns_command, Proc};
use crate::lab::Mode;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Patroni REST port the responders listen on.
pub const RESPONDER_PORT: u16 = pg::PATRONI_PORT;

/// HAProxy's write service with Patroni-style checks (the configuration Patroni's docs give).
pub fn haproxy_config() -> String {
    let mut c = format!(
        "global\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n\
         listen pg-write\n  bind {DB_VIP}:{}\n  option httpchk GET /primary\n  http-check expect status 200\n  \
         default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions\n",
        pg::WRITE_PORT
    );
    for i in 1..=pg::MEMBERS {
        c.push_str(&format!(
            "  server n{i} {} check port {RESPONDER_PORT}\n",
            member_addr(i)
        ));
    }
    c
}

/// Answers `GET /primary` on `member`'s address: 200 while the instance is a primary, 503
/// otherwise (also when the check cannot connect within 1 s). Runs until `stop`.
async fn responder(i: usize, stop: Arc<AtomicBool>) -> crate::lab::Result<()> {
    let listen = std::net::SocketAddr::from((*member_addr(i).ip(), RESPONDER_PORT));
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(crate::lab::LabError::io(format!("binding {listen}")))?;
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((mut s, _))) = tokio::time::timeout(Duration::from_millis(200), l.accept()).await
        else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
            let primary = async {
                let sess = pg::connect_as(
                    member_addr(i).into(),
                    pg::CHECK_USER,
                    pg::CHECK_PASSWORD,
                    Duration::from_secs(1),
                )
                .await?;
                sess.query_one("SELECT pg_is_in_recovery()", Duration::from_secs(1))
                    .await
            }
            .await;
            let status = match primary {
                Ok(Some(v)) if v == "f" => "200 OK",
                _ => "503 Service Unavailable",
            };
            let resp =
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
    Ok(())
}

/// The balancer under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Balancer {
    Lb,
    Haproxy,
}

impl Balancer {
    fn name(self) -> &'static str {
        match self {
            Balancer::Lb => "lb native (postgres check 250 ms, fall 2, rise 2)",
            Balancer::Haproxy => "HAProxy + Patroni-style /primary (inter 3s fall 3 rise 2)",
        }
    }
}

/// One round: returns the detection-to-switch time in milliseconds.
fn round(b: Balancer) -> Result<f64, String> {
    let e = |e: crate::lab::LabError| e.to_string();
    let mut l = PgLab::new(Mode::Native).map_err(e)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut responders = Vec::new();
    let mut haproxy: Option<Proc> = None;
    match b {
        Balancer::Lb => {
            let yaml = pg::db_lbd_yaml(&l.lab, &l.pg, &DbSpec::default());
            l.lab.start_lbd_text(&yaml).map_err(e)?;
        }
        Balancer::Haproxy => {
            for i in 1..=pg::MEMBERS {
                let s = stop.clone();
                responders.push(spawn_in_netns(
                    std::path::PathBuf::from(format!("/run/netns/{}", l.pg.member(i).ns)),
                    move || responder(i, s),
                ));
            }
            sys::ip(&[
                "-n",
                l.lab.balancer_ns(),
                "addr",
                "add",
                &format!("{DB_VIP}/32"),
                "dev",
                "lo",
            ])
            .map_err(e)?;
            let cfg = l.lab.dir().join("haproxy-db.cfg");
            std::fs::write(&cfg, haproxy_config()).map_err(|x| x.to_string())?;
            let mut cmd = ns_command(l.lab.balancer_ns(), "haproxy");
            cmd.arg("-db").arg("-f").arg(&cfg);
            haproxy = Some(
                Proc::spawn(
                    &mut cmd,
                    "haproxy",
                    Some(&l.lab.dir().join("haproxy-db.log")),
                )
                .map_err(e)?,
            );
        }
    }
    let outcome = measure(&l);
    stop.store(true, Ordering::Relaxed);
    for r in responders {
        let _ = r.join();
    }
    if let Some(mut p) = haproxy {
        p.stop(libc::SIGTERM, Duration::from_secs(5));
    }
    outcome
}

fn measure(l: &PgLab) -> Result<f64, String> {
    let t = Duration::from_secs(2);
    let client_ns = l.lab.client_path();
    // Ready: a write through the VIP lands on n1.
    sys::wait_for(
        "a write through the write VIP",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            client::run_in_netns(client_ns.clone(), move || async move {
                pg::connect(write_vip(), t)
                    .await?
                    .write("bench", 0, t)
                    .await
            })
            .ok()
            .filter(|ip| ip == member_addr(1).ip())
        },
    )
    .map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let begin = Instant::now();
    let writer = spawn_in_netns(client_ns, move || async move {
        let mut log: Vec<(Duration, Option<Ipv4Addr>)> = Vec::new();
        let mut session: Option<pg::Session> = None;
        let mut seq = 0;
        while !s2.load(Ordering::Relaxed) && begin.elapsed() < Duration::from_secs(60) {
            seq += 1;
            if session.as_ref().is_none_or(pg::Session::is_closed) {
                session = pg::connect(write_vip(), Duration::from_millis(500))
                    .await
                    .ok();
            }
            let r = match &session {
                Some(s) => s.write("bench", seq, Duration::from_millis(500)).await.ok(),
                None => None,
            };
            if r.is_none() {
                session = None;
            }
            log.push((begin.elapsed(), r));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(log)
    });
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = begin.elapsed();
    let r = l.pg.kill(1).and_then(|()| l.pg.promote(2));
    // Long enough for inter 3s x fall 3 (+ rise) with room.
    let limit = Duration::from_secs(25);
    let n2 = *member_addr(2).ip();
    let settled = |log: &[(Duration, Option<Ipv4Addr>)]| {
        let last_bad = log
            .iter()
            .rposition(|(at, w)| *at >= killed_at && *w != Some(n2));
        match last_bad {
            Some(k) => log.get(k + 1).map(|(at, _)| *at),
            None => log
                .iter()
                .find(|(at, _)| *at >= killed_at)
                .map(|(at, _)| *at),
        }
    };
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let log = client::join(writer).map_err(|e| e.to_string())?;
    r.map_err(|e| e.to_string())?;
    // The switch must have held for the last 3 s of the window.
    let at = settled(&log).ok_or("no write after the kill")?;
    if begin.elapsed().saturating_sub(at) < Duration::from_secs(3) {
        return Err(format!(
            "writes had not settled on n2 within {limit:?} of the kill"
        ));
    }
    Ok((at - killed_at).as_secs_f64() * 1e3)
}

/// Runs the section: `rounds` rounds of each balancer, alternating.
pub fn run(scale: Scale) -> Section {
    let mut sec = Section::new(
        "db_failover",
        "Database failover: detection-to-switch time of the write VIP",
        "PostgreSQL 15, a primary and two streaming replicas in the lab's backend namespaces; a \
         writer through the write VIP commits every 10 ms (one session, a new one after an \
         error). The primary is killed (SIGKILL of every postgres process) and a replica \
         promoted at once (`pg_ctl promote`). Reported: milliseconds from the kill to the \
         first write after which every write succeeded on the new primary. HAProxy runs the \
         configuration Patroni's documentation gives (`option httpchk GET /primary`, `inter \
         3s fall 3 rise 2`, `on-marked-down shutdown-sessions`) against a responder per \
         member that answers like Patroni's `/primary`; lb runs its PostgreSQL role check \
         (every 250 ms, fall 2, rise 2). A fresh cluster per round; the variants alternate.",
    );
    let rounds = scale.rounds();
    let mut runs: [(Balancer, Vec<f64>, Option<String>); 2] = [
        (Balancer::Lb, Vec::new(), None),
        (Balancer::Haproxy, Vec::new(), None),
    ];
    for _ in 0..rounds {
        for (b, values, err) in &mut runs {
            match round(*b) {
                Ok(v) => values.push(v),
                Err(e) => *err = Some(e),
            }
        }
    }
    for (b, values, err) in runs {
        let m = if values.is_empty() {
            Measurement::not_measured(err.unwrap_or_else(|| "no round ran".into()))
        } else {
            Measurement::from_runs(values)
        };
        sec.push(
            "primary killed, replica promoted",
            b.name(),
            "ms to switch",
            m,
        );
    }
    sec.add_ratio(
        "HAProxy + Patroni-style checks / lb, detection-to-switch",
        "ms to switch",
        ("primary killed, replica promoted", Balancer::Haproxy.name()),
        ("primary killed, replica promoted", Balancer::Lb.name()),
    );
    sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_config_checks_every_member_like_patroni() {
        let c = haproxy_config();
        assert!(c.contains("bind 192.0.2.20:5432"), "{c}");
        assert!(c.contains("option httpchk GET /primary"), "{c}");
        assert!(c.contains("inter 3s fall 3 rise 2"), "{c}");
        for i in 1..=3 {
            assert!(
                c.contains(&format!("server n{i} 10.1.{i}.2:5432 check port 8008")),
                "{c}"
            );
        }
    }
}
