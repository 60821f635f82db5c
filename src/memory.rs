//! Giving freed heap back to the operating system.
//!
//! glibc's allocator keeps memory a thread frees in that thread's arena (up to eight arenas per
//! core: the runtime's workers, the blocking pool that renders, the SQLite connection
//! threads) and returns only what lies at the top of an arena. A fan-out allocates and frees
//! pages of rendered jobs on all of them, so the freed pages in the middle of the arenas pile
//! up as resident memory that nothing uses. Every `memory.trim_interval_ms` the bridge asks
//! the allocator to return the free pages of every arena (`malloc_trim(0)`), on the blocking
//! pool, off the runtime's workers. Measured in docs/BENCHMARKS.md ("Memory"): with 1M jobs
//! queued and draining, peak RSS 103–107 MB → 87–93 MB at no measurable CPU cost.
//!
//! Only glibc has `malloc_trim`. On another C library the setting is accepted and the bridge
//! says once at start-up that it does not apply.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Shortest accepted interval: a trim walks every arena under its lock.
const MIN_INTERVAL_MS: u64 = 100;
/// Longest accepted interval.
const MAX_INTERVAL_MS: u64 = 3_600_000;

/// The `[memory]` config.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// How often freed heap is given back to the operating system, ms; 0 never.
    pub trim_interval_ms: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            trim_interval_ms: 1000,
        }
    }
}

impl MemoryConfig {
    /// Checks the bounds; the message starts with the field's dotted name.
    pub fn validate(&self) -> Result<(), String> {
        let ms = self.trim_interval_ms;
        if ms != 0 && !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) {
            return Err(format!(
                "memory.trim_interval_ms: must be 0 (never) or between {MIN_INTERVAL_MS} and \
                 {MAX_INTERVAL_MS}"
            ));
        }
        Ok(())
    }

    /// The interval between trims, or `None` when they are off.
    fn interval(&self) -> Option<Duration> {
        (self.trim_interval_ms > 0).then(|| Duration::from_millis(self.trim_interval_ms))
    }
}

/// Whether this build's allocator can give freed heap back on request.
pub const TRIM_SUPPORTED: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// Asks the allocator to return the free pages of every arena to the operating system.
/// Returns whether any memory was released. Blocks while it walks the arenas.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own arenas under their locks; it
        // takes no pointers from the caller.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Trims every `config.trim_interval_ms` until `stop` turns true. Returns at once when
/// trimming is off or unsupported.
pub(crate) async fn trim_loop(config: MemoryConfig, mut stop: watch::Receiver<bool>) {
    let Some(interval) = config.interval() else {
        return;
    };
    if !TRIM_SUPPORTED {
        tracing::info!(
            "memory.trim_interval_ms does not apply: this build's C library has no malloc_trim"
        );
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = tokio::task::spawn_blocking(trim).await {
            tracing::error!(error = %e, "giving freed memory back failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_off_or_within_bounds() {
        let config = |ms| MemoryConfig {
            trim_interval_ms: ms,
        };
        assert!(config(0).validate().is_ok());
        assert_eq!(config(0).interval(), None);
        assert!(config(1000).validate().is_ok());
        assert_eq!(config(1000).interval(), Some(Duration::from_secs(1)));
        assert!(config(MAX_INTERVAL_MS).validate().is_ok());
        for bad in [1, MIN_INTERVAL_MS - 1, MAX_INTERVAL_MS + 1] {
            let e = config(bad).validate().unwrap_err();
            assert!(e.starts_with("memory.trim_interval_ms: "), "{e}");
        }
    }

    /// Frees most of 64 MiB of small blocks, keeping every 64th so that no freed run lies at
    /// the top of the arena, then checks page by page (`mincore`, which reads no memory)
    /// that the freed pages stay resident until a trim and leave after it. Page residency
    /// of this thread's own blocks, unlike the process's RSS, is not moved by tests beside it.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_gives_back_freed_pages_in_the_middle_of_the_heap() {
        const BLOCK: usize = 4096;
        const PAGE: usize = 4096;
        let resident = |pages: &[usize]| {
            pages
                .iter()
                .filter(|&&page| {
                    let mut state = 0u8;
                    // SAFETY: mincore reads the page tables of the given range only; the
                    // range is one page inside this process's heap.
                    let rc = unsafe { libc::mincore(page as *mut libc::c_void, PAGE, &mut state) };
                    assert_eq!(rc, 0, "mincore failed");
                    state & 1 == 1
                })
                .count()
        };
        std::thread::spawn(move || {
            let mut blocks: Vec<Option<Vec<u8>>> =
                (0..16_384).map(|_| Some(vec![1u8; BLOCK])).collect();
            let addr: Vec<usize> = blocks
                .iter()
                .map(|b| b.as_ref().map_or(0, |b| b.as_ptr() as usize))
                .collect();
            let kept = |i: usize| i.is_multiple_of(64);
            // Whole pages inside two neighbouring freed blocks that lie back to back.
            let pages: Vec<usize> = (1..addr.len() - 1)
                .filter(|&i| !kept(i) && !kept(i + 1))
                .filter(|&i| addr[i + 1] > addr[i] && addr[i + 1] - addr[i] < BLOCK + 64)
                .map(|i| addr[i].next_multiple_of(PAGE))
                .step_by(50)
                .collect();
            assert!(
                pages.len() > 100,
                "too few pages to look at: {}",
                pages.len()
            );
            for (i, block) in blocks.iter_mut().enumerate() {
                if !kept(i) {
                    *block = None;
                }
            }
            let before = resident(&pages);
            assert!(trim(), "the trim released nothing");
            let after = resident(&pages);
            assert!(
                before * 4 >= pages.len() * 3,
                "freed pages left before any trim: {before} of {} resident",
                pages.len()
            );
            assert!(
                after * 4 <= pages.len(),
                "the trim kept freed pages: {after} of {} resident",
                pages.len()
            );
            std::hint::black_box(&blocks);
        })
        .join()
        .unwrap();
    }

    #[tokio::test]
    async fn the_loop_stops_when_asked() {
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(trim_loop(MemoryConfig::default(), stopped));
        tokio::task::yield_now().await;
        assert!(
            !running.is_finished(),
            "the loop ended before it was stopped"
        );
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), running)
            .await
            .expect("the trim loop did not stop")
            .unwrap();
    }

    #[tokio::test]
    async fn with_trims_off_the_loop_returns_at_once() {
        let (_stop, stopped) = watch::channel(false);
        let off = MemoryConfig {
            trim_interval_ms: 0,
        };
        tokio::time::timeout(Duration::from_secs(1), trim_loop(off, stopped))
            .await
            .expect("the loop waited although trims are off");
    }
}
