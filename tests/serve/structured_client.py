"""Structured output through the official OpenAI Python client against `cargo rmlx serve`.

usage: structured_client.py BASE_URL MODEL API_KEY REQUESTS

Sends REQUESTS greedy and REQUESTS sampled chat completions with a JSON-schema
`response_format` (nested object, enums, an array, required fields; every string and array
bounded), CONCURRENCY at a time so the server batches them, and validates every answer
with the small validator below; then one streamed request, a regex (`guided_regex`)
on /v1/completions, `json_object`, invalid constraints (400 naming the field), and tool
calls forced by `tool_choice` (`required`, a named function; streamed and not: the
calls parsed, their arguments valid under the function's schema). Exits
non-zero on the first failure; prints one JSON line with what it saw.
"""

import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import openai

base, model, key, requests = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
CONCURRENCY = 8
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {
            "type": "array",
            "items": {"enum": ["red", "green", "blue"]},
            "minItems": 1,
            "maxItems": 2,
        },
    },
    "required": ["name", "age", "role", "address", "tags"],
    "additionalProperties": False,
}
PEOPLE = ["Alice", "Bob", "Chen", "Dana", "Emil", "Fatima", "Goro", "Hana", "Ivan", "Jules"]


def errors(value, schema, path="$"):
    """The ways `value` breaks `schema` (the keywords SCHEMA uses), as messages."""
    out = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    kind = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    }
    if kind and not checks[kind](value):
        return out + [f"{path}: {value!r} is not of type {kind}"]
    if kind == "object":
        props = schema.get("properties", {})
        out += [f"{path}: missing {k}" for k in schema.get("required", []) if k not in value]
        if schema.get("additionalProperties") is False:
            out += [f"{path}: extra {k}" for k in value if k not in props]
        for k, sub in props.items():
            if k in value:
                out += errors(value[k], sub, f"{path}.{k}")
    if kind == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            out.append(f"{path}: {len(value)} items")
        for i, item in enumerate(value):
            out += errors(item, schema.get("items", {}), f"{path}[{i}]")
    if kind == "string":
        if len(value) > schema.get("maxLength", len(value)):
            out.append(f"{path}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if kind == "integer" and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        out.append(f"{path}: {value} out of range")
    return out


def check_json(text, what):
    try:
        value = json.loads(text)
    except ValueError as e:
        raise AssertionError(f"{what}: not JSON ({e}): {text!r}")
    problems = errors(value, SCHEMA)
    assert not problems, f"{what}: {problems}: {text!r}"
    return value


def ask(i, **sampling):
    person = PEOPLE[i % len(PEOPLE)]
    messages = [
        {"role": "user", "content": f"Describe a user called {person} as JSON."},
    ]
    r = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=100,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "user", "schema": SCHEMA, "strict": True},
        },
        **sampling,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop", (choice.finish_reason, choice.message.content)
    return check_json(choice.message.content, f"request {i} {sampling}")


with ThreadPoolExecutor(CONCURRENCY) as pool:
    greedy = [pool.submit(ask, i) for i in range(requests)]
    sampled = [pool.submit(ask, i, temperature=1.0, top_p=0.95, seed=i) for i in range(requests)]
    seen = {"greedy": [f.result() for f in greedy], "sampled": [f.result() for f in sampled]}

stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Describe a user called Alice as JSON."}],
    max_tokens=100,
    stream=True,
    response_format={"type": "json_schema", "json_schema": {"name": "user", "schema": SCHEMA}},
)
streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
check_json(streamed, "streamed")

phone = client.completions.create(
    model=model,
    prompt="Call me at",
    max_tokens=16,
    extra_body={"guided_regex": r" [0-9]{3}-[0-9]{4}"},
)
assert re.fullmatch(r" [0-9]{3}-[0-9]{4}", phone.choices[0].text), phone
assert phone.choices[0].finish_reason == "stop", phone

obj = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Give me a JSON object about Paris."}],
    max_tokens=60,
    response_format={"type": "json_object"},
)
if obj.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(obj.choices[0].message.content), dict), obj

for body, param in [
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
        "response_format.json_schema.schema",
    ),
    ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex"),
]:
    try:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            **body,
        )
        raise AssertionError(f"invalid constraint accepted: {body}")
    except openai.BadRequestError as e:
        assert e.status_code == 400
        assert e.body["param"] == param, e.body
        assert "invalid" in e.body["message"], e.body

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                       "required": ["zone"]}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def forced_calls(tool_choice, stream):
    """A request whose tool_choice forces a call: the calls, parsed and checked."""
    kwargs = dict(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris right now?"}],
        tools=TOOLS,
        tool_choice=tool_choice,
        max_tokens=120,
    )
    if stream:
        calls, finish = {}, None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            if not chunk.choices:
                continue
            finish = chunk.choices[0].finish_reason or finish
            for d in chunk.choices[0].delta.tool_calls or []:
                call = calls.setdefault(d.index, {"name": "", "arguments": ""})
                if d.function and d.function.name:
                    call["name"] += d.function.name
                if d.function and d.function.arguments:
                    call["arguments"] += d.function.arguments
        got = [calls[i] for i in sorted(calls)]
    else:
        r = client.chat.completions.create(**kwargs)
        finish = r.choices[0].finish_reason
        got = [{"name": t.function.name, "arguments": t.function.arguments}
               for t in r.choices[0].message.tool_calls or []]
    what = f"tool_choice={tool_choice!r} stream={stream}"
    assert finish == "tool_calls", (what, finish, got)
    assert got, (what, "no calls")
    for call in got:
        assert call["name"] in SCHEMAS, (what, call)
        args = json.loads(call["arguments"])
        problems = errors(args, SCHEMAS[call["name"]])
        assert not problems, (what, problems, call)
    return got


named = {"type": "function", "function": {"name": "get_time"}}
tool_calls = {}
for choice in ["required", named]:
    for stream in [False, True]:
        got = forced_calls(choice, stream)
        if choice == named:
            assert all(c["name"] == "get_time" for c in got), got
        tool_calls[f"{'named' if choice == named else choice}-{'stream' if stream else 'plain'}"] = got
# streamed and plain greedy runs decode the same tokens
assert tool_calls["required-stream"] == tool_calls["required-plain"], tool_calls
try:
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        tools=TOOLS, tool_choice="required", response_format={"type": "json_object"},
    )
    raise AssertionError("tool_choice=required with response_format accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "tool_choice", e.body

print(json.dumps({"greedy": seen["greedy"][0], "tool_calls": tool_calls, "phone": phone.choices[0].text, "valid": 2 * requests}))
