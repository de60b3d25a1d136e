#!/usr/bin/env python3
"""The reference side of the template conformance test: renders chat templates with jinja2
configured exactly as Hugging Face transformers' `apply_chat_template` does
(transformers/utils/chat_template_utils.py: an ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, the loopcontrols extension, a `{% generation %}` extension
that renders its body, a `tojson` filter calling json.dumps without HTML escaping, and the
globals `raise_exception` and `strftime_now`).

Input: a JSON-lines file of cases, `{"id": ..., "template": "<path>", "context": {...}}`
(the format of `cargo rmlx render --batch`); each template is compiled once. Output, one
line per case in input order: `{"id": ..., "ok": true, "output": "..."}` or
`{"id": ..., "ok": false, "error": "<ExceptionType>: <message>"}`.

  render_jinja2.py CASES.jsonl [--now UNIX_SECONDS] [--bench N] > RESULTS.jsonl

--now fixes the clock of strftime_now (Unix seconds, shown in local time), the same value given to `cargo rmlx render
--now`. --bench N times N render passes over all cases and prints a JSON line to stderr.
"""

import argparse
import json
import sys
import time
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: transformers' AssistantTracker. With
    assistant masks off (every plain apply_chat_template call) it returns its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        call = self.call_method("_generation_support")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _generation_support(self, context, caller):
        return caller()


def make_env(now):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    # transformers: datetime.now().strftime(format), a naive local time (%z and %Z print
    # nothing); a fixed clock is the same local naive time at that instant.
    def strftime_now(format):
        if now is None:
            return datetime.now().strftime(format)
        return datetime.fromtimestamp(now).strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def error_text(e):
    return f"{type(e).__name__}: {e}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases")
    ap.add_argument("--now", type=int, default=None)
    ap.add_argument("--bench", type=int, default=None)
    args = ap.parse_args()

    env = make_env(args.now)
    with open(args.cases, encoding="utf-8") as f:
        cases = [json.loads(line) for line in f if line.strip()]

    t0 = time.perf_counter()
    compiled = {}
    for c in cases:
        path = c["template"]
        if path in compiled:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                compiled[path] = env.from_string(f.read())
        except Exception as e:  # noqa: BLE001 - every failure is a result
            compiled[path] = e
    compile_s = time.perf_counter() - t0

    def render(c):
        t = compiled[c["template"]]
        if isinstance(t, Exception):
            raise t
        return t.render(**c["context"])

    out = sys.stdout
    for c in cases:
        try:
            rec = {"id": c["id"], "ok": True, "output": render(c)}
        except Exception as e:  # noqa: BLE001
            rec = {"id": c["id"], "ok": False, "error": error_text(e)}
        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    out.flush()

    if args.bench:
        passes = max(1, args.bench)
        t1 = time.perf_counter()
        for _ in range(passes):
            for c in cases:
                try:
                    render(c)
                except Exception:  # noqa: BLE001
                    pass
        render_s = (time.perf_counter() - t1) / passes
        print(
            json.dumps(
                {
                    "engine": f"jinja2 {jinja2.__version__} (Python {sys.version.split()[0]})",
                    "templates": len(compiled),
                    "cases": len(cases),
                    "compile_s": compile_s,
                    "render_pass_s": render_s,
                    "renders_per_s": len(cases) / max(render_s, 1e-9),
                }
            ),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
