//! The layer rule, checked (ARCHITECTURE.md, "Crates and layers"): which workspace crate may
//! depend on which — the crates' Cargo.toml make any other edge a compile error, this table
//! documents the allowed ones and fails when one appears — and that the language server
//! links neither the HTTP server nor the command line.

use std::collections::{BTreeSet, HashMap};

use cargo_metadata::{DependencyKind, Metadata, MetadataCommand, PackageId};

/// Each workspace crate and the workspace crates it may depend on (normal dependencies).
/// `mlx-sys` is a direct dependency of every crate that links MLX (its build script needs
/// `DEP_MLX_LIBDIR`); only `rmlx-model`'s `mlx` module calls it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("mlx-sys", &[]),
    ("rmlx-test-support", &[]),
    ("rmlx-model", &["mlx-sys"]),
    ("rmlx-check", &["rmlx-model", "mlx-sys"]),
    ("rmlx-serve", &["rmlx-check", "rmlx-model", "mlx-sys"]),
    ("rmlx-editor", &["rmlx-check", "rmlx-model", "mlx-sys"]),
    (
        "rmlx-lsp",
        &["rmlx-editor", "rmlx-check", "rmlx-model", "mlx-sys"],
    ),
    (
        "cargo-rmlx",
        &[
            "rmlx-serve",
            "rmlx-editor",
            "rmlx-check",
            "rmlx-model",
            "mlx-sys",
        ],
    ),
];

/// Crates the language server must not link: the HTTP server's stack and the CLI parser.
const NOT_IN_LSP: &[&str] = &[
    "axum",
    "hyper",
    "hyper-util",
    "tower-http",
    "notify",
    "clap",
];

fn metadata() -> Metadata {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    MetadataCommand::new()
        .manifest_path(manifest)
        .exec()
        .expect("cargo metadata")
}

#[test]
fn workspace_crates_depend_only_downwards() {
    let meta = metadata();
    let members: BTreeSet<&str> = meta
        .workspace_packages()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert!(members.contains("rmlx-model"), "{members:?}");
    let mut wrong = Vec::new();
    for package in meta.workspace_packages() {
        let name = package.name.as_str();
        let Some((_, allowed)) = ALLOWED.iter().find(|(n, _)| *n == name) else {
            panic!("workspace crate `{name}` has no layer: add it to ALLOWED and ARCHITECTURE.md");
        };
        for dep in &package.dependencies {
            let upward = dep.kind == DependencyKind::Normal
                && members.contains(dep.name.as_str())
                && !allowed.contains(&dep.name.as_str());
            if upward {
                wrong.push(format!("{name} → {}", dep.name));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layers: {wrong:?}"
    );
}

#[test]
fn language_server_links_no_http_server_or_cli() {
    let meta = metadata();
    let resolve = meta.resolve.as_ref().expect("resolved dependency graph");
    let nodes: HashMap<&PackageId, _> = resolve.nodes.iter().map(|n| (&n.id, n)).collect();
    let names: HashMap<&PackageId, &str> = meta
        .packages
        .iter()
        .map(|p| (&p.id, p.name.as_str()))
        .collect();
    let lsp = meta
        .workspace_packages()
        .into_iter()
        .find(|p| p.name.as_str() == "rmlx-lsp")
        .expect("rmlx-lsp is a workspace member");
    // Everything rmlx-lsp links: its normal dependencies, transitively.
    let mut seen = BTreeSet::new();
    let mut todo = vec![&lsp.id];
    while let Some(id) = todo.pop() {
        for dep in &nodes[id].deps {
            let normal = dep
                .dep_kinds
                .iter()
                .any(|k| k.kind == DependencyKind::Normal);
            if normal && seen.insert(names[&dep.pkg]) {
                todo.push(&dep.pkg);
            }
        }
    }
    assert!(
        seen.contains("rmlx-editor") && seen.contains("tokio"),
        "{seen:?}"
    );
    let linked: Vec<_> = NOT_IN_LSP.iter().filter(|n| seen.contains(*n)).collect();
    assert!(linked.is_empty(), "rmlx-lsp links {linked:?}");
}
