use std::path::{Path, PathBuf};

use super::*;

fn parse(text: &str) -> Result<Manifest> {
    Manifest::parse(
        Path::new("/ws/rmlx.toml"),
        text,
        PathBuf::from("/ws/target"),
    )
}

fn err(text: &str) -> Diagnostic {
    parse(text).expect_err("should not parse")
}

/// The text under the error's primary span.
fn spanned(text: &str, d: &Diagnostic) -> String {
    text[d.span.clone().expect("a span")].to_string()
}

/// An rmlx.toml using every section (also the base of `manifest::fuzz`).
pub(super) const FULL_EXAMPLE: &str = r#"
[models.smollm2]
source = "models/smol.gguf"
chat-template = "t.jinja"
dtype = "bf16"

[models.smollm2.quantize]
mode = "affine"
bits = 4
group-size = 32
overrides = { "lm_head" = { bits = 8 }, "model.layers.*.mlp.down_proj" = false, "model.embed_tokens" = { mode = "mxfp8" } }

[models.smollm2.probe]
prompt = "Hi?"
expect = "Paris"
max-tokens = 12

[models.qwen]
source = "/abs/qwen"
quantize = { mode = "mxfp4" }

[models.raw]
source = "raw"
quantize = false

[serve]
host = "0.0.0.0"
port = 9000

[distributed]
hostfile = "hosts.json"
"#;

#[test]
fn full_example_parses() {
    let text = FULL_EXAMPLE;
    let m = parse(text).unwrap();
    assert_eq!(m.models.len(), 3);
    let s = &m.models[0];
    assert_eq!(s.name, "smollm2");
    assert_eq!(s.source, Path::new("/ws/models/smol.gguf"));
    assert_eq!(&text[s.source_span.clone()], "\"models/smol.gguf\"");
    assert_eq!(
        s.chat_template.as_ref().unwrap().0,
        Path::new("/ws/t.jinja")
    );
    assert_eq!(s.dtype.as_ref().unwrap().0, Dtype::Bfloat16);
    let Quantize::Quantize(spec) = &s.quantize else {
        panic!("quantized")
    };
    let q = |g, b, mode| QuantParams {
        group_size: g,
        bits: b,
        mode,
    };
    assert_eq!(spec.default, q(32, 4, QuantMode::Affine));
    assert_eq!(
        spec.for_module("lm_head"),
        Some(q(32, 8, QuantMode::Affine))
    );
    assert_eq!(spec.for_module("model.layers.3.mlp.down_proj"), None);
    assert_eq!(
        spec.for_module("model.layers.3.mlp.up_proj"),
        Some(q(32, 4, QuantMode::Affine))
    );
    // A mode change takes the new mode's defaults.
    assert_eq!(
        spec.for_module("model.embed_tokens"),
        Some(q(32, 8, QuantMode::Mxfp8))
    );
    assert_eq!(s.probe.expect.as_deref(), Some("Paris"));
    assert_eq!(s.probe.max_tokens, Some(12));
    let Quantize::Quantize(qw) = &m.models[1].quantize else {
        panic!()
    };
    assert_eq!(qw.default, q(32, 4, QuantMode::Mxfp4));
    assert_eq!(m.models[2].quantize, Quantize::Dense);
    assert_eq!(m.serve.port, 9000);
    assert_eq!(m.output_dir("qwen"), Path::new("/ws/target/rmlx/qwen"));
}

#[test]
fn defaults() {
    let m =
        parse("[models.a]\nsource = \"a\"\n[models.b]\nsource = \"b\"\nquantize = true\n").unwrap();
    assert_eq!(m.models[0].quantize, Quantize::AsSource);
    let Quantize::Quantize(spec) = &m.models[1].quantize else {
        panic!()
    };
    assert_eq!((spec.default.group_size, spec.default.bits), (64, 4));
    assert_eq!(m.serve, ServeDecl::default());
    assert!(!m.serve.content_special_tokens);
    let m = parse("[models.a]\nsource = \"a\"\n[serve]\ncontent-special-tokens = true\n").unwrap();
    assert!(m.serve.content_special_tokens);
}

#[test]
fn unknown_keys_are_located_with_a_suggestion() {
    let text = "[models.a]\nsource = \"a\"\nquantize = { bits = 4, group_size = 64 }\n";
    let d = err(text);
    assert_eq!(d.code, "rmlx::manifest::unknown-key");
    assert_eq!(spanned(text, &d), "group_size");
    assert_eq!(d.help.as_deref(), Some("did you mean `group-size`?"));

    let text = "[models.a]\nsorce = \"a\"\n";
    let d = err(text);
    assert_eq!(spanned(text, &d), "sorce");
    assert_eq!(d.help.as_deref(), Some("did you mean `source`?"));

    let text = "[server]\nport = 1\n";
    assert_eq!(spanned(text, &err(text)), "server");
}

#[test]
fn wrong_types_are_located() {
    let text = "[models.a]\nsource = \"a\"\nquantize = { bits = \"4\" }\n";
    let d = err(text);
    assert_eq!(d.code, "rmlx::manifest::wrong-type");
    assert_eq!(spanned(text, &d), "\"4\"");
    assert!(d.message.contains("must be an integer"), "{}", d.message);

    let text = "[models.a]\nsource = 3\n";
    assert_eq!(spanned(text, &err(text)), "3");

    let text = "[serve]\nport = 70000\n";
    assert_eq!(spanned(text, &err(text)), "70000");

    let text = "[serve]\ncontent-special-tokens = \"yes\"\n";
    assert_eq!(spanned(text, &err(text)), "\"yes\"");

    let text = "models = 1\n";
    assert_eq!(err(text).code, "rmlx::manifest::wrong-type");
}

#[test]
fn unsupported_quantization_is_located() {
    for (q, bad, needle) in [
        ("{ bits = 7 }", "7", "bits"),
        ("{ bits = 4, group-size = 16 }", "16", "group size"),
        ("{ mode = \"mxfp4\", bits = 8 }", "8", "bits"),
        ("{ mode = \"nvfp4\", group-size = 32 }", "32", "group size"),
        ("{ mode = \"int4\" }", "\"int4\"", "mode"),
    ] {
        let text = format!("[models.a]\nsource = \"a\"\nquantize = {q}\n");
        let d = err(&text);
        assert_eq!(d.code, "rmlx::manifest::invalid-value", "{q}");
        assert_eq!(spanned(&text, &d), bad, "{q}");
        assert!(d.message.contains(needle), "{q}: {}", d.message);
    }
}

#[test]
fn syntax_errors_and_missing_source() {
    let text = "[models.a\nsource = \"a\"\n";
    let d = err(text);
    assert_eq!(d.code, "rmlx::manifest::syntax");
    assert!(d.span.is_some());

    let text = "[models.a]\ndtype = \"bf16\"\n";
    let d = err(text);
    assert_eq!(d.code, "rmlx::manifest::missing-key");
    assert_eq!(spanned(text, &d), "a");

    let text = "[models.\"a/b\"]\nsource = \"x\"\n";
    assert_eq!(err(text).code, "rmlx::manifest::invalid-value");
}

#[test]
fn the_scaffold_parses() {
    let m = parse(TEMPLATE).unwrap();
    assert!(m.models.is_empty());
    // Uncommenting the example gives a valid model too.
    let start = TEMPLATE.find("# [models.").expect("an example model");
    let uncommented: String = TEMPLATE[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let m = parse(&uncommented).unwrap_or_else(|e| panic!("{e:?}\n{uncommented}"));
    assert_eq!(m.models.len(), 1);
}

#[test]
fn select_reports_unknown_names() {
    let m = parse("[models.smollm2]\nsource = \"a\"\n").unwrap();
    let d = m.select(&["smolm2".into()]).unwrap_err();
    assert_eq!(d.code, "rmlx::manifest::unknown-model");
    assert_eq!(d.help.as_deref(), Some("did you mean `smollm2`?"));
    assert_eq!(m.select(&[]).unwrap().len(), 1);
}

#[test]
fn globs() {
    assert!(glob_match(
        "model.layers.*.mlp.down_proj",
        "model.layers.12.mlp.down_proj"
    ));
    assert!(!glob_match(
        "model.layers.*.mlp.down_proj",
        "model.layers.1.mlp.up_proj"
    ));
    assert!(glob_match("*", "anything"));
    assert!(glob_match("lm_head", "lm_head"));
    assert!(!glob_match("lm_head", "lm_head2"));
    assert!(glob_match("*embed*", "model.embed_tokens"));
}

#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../../../README.md");
    let section = &readme[readme
        .find("## rmlx.toml")
        .expect("README has an rmlx.toml section")..];
    let start = section.find("```toml\n").expect("a toml example") + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").unwrap()];
    let m = parse(text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(m.models.len(), 2);
    let Quantize::Quantize(spec) = &m.models[0].quantize else {
        panic!()
    };
    assert_eq!(spec.overrides.len(), 3);
    assert_eq!(spec.for_module("lm_head").unwrap().bits, 8);
    assert_eq!(m.models[0].probe.expect.as_deref(), Some("Paris"));
}

#[test]
fn dotted_model_names_must_be_quoted() {
    let text = "[models.qwen2.5]\nsource = \"q\"\n";
    let d = err(text);
    assert_eq!(d.code, "rmlx::manifest::unknown-key");
    assert_eq!(
        d.help.as_deref(),
        Some("a model name containing dots must be quoted: [models.\"qwen2.5\"]")
    );
    let m = parse("[models.\"qwen2.5\"]\nsource = \"q\"\n").unwrap();
    assert_eq!(m.models[0].name, "qwen2.5");
}

#[test]
fn distributed_hostfile_is_relative_to_the_manifest() {
    let m = parse("[distributed]\nhostfile = \"hosts.json\"\n").unwrap();
    assert_eq!(
        m.distributed,
        Some(DistributedDecl {
            hostfile: PathBuf::from("/ws/hosts.json")
        })
    );
    assert_eq!(parse("").unwrap().distributed, None);
}

#[test]
fn distributed_needs_a_hostfile_and_nothing_else() {
    let text = "[distributed]\nhosts = \"h.json\"\n";
    let d = err(text);
    assert_eq!(d.code, "rmlx::manifest::unknown-key");
    assert_eq!(spanned(text, &d), "hosts");
    let d = err("[distributed]\n");
    assert_eq!(d.code, "rmlx::manifest::missing-key");
    let text = "[distributed]\nhostfile = 2\n";
    assert_eq!(err(text).code, "rmlx::manifest::wrong-type");
}
