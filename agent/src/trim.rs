//! Giving memory back after a burst.
//!
//! glibc's allocator keeps freed memory in its heaps for reuse: after 200
//! concurrent exports the agent's buffers are freed but its resident size
//! stays near the peak, on a Pi that also runs other things. Once the
//! console has nothing under way, `malloc_trim` returns the free pages.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often a quiet agent gives memory back.
pub const EVERY: Duration = Duration::from_secs(5);

/// Until `stop`: every [`EVERY`], trims the heap once after each burst.
/// `quiet()` is `None` while requests are under way (a trim then would
/// only cost time), else a count of requests served so far: a count other
/// than at the last trim means there was a burst since.
pub async fn run(quiet: impl Fn() -> Option<u64>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmed_at = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(served) = quiet() {
            if trimmed_at != Some(served) {
                release();
                trimmed_at = Some(served);
            }
        }
    }
}

/// Returns free heap pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() {
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's
    // own free lists under its locks; any argument is valid.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators (musl) return memory by themselves, or cannot.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() {}
