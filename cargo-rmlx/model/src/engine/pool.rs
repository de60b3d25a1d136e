//! The persistent worker pool of the CPU host kernels: one helper thread per extra core,
//! started on first use, that spins briefly after each job and then parks, and is handed
//! work through one atomic word (job epoch and next item index). A decode step runs some
//! 150 kernel dispatches (projections, attention per block, the LM head) a few tens of
//! microseconds apart; a rayon `par_iter` per dispatch put a task hand-off and a futex wake
//! into each (10–14% of a step in `perf`), while a helper spinning between dispatches picks
//! the next one up within nanoseconds.
//!
//! [`for_each_mut`] is the one entry point: the caller's thread works on the items too and
//! returns once every item is done. One caller at a time uses the helpers; a concurrent
//! caller (another thread decoding, tests in parallel) runs its items on its own thread.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle helper spins for the next job before it parks. Not longer: under a
/// real-time policy (`chrt -f`, as the benchmarks run) a spinning helper keeps the server's
/// HTTP threads off its core — at 2 ms the helper never parked between decode steps and a
/// lone stream's chunks reached the client all at the end (BENCHMARKS.md, round 11).
const SPIN: Duration = Duration::from_micros(400);

/// Runs `f` on every item of `items`, spread over the caller's thread and the pool's helpers
/// (each item is handed out once, in order, to whichever thread asks next).
pub fn for_each_mut<T: Send, F: Fn(&mut T) + Sync>(items: &mut [T], f: F) {
    let base = items.as_mut_ptr() as usize;
    let run = |i: usize| {
        // SAFETY: `Pool::run` hands out each index below `items.len()` exactly once, and
        // `items` stays mutably borrowed (untouched by the caller) until it returns.
        let item = unsafe { &mut *(base as *mut T).add(i) };
        f(item);
    };
    match pool() {
        Some(pool) if items.len() > 1 => pool.run(items.len(), &run),
        _ => (0..items.len()).for_each(run),
    }
}

/// Threads that take part in a job: the caller plus the helpers.
pub fn threads() -> usize {
    pool().map_or(1, |p| p.helpers + 1)
}

/// The pool, started on first use; `None` on a single core.
fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<&'static Pool>> = OnceLock::new();
    *POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let helpers = cores.saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(helpers)));
        for k in 0..helpers {
            let spawned = std::thread::Builder::new()
                .name(format!("rmlx-kernel-{k}"))
                .spawn(move || pool.helper());
            if let Err(e) = spawned {
                tracing::warn!("host kernel pool: no helper thread ({e}); running on one thread");
                return None;
            }
        }
        tracing::debug!("host kernel pool: {helpers} helper thread(s)");
        Some(pool)
    })
}

/// The job in flight: a type-erased `&dyn Fn(usize)` living on the caller's stack.
type Job = *const (dyn Fn(usize) + Sync);

struct Pool {
    helpers: usize,
    /// Held by the one caller whose job the helpers run.
    caller: Mutex<()>,
    /// The job's epoch, item count and next item index in one word ([`Claim`]). Helpers
    /// claim items by compare-and-swap, so a helper late from an earlier job never claims
    /// an item of this one (nor checks an earlier job's index against this one's count).
    claim: AtomicU64,
    /// Items of the current job finished.
    done: AtomicUsize,
    /// Set when an item panicked on a helper.
    panicked: AtomicBool,
    /// The current job; written only while no item of it can be claimed.
    job: UnsafeCell<Option<Job>>,
    /// Parked helpers wait here for a new epoch.
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written by the caller holding `caller` before the epoch that makes it
// claimable is published (Release), and read by helpers only after a successful claim of
// that epoch (Acquire); the caller waits for every claimed item before it returns.
unsafe impl Sync for Pool {}

impl Pool {
    fn new(helpers: usize) -> Self {
        Self {
            helpers,
            caller: Mutex::new(()),
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Runs `f(0..count)` with the helpers, or alone if another caller holds them.
    fn run(&self, count: usize, f: &(dyn Fn(usize) + Sync)) {
        let Ok(_guard) = self.caller.try_lock() else {
            (0..count).for_each(f);
            return;
        };
        let handed = count.min(Claim::MAX_ITEMS);
        let epoch = Claim::next_epoch(self.claim.load(Ordering::Relaxed));
        // SAFETY: the previous job's items are all done and its epoch is over (its claims
        // now fail), so no helper reads `job` until the store of the new epoch below.
        unsafe {
            let erased: Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f);
            *self.job.get() = Some(erased);
        }
        self.done.store(0, Ordering::Relaxed);
        let job = Claim::new(epoch, handed);
        self.claim.store(job.0, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _lock = self.park.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        // The helpers may still run items borrowing `f`: catch a panic of ours until
        // they are done.
        let own = catch_unwind(AssertUnwindSafe(|| {
            while let Some(i) = self.next(epoch) {
                f(i);
                self.done.fetch_add(1, Ordering::Release);
            }
        }));
        if own.is_err() {
            self.panicked.store(true, Ordering::Relaxed);
            // Our claimed item will never be counted: finish the rest through the helpers.
            self.wait_done(handed - 1);
        } else {
            self.wait_done(handed);
        }
        if self.panicked.swap(false, Ordering::Relaxed) {
            panic!("a host kernel task panicked");
        }
        (handed..count).for_each(f);
    }

    /// Claims the next item of job `epoch`, if any is left.
    fn next(&self, epoch: u64) -> Option<usize> {
        let mut cur = Claim(self.claim.load(Ordering::Acquire));
        loop {
            if cur.epoch() != epoch || cur.index() >= cur.count() {
                return None;
            }
            match self.claim.compare_exchange_weak(
                cur.0,
                cur.0 + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(cur.index()),
                Err(now) => cur = Claim(now),
            }
        }
    }

    /// Spins (then yields) until `count` items are done.
    fn wait_done(&self, count: usize) {
        let mut spins = 0u32;
        while self.done.load(Ordering::Acquire) < count {
            spins += 1;
            if spins < 1 << 14 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// A helper's loop: wait for a new epoch, work on its items, repeat.
    fn helper(&self) {
        let mut seen = Claim(self.claim.load(Ordering::Acquire)).epoch();
        loop {
            let epoch = self.wait_epoch(seen);
            seen = epoch;
            while let Some(i) = self.next(epoch) {
                // SAFETY: a successful claim of `epoch` means the caller published this job
                // and is waiting for this item; see `unsafe impl Sync`.
                let f = unsafe { (*self.job.get()).map(|j| &*j) };
                if let Some(f) = f {
                    if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                        self.panicked.store(true, Ordering::Relaxed);
                    }
                }
                self.done.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Spins for [`SPIN`], then parks, until the epoch differs from `seen`; returns it.
    fn wait_epoch(&self, seen: u64) -> u64 {
        let epoch = || Claim(self.claim.load(Ordering::Acquire)).epoch();
        let start = Instant::now();
        let mut spins = 0u32;
        while epoch() == seen {
            spins = spins.wrapping_add(1);
            std::hint::spin_loop();
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                self.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut lock = self.park.lock().unwrap_or_else(|e| e.into_inner());
                while Claim(self.claim.load(Ordering::SeqCst)).epoch() == seen {
                    lock = self.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
                }
                drop(lock);
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        epoch()
    }
}

/// The pool's job word: epoch (24 bits), item count (20 bits), next item index (20 bits).
#[derive(Clone, Copy)]
struct Claim(u64);

impl Claim {
    /// Items one job hands out (more run on the caller's thread).
    const MAX_ITEMS: usize = (1 << 20) - 1;
    const MASK: u64 = (1 << 20) - 1;

    /// Job `epoch` of `count` ≤ [`Self::MAX_ITEMS`] items, none claimed yet.
    fn new(epoch: u64, count: usize) -> Self {
        Self((epoch << 40) | ((count as u64 & Self::MASK) << 20))
    }

    /// The epoch after that of word `word` (modulo 2^24).
    fn next_epoch(word: u64) -> u64 {
        (Claim(word).epoch() + 1) & 0xff_ffff
    }

    fn epoch(self) -> u64 {
        self.0 >> 40
    }

    fn count(self) -> usize {
        ((self.0 >> 20) & Self::MASK) as usize
    }

    fn index(self) -> usize {
        (self.0 & Self::MASK) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item is visited exactly once, over many back-to-back jobs of varied sizes.
    #[test]
    fn every_item_once() {
        for round in 0..500usize {
            let mut items = vec![0u32; round % 37];
            for_each_mut(&mut items, |v| *v += 1);
            assert!(items.iter().all(|&v| v == 1), "round {round}: {items:?}");
        }
    }

    /// Callers on several threads at once each get all their items done.
    #[test]
    fn concurrent_callers() {
        std::thread::scope(|s| {
            for t in 0..4u64 {
                s.spawn(move || {
                    for _ in 0..200 {
                        let mut items: Vec<u64> = (0..17).collect();
                        for_each_mut(&mut items, |v| *v = *v * 2 + t);
                        let want: Vec<u64> = (0..17).map(|v| v * 2 + t).collect();
                        assert_eq!(items, want);
                    }
                });
            }
        });
    }
}
