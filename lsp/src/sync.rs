//! The server's lock-poisoning policy, the same as `cargo rmlx serve`'s: a panic while a
//! mutex is held must not break every later request that needs it. The state behind the
//! locks here (open documents, caches, probe bookkeeping) is left consistent by every
//! writer between statements, so a poisoned lock is taken over, the poisoning is logged
//! once and cleared.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking it over (and clearing the poison flag, with a warning) when a thread
/// panicked while holding it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            tracing::warn!("a handler panicked while holding a lock; recovering its state");
            m.clear_poison();
            poisoned.into_inner()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_keeps_its_state_and_is_cleared() {
        let m = Mutex::new(vec![1, 2]);
        let r = std::panic::catch_unwind(|| {
            let mut g = m.lock().unwrap();
            g.push(3);
            panic!("a handler bug");
        });
        assert!(r.is_err());
        assert!(m.is_poisoned(), "the panic poisoned the lock");
        lock(&m).push(4);
        assert!(!m.is_poisoned(), "the poison flag is cleared");
        assert_eq!(*m.lock().unwrap(), vec![1, 2, 3, 4]);
    }
}
