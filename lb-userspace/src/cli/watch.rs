//! `lbctl stats`: its arguments and `--watch`, which redraws the screen once per interval.

use super::{format, Output};
use crate::api::client::Client;
use crate::api::proto::{Request, StatsSnapshot};
use anyhow::Result;
use clap::Args;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Arguments of `lbctl stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Refresh in place until Ctrl-C (or --count samples).
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes (0.2..=3600).
    #[arg(long, requires = "watch", value_name = "SECS", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Stop after N samples (default: run until Ctrl-C).
    #[arg(long, requires = "watch", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds (e.g. 1 or 0.5)"))?;
    if (0.2..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is out of range: use 0.2 to 3600 seconds"))
    }
}

/// ANSI: cursor home. Each line is followed by "erase to end of line", the screen by "erase
/// below", so the view refreshes in place without flicker.
const HOME: &str = "\x1b[H";
const ERASE_LINE: &str = "\x1b[K";
const ERASE_BELOW: &str = "\x1b[J";
const CLEAR: &str = "\x1b[2J";

/// `lbctl stats --watch`: one sample per `interval` seconds until interrupted (or `count`
/// samples). Human output redraws the screen (and keeps retrying while lbd is unreachable);
/// JSON output prints one compact line per sample and stops at the first error.
pub(super) fn watch_stats(
    socket: &Path,
    output: Output,
    interval: f64,
    count: Option<u64>,
    out: &mut dyn Write,
) -> Result<()> {
    let period = Duration::from_secs_f64(interval);
    let mut client: Option<Client> = None;
    let mut previous: Option<StatsSnapshot> = None;
    let mut next = Instant::now();
    if output == Output::Human {
        write!(out, "{CLEAR}")?;
    }
    let mut taken = 0u64;
    loop {
        let sample = (|| -> Result<StatsSnapshot> {
            // lbd closes connections idle for longer than its request timeout (5 s): when a
            // kept connection fails, try once more on a fresh one (`stats` is read-only).
            if let Some(c) = client.as_mut() {
                match c.call_typed::<StatsSnapshot>(&Request::Stats) {
                    Ok(snap) => return Ok(snap),
                    Err(_) => client = None,
                }
            }
            let c = client.insert(Client::connect(socket)?);
            Ok(c.call_typed::<StatsSnapshot>(&Request::Stats)?)
        })();
        match (output, sample) {
            (Output::Json, Ok(snap)) => {
                writeln!(out, "{}", serde_json::to_string(&snap)?)?;
            }
            (Output::Json, Err(e)) => return Err(e),
            (Output::Human, Ok(snap)) => {
                let body = format::stats(&snap, previous.as_ref(), true);
                let title = format!(
                    "lbctl stats: every {interval}s from {} (Ctrl-C to quit)\n\n",
                    socket.display()
                );
                write_screen(out, &(title + &body))?;
                previous = Some(snap);
            }
            (Output::Human, Err(e)) => {
                client = None;
                previous = None;
                let text =
                    format!("lbctl stats: {e:#}\nretrying every {interval}s (Ctrl-C to quit)\n");
                write_screen(out, &text)?;
            }
        }
        out.flush()?;
        taken += 1;
        if count.is_some_and(|c| taken >= c) {
            return Ok(());
        }
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn write_screen(out: &mut dyn Write, text: &str) -> std::io::Result<()> {
    let mut screen = String::with_capacity(text.len() + 256);
    screen.push_str(HOME);
    for line in text.lines() {
        screen.push_str(line);
        screen.push_str(ERASE_LINE);
        screen.push('\n');
    }
    screen.push_str(ERASE_BELOW);
    out.write_all(screen.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::run_to;
    use crate::cli::test_support::{parse, snapshot, FakeLbd};

    #[test]
    fn human_watch_redraws_with_counter_rates() {
        use crate::api::proto::Response;
        use std::sync::atomic::{AtomicU64, Ordering};
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let fake = FakeLbd::start("watch", |_| {
            let n = CALLS.fetch_add(1, Ordering::SeqCst);
            Response::success(&snapshot(1000 + n * 1000, 100 + n * 250))
        });
        let sock = fake.socket();
        let cli = parse(&[
            "--socket",
            &sock,
            "stats",
            "--watch",
            "--interval",
            "0.2",
            "--count",
            "2",
        ])
        .unwrap();
        let mut out = Vec::new();
        run_to(&cli, &mut out).unwrap();
        fake.finish();
        let text = String::from_utf8(out).unwrap();
        let screens: Vec<&str> = text.split("\x1b[H").collect();
        assert_eq!(screens.len(), 3, "{text:?}");
        assert_eq!(screens[0], "\x1b[2J");
        assert!(
            screens[1].contains("fwd_to_backend          100    -\x1b[K\n"),
            "{:?}",
            screens[1]
        );
        assert!(
            screens[2].contains("fwd_to_backend          350    250\x1b[K\n"),
            "{:?}",
            screens[2]
        );
        assert!(screens[2].ends_with("\x1b[J"));
    }

    /// lbd closes idle API connections; `stats --watch` reconnects instead of failing.
    #[test]
    fn watch_reconnects_when_lbd_closed_the_connection() {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(format!("lbctl-rewatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("lbd.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // Answers one request per connection, then closes it (as lbd does after its idle
        // timeout between two samples).
        let server = std::thread::spawn(move || {
            for n in 0..3u64 {
                let (stream, _) = listener.accept().unwrap();
                let mut w = stream.try_clone().unwrap();
                let mut line = String::new();
                std::io::BufReader::new(stream)
                    .read_line(&mut line)
                    .unwrap();
                let reply = crate::api::proto::Response::success(&snapshot(1000 * (n + 1), n));
                w.write_all(reply.to_line().as_bytes()).unwrap();
            }
        });
        let cli = parse(&[
            "--socket",
            sock.to_str().unwrap(),
            "--output",
            "json",
            "stats",
            "--watch",
            "--interval",
            "0.2",
            "--count",
            "3",
        ])
        .unwrap();
        let mut out = Vec::new();
        let result = run_to(&cli, &mut out);
        let _ = std::fs::remove_dir_all(&dir);
        result.unwrap();
        server.join().unwrap();
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
    }

    #[test]
    fn screen_redraw_erases_leftovers() {
        let mut out = Vec::new();
        write_screen(&mut out, "a\nbb\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\x1b[Ha\x1b[K\nbb\x1b[K\n\x1b[J"
        );
    }
}
