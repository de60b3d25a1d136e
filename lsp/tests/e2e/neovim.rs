//! A real editor client: Neovim (Debian's `neovim`, installed by
//! `scripts/neovim-lsp-test.sh --install-only`), headless, attached to `rmlx-lsp` with its
//! built-in LSP client. It opens a template with an engine gap after emoji and CJK text,
//! reads back the diagnostics it received (Neovim converts LSP's UTF-16 columns into byte
//! columns, so a wrong column shows here), fixes the buffer, waits for the diagnostics to
//! clear, asks for hover, and stops the server. Fails — never skips — when Neovim cannot be
//! installed or run.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::lsp_bin;
use crate::model::{run_script, scratch};
use crate::protocol::CLEAN;

const LUA: &str = r#"
local out_path = vim.env.RMLX_NVIM_OUT
local result = {}
local function dump(bufnr)
  local out = {}
  for _, d in ipairs(vim.diagnostic.get(bufnr)) do
    local lsp = (d.user_data and d.user_data.lsp) or {}
    table.insert(out, {
      lnum = d.lnum, col = d.col, end_lnum = d.end_lnum, end_col = d.end_col,
      severity = d.severity, message = d.message, source = d.source,
      code = d.code or lsp.code,
    })
  end
  return out
end
local ok, err = pcall(function()
  vim.cmd('edit ' .. vim.fn.fnameescape(vim.env.RMLX_NVIM_FILE))
  local bufnr = vim.api.nvim_get_current_buf()
  local client_id = vim.lsp.start_client({
    name = 'rmlx',
    cmd = { vim.env.RMLX_LSP_BIN },
    root_dir = vim.fn.fnamemodify(vim.env.RMLX_NVIM_FILE, ':h'),
    init_options = { debounceMs = 50, probe = false },
  })
  assert(client_id, 'vim.lsp.start_client failed')
  vim.lsp.buf_attach_client(bufnr, client_id)
  result.received = vim.wait(60000, function() return #vim.diagnostic.get(bufnr) > 0 end, 20)
  result.broken = dump(bufnr)
  vim.api.nvim_buf_set_lines(bufnr, 0, -1, false, vim.fn.readfile(vim.env.RMLX_NVIM_FIXED))
  result.cleared = vim.wait(60000, function() return #vim.diagnostic.get(bufnr) == 0 end, 20)
  result.fixed = dump(bufnr)
  local resp = vim.lsp.buf_request_sync(bufnr, 'textDocument/hover', {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    position = { line = 0, character = 0 },
  }, 30000)
  for _, r in pairs(resp or {}) do
    if r.result and r.result.contents then result.hover = r.result.contents.value end
  end
  vim.lsp.stop_client(client_id)
  result.stopped = vim.wait(30000, function() return vim.lsp.get_client_by_id(client_id) == nil end, 20)
end)
result.ok = ok
if not ok then result.error = tostring(err) end
local f = assert(io.open(out_path, 'w'))
f:write(vim.fn.json_encode(result))
f:close()
vim.cmd('qall!')
"#;

#[test]
fn neovim_receives_exact_diagnostics() {
    let nvim = run_script("neovim-lsp-test.sh", &["--install-only"]);
    let nvim = nvim.lines().last().unwrap_or("").trim().to_string();
    assert!(
        !nvim.is_empty(),
        "scripts/neovim-lsp-test.sh printed no nvim path"
    );
    let dir = scratch();
    let text = "{#- 日本語のテンプレート -#}\n{%- for message in messages %}{{ '😀中▁' + message['content'] | frobnicate }}{% endfor %}{% if add_generation_prompt %}A:{% endif %}\n";
    let file = dir.path().join("chat_template.jinja");
    std::fs::write(&file, text).unwrap();
    let fixed = dir.path().join("fixed.txt");
    std::fs::write(&fixed, CLEAN).unwrap();
    let script = dir.path().join("test.lua");
    std::fs::write(&script, LUA).unwrap();
    let out = dir.path().join("out.json");
    let mut child = Command::new(&nvim)
        .args(["--headless", "--clean", "-n", "-c"])
        .arg(format!("luafile {}", script.display()))
        .env("RMLX_NVIM_OUT", &out)
        .env("RMLX_NVIM_FILE", &file)
        .env("RMLX_NVIM_FIXED", &fixed)
        .env("RMLX_LSP_BIN", lsp_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {nvim}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nvim did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let raw = std::fs::read_to_string(&out)
        .unwrap_or_else(|e| panic!("nvim ({status}) wrote no result: {e}\n{stderr}"));
    let r: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(r["ok"], true, "the Neovim script failed: {r}\n{stderr}");
    assert_eq!(r["received"], true, "Neovim received no diagnostics: {r}");
    let d = r["broken"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "rmlx::template::unknown-filter")
        .unwrap_or_else(|| panic!("no unknown-filter diagnostic in Neovim: {r}"))
        .clone();
    // Neovim turns the UTF-16 column (63) back into the byte column of `frobnicate`.
    let line = text.lines().nth(1).unwrap();
    let byte = line.find("frobnicate").unwrap() as u64;
    assert_eq!(
        (
            d["lnum"].as_u64(),
            d["col"].as_u64(),
            d["end_lnum"].as_u64(),
            d["end_col"].as_u64()
        ),
        (Some(1), Some(byte), Some(1), Some(byte + 10)),
        "{d}"
    );
    assert_eq!(d["source"], "rmlx", "{d}");
    // Every sample render reaches the unknown filter: an error.
    assert_eq!(d["severity"], 1, "an error: {d}");
    assert_eq!(
        r["cleared"], true,
        "the fix did not clear the diagnostics: {r}"
    );
    let hover = r["hover"].as_str().unwrap_or_default();
    assert!(
        hover.contains("What is the capital of France?<|im_end|>↵"),
        "hover: {r}"
    );
    assert_eq!(r["stopped"], true, "the server did not stop: {r}");
}
