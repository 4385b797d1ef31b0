//! Retrying kernel calls whose failure can be transient.
//!
//! The verifier gives up with `EAGAIN` when a signal is pending for the loading task (it checks
//! `signal_pending()` between instructions, and lb_xdp takes over a second to verify on a busy
//! 2-core host), and with `ENOMEM` when an allocation for its state lists fails under memory
//! pressure; neither says anything about the program. libbpf retries `BPF_PROG_LOAD` on
//! `EAGAIN`; aya does not, and it reports the error of its last attempt (made with a verifier
//! log). lbd and the test lab load through [`retry_transient`] so a transient refusal costs a
//! short wait instead of a failed start.

use std::io;
use std::time::Duration;

/// Attempts of a call that fails transiently, the first included.
pub const ATTEMPTS: usize = 4;

/// Wait before the n-th retry (n = 1, 2, ...): 100 ms, 400 ms, 900 ms.
pub fn backoff(retry: usize) -> Duration {
    let n = retry as u64;
    Duration::from_millis(100 * n * n)
}

/// Whether a syscall error can go away by itself: `EAGAIN`, `EINTR` or `ENOMEM`. A verifier
/// rejection (`EACCES`, `EINVAL`, `E2BIG`, `ENOSPC` of a truncated log, ...) cannot.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ENOMEM)
    )
}

/// Runs `op` up to `attempts` times while it fails with an error for which `transient` returns
/// `Some(errno error)`, sleeping [`backoff`] between attempts and calling `on_retry` with the
/// attempt number that failed and its error. Returns the first success, the first
/// non-transient error, or the last error with the number of attempts made.
pub fn retry_transient<T, E>(
    attempts: usize,
    mut op: impl FnMut() -> Result<T, E>,
    transient: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(usize, &E),
    sleep: impl Fn(Duration),
) -> Result<T, (usize, E)> {
    let mut attempt = 1;
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if attempt < attempts && transient(&e) => {
                on_retry(attempt, &e);
                sleep(backoff(attempt));
                attempt += 1;
            }
            Err(e) => return Err((attempt, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    #[test]
    fn transient_errors_are_retried_until_success() {
        let answers = RefCell::new(vec![
            Ok(7),
            Err(errno(libc::ENOMEM)),
            Err(errno(libc::EAGAIN)),
        ]);
        let retried = RefCell::new(Vec::new());
        let slept = RefCell::new(Vec::new());
        let r = retry_transient(
            ATTEMPTS,
            || answers.borrow_mut().pop().unwrap(),
            is_transient,
            |n, e: &io::Error| retried.borrow_mut().push((n, e.raw_os_error())),
            |d| slept.borrow_mut().push(d),
        );
        assert_eq!(r.unwrap(), 7);
        assert_eq!(
            *retried.borrow(),
            vec![(1, Some(libc::EAGAIN)), (2, Some(libc::ENOMEM))]
        );
        assert_eq!(
            *slept.borrow(),
            vec![Duration::from_millis(100), Duration::from_millis(400)]
        );
    }

    #[test]
    fn a_verifier_rejection_is_not_retried() {
        let calls = RefCell::new(0);
        let r: Result<(), _> = retry_transient(
            ATTEMPTS,
            || {
                *calls.borrow_mut() += 1;
                Err(errno(libc::EACCES))
            },
            is_transient,
            |_, _| {},
            |_| {},
        );
        let (attempts, e) = r.unwrap_err();
        assert_eq!((attempts, e.raw_os_error()), (1, Some(libc::EACCES)));
        assert_eq!(*calls.borrow(), 1);
    }

    #[test]
    fn retries_are_bounded() {
        let calls = RefCell::new(0);
        let r: Result<(), _> = retry_transient(
            ATTEMPTS,
            || {
                *calls.borrow_mut() += 1;
                Err(errno(libc::EAGAIN))
            },
            is_transient,
            |_, _| {},
            |_| {},
        );
        let (attempts, e) = r.unwrap_err();
        assert_eq!((attempts, e.raw_os_error()), (ATTEMPTS, Some(libc::EAGAIN)));
        assert_eq!(*calls.borrow(), ATTEMPTS);
    }
}
