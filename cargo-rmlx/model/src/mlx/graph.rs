//! A lazy graph's primitives, counted: MLX's `export_to_dot` of the arrays a step computes,
//! read back and tallied per primitive name. The MLX decode path is bound by the host work
//! per primitive (every node goes through MLX's eval loop, views included), so the count is
//! the cost model; `RMLX_GRAPH_DOT` (see [`dump_once`]) writes one decode step's graph.

use std::collections::BTreeMap;
use std::ffi::CString;

use mlx_rs::Array;

use crate::diagnostic::{code, Diagnostic, Result};

/// MLX's DOT rendering of the graph that computes `outputs` (not evaluated: only what is still
/// lazy appears; evaluated arrays are the graph's inputs).
pub fn dot(outputs: &[&Array]) -> Result<String> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("rmlx-graph-{}-{n}.dot", std::process::id()));
    let c_path = CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| failed("a temporary path with a NUL byte"))?;
    let handles: Vec<mlx_sys::mlx_array> = outputs.iter().map(|a| a.as_ptr()).collect();
    // SAFETY: the file is opened and closed here; the vector copies the handles (MLX
    // reference counts them) and is freed before returning; the namer is fresh and freed.
    let status = unsafe {
        let file = libc::fopen(c_path.as_ptr(), c"w".as_ptr());
        if file.is_null() {
            return Err(failed("cannot open a temporary file"));
        }
        let vec = mlx_sys::mlx_vector_array_new_data(handles.as_ptr(), handles.len());
        let namer = mlx_sys::mlx_node_namer_new();
        let status = mlx_sys::mlx_export_to_dot(file.cast(), namer, vec);
        mlx_sys::mlx_node_namer_free(namer);
        mlx_sys::mlx_vector_array_free(vec);
        libc::fclose(file);
        status
    };
    let text = std::fs::read_to_string(&path);
    let _ = std::fs::remove_file(&path);
    if status != 0 {
        return Err(failed("export_to_dot failed"));
    }
    text.map_err(|e| failed(&format!("reading the graph back: {e}")))
}

/// Primitive name → nodes in a DOT graph from [`dot`] (MLX draws primitives as rectangles,
/// arrays as ovals).
pub fn primitives(dot: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in dot.lines().filter(|l| l.contains("shape=rectangle")) {
        // `{ 9490… [label ="Add", shape=rectangle]; }`
        let Some(label) = line.split("label").nth(1) else {
            continue;
        };
        let name = label.split('"').nth(1).unwrap_or_default();
        *counts.entry(name.to_string()).or_insert(0) += 1;
    }
    counts
}

/// The call of [`dump_once`] for a batch size that writes the graph: the third decode step,
/// past the steps that set things up (a batch's first step moves every row into a shared
/// buffer).
const DUMPED_CALL: usize = 3;

/// With `RMLX_GRAPH_DOT=<prefix>` set: writes the graph of `outputs` (a decode step of
/// `batch` rows) to `<prefix>.b<batch>.dot` and its primitive counts to `<prefix>.b<batch>.txt`,
/// once per batch size per process, at the [`DUMPED_CALL`]th step of that size. Called on
/// every decode step, so without the variable (read once) it returns at once. Failures are
/// logged: this is a diagnostic aid.
pub fn dump_once(batch: usize, outputs: &[&Array]) {
    static CALLS: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());
    let Some(prefix) = crate::engine::switches::graph_dot() else {
        return;
    };
    let mut calls = CALLS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = match calls.iter_mut().find(|(b, _)| *b == batch) {
        Some((_, n)) => {
            *n += 1;
            *n
        }
        None => {
            calls.push((batch, 1));
            1
        }
    };
    if n != DUMPED_CALL {
        return;
    }
    if let Err(e) = write_dump(prefix, &format!("b{batch}"), outputs) {
        tracing::warn!("RMLX_GRAPH_DOT: {}", e.message);
    }
}

fn write_dump(prefix: &str, tag: &str, outputs: &[&Array]) -> Result<()> {
    let dot = dot(outputs)?;
    let counts = primitives(&dot);
    let total: usize = counts.values().sum();
    let mut txt = format!("total {total}\n");
    for (name, n) in &counts {
        txt.push_str(&format!("{name} {n}\n"));
    }
    let write = |ext: &str, body: &str| {
        std::fs::write(format!("{prefix}.{tag}.{ext}"), body)
            .map_err(|e| failed(&format!("writing {prefix}.{tag}.{ext}: {e}")))
    };
    write("dot", &dot)?;
    write("txt", &txt)?;
    tracing::info!("RMLX_GRAPH_DOT: {tag}: {total} primitives → {prefix}.{tag}.txt");
    Ok(())
}

fn failed(msg: &str) -> Diagnostic {
    Diagnostic::error(code::Engine::Mlx, format!("graph export: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DOT of a small lazy graph names each primitive once per node.
    #[test]
    fn a_lazy_graph_counts_its_primitives() {
        let a = Array::from_slice(&[1f32, 2.0, 3.0], &[3]);
        let b = a.add(&a).unwrap();
        let c = b.multiply(&b).unwrap().add(&a).unwrap();
        let counts = primitives(&dot(&[&c]).unwrap());
        assert_eq!(counts.get("Add"), Some(&2), "{counts:?}");
        assert_eq!(counts.get("Multiply"), Some(&1), "{counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 3, "{counts:?}");
    }
}
