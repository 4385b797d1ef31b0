//! Prometheus text exposition (format 0.0.4) of a [`StatsSnapshot`], and a minimal HTTP/1.1
//! server answering `GET /metrics` on `metrics_listen`. Every metric is documented in
//! docs/metrics.md.

use crate::api::proto::{Health, StatsSnapshot};
use std::fmt::Write as _;
use std::future::Future;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Escapes a label value (`\`, `"` and newlines).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders `snap` as Prometheus text.
pub fn render(snap: &StatsSnapshot) -> String {
    let mut out = String::with_capacity(4096);
    family(
        &mut out,
        "lb_packets_total",
        "counter",
        "Packets seen by the XDP program, by verdict reason (events ct_backend_down, ct_syn_reuse and new_flow count on top).",
    );
    for (reason, v) in &snap.counters {
        let _ = writeln!(out, "lb_packets_total{{reason=\"{}\"}} {v}", esc(reason));
    }

    type SvcField = fn(&crate::api::proto::ServiceStats) -> u64;
    let svc_counters: [(&str, &str, &str, SvcField); 7] = [
        (
            "lb_service_packets_in_total",
            "counter",
            "Packets forwarded client -> backend.",
            |s| s.packets_in,
        ),
        (
            "lb_service_bytes_in_total",
            "counter",
            "Bytes (whole frames) forwarded client -> backend.",
            |s| s.bytes_in,
        ),
        (
            "lb_service_packets_out_total",
            "counter",
            "Packets forwarded backend -> client.",
            |s| s.packets_out,
        ),
        (
            "lb_service_bytes_out_total",
            "counter",
            "Bytes (whole frames) forwarded backend -> client.",
            |s| s.bytes_out,
        ),
        (
            "lb_service_new_flows_total",
            "counter",
            "Flows created.",
            |s| s.new_flows,
        ),
        (
            "lb_service_refused_total",
            "counter",
            "SYNs refused with a RST because no backend was usable.",
            |s| s.refused,
        ),
        (
            "lb_service_active_flows",
            "gauge",
            "Live flows at the last conntrack sweep.",
            |s| s.active_flows,
        ),
    ];
    for (name, kind, help, get) in svc_counters {
        family(&mut out, name, kind, help);
        for s in &snap.services {
            let _ = writeln!(
                out,
                "{name}{{service=\"{}\",vip=\"{}\",port=\"{}\"}} {}",
                esc(&s.name),
                s.vip,
                s.port,
                get(s)
            );
        }
    }

    type BeField = fn(&crate::api::proto::BackendStats) -> u64;
    let be_counters: [(&str, &str, &str, BeField); 9] = [
        (
            "lb_backend_packets_in_total",
            "counter",
            "Packets forwarded client -> backend.",
            |b| b.packets_in,
        ),
        (
            "lb_backend_bytes_in_total",
            "counter",
            "Bytes (whole frames) forwarded client -> backend.",
            |b| b.bytes_in,
        ),
        (
            "lb_backend_packets_out_total",
            "counter",
            "Packets forwarded backend -> client.",
            |b| b.packets_out,
        ),
        (
            "lb_backend_bytes_out_total",
            "counter",
            "Bytes (whole frames) forwarded backend -> client.",
            |b| b.bytes_out,
        ),
        (
            "lb_backend_new_flows_total",
            "counter",
            "Flows created.",
            |b| b.new_flows,
        ),
        (
            "lb_backend_active_flows",
            "gauge",
            "Live flows at the last conntrack sweep.",
            |b| b.active_flows,
        ),
        (
            "lb_backend_health_transitions_total",
            "counter",
            "Health transitions since the backend was added.",
            |b| b.transitions,
        ),
        (
            "lb_backend_in_table",
            "gauge",
            "1 when the backend is in the service's Maglev table (gets new flows).",
            |b| u64::from(b.in_table),
        ),
        ("lb_backend_weight", "gauge", "Maglev weight.", |b| {
            u64::from(b.weight)
        }),
    ];
    for (name, kind, help, get) in be_counters {
        family(&mut out, name, kind, help);
        for s in &snap.services {
            for b in &s.backends {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\",backend=\"{}\"}} {}",
                    esc(&s.name),
                    b.address,
                    get(b)
                );
            }
        }
    }
    family(
        &mut out,
        "lb_backend_health",
        "gauge",
        "1 for the backend's current health state (up, down, unknown), 0 for the others.",
    );
    for s in &snap.services {
        for b in &s.backends {
            for (state, h) in [
                ("up", Health::Up),
                ("down", Health::Down),
                ("unknown", Health::Unknown),
            ] {
                let _ = writeln!(
                    out,
                    "lb_backend_health{{service=\"{}\",backend=\"{}\",state=\"{state}\"}} {}",
                    esc(&s.name),
                    b.address,
                    u8::from(b.health == h)
                );
            }
        }
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves; `snapshot` produces the data.
pub async fn serve<F, S>(listener: TcpListener, snapshot: F, shutdown: S)
where
    F: Fn() -> StatsSnapshot + Send + Sync + Clone + 'static,
    S: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf);
            let first = head.lines().next().unwrap_or("");
            let mut parts = first.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) =
                if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
                    (
                        "200 OK",
                        "text/plain; version=0.0.4; charset=utf-8",
                        render(&snapshot()),
                    )
                } else if method == "GET" {
                    (
                        "404 Not Found",
                        "text/plain; charset=utf-8",
                        "only /metrics is served\n".to_string(),
                    )
                } else {
                    (
                        "405 Method Not Allowed",
                        "text/plain; charset=utf-8",
                        "only GET is supported\n".to_string(),
                    )
                };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::{BackendStats, ServiceStats};
    use std::collections::BTreeMap;

    fn snap() -> StatsSnapshot {
        let b = BackendStats {
            address: "10.1.1.2:8080".parse().unwrap(),
            id: 1,
            weight: 2,
            backup: false,
            health: Health::Down,
            drained: false,
            in_table: false,
            active_flows: 3,
            new_flows: 9,
            packets_in: 100,
            bytes_in: 6400,
            packets_out: 90,
            bytes_out: 5000,
            new_flows_per_sec: 0.0,
            packets_per_sec: 0.0,
            bytes_per_sec: 0.0,
            transitions: 1,
            last_transition: None,
        };
        StatsSnapshot {
            timestamp_ms: 0,
            services: vec![ServiceStats {
                name: "web".into(),
                vip: "192.0.2.10".parse().unwrap(),
                port: 80,
                health_check: "tcp".into(),
                active_flows: 3,
                new_flows: 9,
                refused: 4,
                packets_in: 100,
                bytes_in: 6400,
                packets_out: 90,
                bytes_out: 5000,
                new_flows_per_sec: 0.0,
                packets_per_sec: 0.0,
                bytes_per_sec: 0.0,
                backends: vec![b],
            }],
            counters: lb_common::COUNTER_NAMES
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i as u64))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn renders_every_family() {
        let text = render(&snap());
        assert!(text.contains("lb_packets_total{reason=\"drop_snat_exhausted\"} 12\n"));
        assert!(text.contains(
            "lb_service_refused_total{service=\"web\",vip=\"192.0.2.10\",port=\"80\"} 4\n"
        ));
        assert!(text
            .contains("lb_backend_new_flows_total{service=\"web\",backend=\"10.1.1.2:8080\"} 9\n"));
        assert!(text.contains(
            "lb_backend_health{service=\"web\",backend=\"10.1.1.2:8080\",state=\"down\"} 1\n"
        ));
        assert!(text.contains(
            "lb_backend_health{service=\"web\",backend=\"10.1.1.2:8080\",state=\"up\"} 0\n"
        ));
        assert!(text.contains(
            "lb_backend_health_transitions_total{service=\"web\",backend=\"10.1.1.2:8080\"} 1\n"
        ));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }

    #[tokio::test]
    async fn serves_get_metrics() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, snap, async {
            let _ = rx.await;
        }));
        for (req, want) in [
            (
                "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "HTTP/1.1 200 OK",
            ),
            ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            assert!(resp.starts_with(want), "{resp}");
            if want.ends_with("200 OK") {
                assert!(resp.contains("lb_packets_total{reason=\"new_flow\"} 20"));
            }
        }
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
