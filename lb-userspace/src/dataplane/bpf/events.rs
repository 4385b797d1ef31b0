//! The passive-detection ring buffer as an epoll-driven event source.

use super::*;

/// The [`MAP_EVENTS`] ring buffer as a [`PassiveEventSource`] (epoll-driven).
pub(super) struct RingEvents {
    pub(super) fd: tokio::io::unix::AsyncFd<RingBuf<MapData>>,
}

/// Decodes one ring-buffer record (a short one, which the data plane never writes, is skipped).
fn decode_event(bytes: &[u8]) -> Option<PassiveEvent> {
    if bytes.len() < std::mem::size_of::<PassiveEvent>() {
        return None;
    }
    // SAFETY: PassiveEvent is Pod and the slice is long enough; read_unaligned copes with
    // any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PassiveEvent>()) })
}

impl RingEvents {
    /// Every record available now.
    fn drain(&mut self) -> Vec<PassiveEvent> {
        let ring = self.fd.get_mut();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(e) = decode_event(&item) {
                out.push(e);
            }
        }
        out
    }
}

impl PassiveEventSource for RingEvents {
    fn next_batch(&mut self) -> EventBatch<'_> {
        Box::pin(async move {
            loop {
                let batch = self.drain();
                if !batch.is_empty() {
                    return Ok(batch);
                }
                let mut guard = self
                    .fd
                    .readable_mut()
                    .await
                    .map_err(io_err(format!("waiting on the {MAP_EVENTS} ring buffer")))?;
                guard.clear_ready();
            }
        })
    }
}

impl BpfDataplane {
    /// Events in the ring buffer now, without waiting (tests; `None` once the source was
    /// taken).
    pub fn pending_events(&self) -> Option<Vec<PassiveEvent>> {
        let mut guard = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let ring = guard.as_mut()?;
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(e) = decode_event(&item) {
                out.push(e);
            }
        }
        Some(out)
    }
}
