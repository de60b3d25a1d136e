//! The order in which MLX's `save_safetensors` lays out tensor data. MLX takes the tensors
//! as a C++ `std::unordered_map<std::string, array>` and writes them in that map's iteration
//! order, which depends on the keys, their insertion order and the map's rehash history —
//! mlx-lm inserts them in its parameter order (one `dict` per shard). mlx-c's
//! `mlx_map_string_to_array` is that same map type of the same MLX build, so inserting the
//! names in the same order (every value one shared scalar, no weights held) and reading the
//! iteration order back gives the order MLX would write.

use std::collections::HashMap;
use std::ffi::{CStr, CString};

use crate::diagnostic::{code, Diagnostic, Result};

fn internal(what: String) -> Diagnostic {
    Diagnostic::error(code::Build::Internal, what)
}

/// The mlx-c objects, freed on drop.
struct MapOf {
    map: mlx_sys::mlx_map_string_to_array,
    value: mlx_sys::mlx_array,
}

impl Drop for MapOf {
    fn drop(&mut self) {
        // SAFETY: both were created by mlx-c in `file_order` and are freed once, here.
        unsafe {
            mlx_sys::mlx_map_string_to_array_free(self.map);
            mlx_sys::mlx_array_free(self.value);
        }
    }
}

/// The positions (into `names`) in the order MLX writes a shard whose tensors were inserted
/// in the order of `names`.
pub fn file_order(names: &[&str]) -> Result<Vec<usize>> {
    // SAFETY: plain constructors without arguments.
    let m = unsafe {
        MapOf {
            map: mlx_sys::mlx_map_string_to_array_new(),
            value: mlx_sys::mlx_array_new_float(0.0),
        }
    };
    for name in names {
        let key = CString::new(*name)
            .map_err(|_| internal(format!("tensor name `{name}` holds a NUL byte")))?;
        // SAFETY: `m` is alive, `key` is a C string; the map copies both.
        if unsafe { mlx_sys::mlx_map_string_to_array_insert(m.map, key.as_ptr(), m.value) } != 0 {
            return Err(internal(format!(
                "mlx-c could not insert `{name}` into a map"
            )));
        }
    }
    let iterated = iterate(&m)?;
    let position: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let order: Vec<usize> = iterated
        .iter()
        .filter_map(|k| position.get(k.as_str()).copied())
        .collect();
    if order.len() != names.len() || position.len() != names.len() {
        return Err(internal(format!(
            "MLX's map iterated {} of {} tensor names ({} distinct)",
            order.len(),
            names.len(),
            position.len()
        )));
    }
    Ok(order)
}

/// The keys of `m` in iteration order.
fn iterate(m: &MapOf) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    // SAFETY: the iterator borrows the live map and is freed before returning; `value`
    // receives a copy of each (shared scalar) value and is freed after; each key points into
    // the map, which outlives its copy here.
    unsafe {
        let it = mlx_sys::mlx_map_string_to_array_iterator_new(m.map);
        let mut value = mlx_sys::mlx_array_new();
        let mut key: *const std::os::raw::c_char = std::ptr::null();
        let status = loop {
            match mlx_sys::mlx_map_string_to_array_iterator_next(&mut key, &mut value, it) {
                0 => keys.push(CStr::from_ptr(key).to_string_lossy().into_owned()),
                rc => break rc,
            }
        };
        mlx_sys::mlx_map_string_to_array_iterator_free(it);
        mlx_sys::mlx_array_free(value);
        if status != 2 {
            return Err(internal(format!("mlx-c's map iterator failed ({status})")));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permutation_that_depends_on_insertion_order() {
        let names: Vec<String> = (0..40)
            .map(|i| format!("model.layers.{i}.weight"))
            .collect();
        let forward: Vec<&str> = names.iter().map(String::as_str).collect();
        let order = file_order(&forward).unwrap();
        let mut seen = order.clone();
        seen.sort();
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
        assert_ne!(
            order,
            (0..40).collect::<Vec<_>>(),
            "a hash order, not insertion"
        );
        let backward: Vec<&str> = forward.iter().rev().copied().collect();
        let by_name = |order: Vec<usize>, v: &[&str]| -> Vec<String> {
            order.into_iter().map(|i| v[i].to_string()).collect()
        };
        assert_ne!(
            by_name(order, &forward),
            by_name(file_order(&backward).unwrap(), &backward),
            "the same keys inserted in another order iterate differently"
        );
        assert!(file_order(&["a", "a"]).is_err());
    }
}
