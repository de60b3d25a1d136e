//! Setup results computed once per key and process; concurrent callers wait for the first.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The cells of [`once_per_key`]: one per key, holding the result or the failure message.
pub type OnceMap<K, V> = OnceLock<Mutex<BTreeMap<K, Arc<OnceLock<Result<V, String>>>>>>;

/// The value of `key` in `cells`, computed by `f` on first use; a failure (`Err`) fails every
/// test that asks for it, with the same message.
pub fn once_per_key<K: Ord, V: Clone>(
    cells: &'static OnceMap<K, V>,
    key: K,
    f: impl FnOnce() -> Result<V, String>,
) -> V {
    let cell = cells
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_init(f)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}
