"""Drives a running `cargo rmlx serve` with the official OpenAI Python client.

usage: openai_client.py BASE_URL MODEL API_KEY

Exits non-zero (with the assertion) when the server is not compatible; prints one JSON
line with what it saw.
"""

import json
import sys

import openai

base, model, key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=300)
question = [{"role": "user", "content": "What is the capital of France?"}]

ids = [m.id for m in client.models.list()]
assert model in ids, ids

r = client.chat.completions.create(model=model, messages=question, max_tokens=24)
answer = r.choices[0].message.content
assert "Paris" in answer, r
assert r.choices[0].finish_reason == "stop", r
assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, r.usage

chunks = list(
    client.chat.completions.create(
        model=model,
        messages=question,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == answer, (streamed, answer)
finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
assert finishes == ["stop"], finishes
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, chunks[-1]

r = client.chat.completions.create(
    model=model, messages=question, max_tokens=3, logprobs=True, top_logprobs=2
)
assert r.choices[0].finish_reason == "length", r
assert len(r.choices[0].logprobs.content) == 3, r.choices[0].logprobs
assert len(r.choices[0].logprobs.content[0].top_logprobs) == 2

c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4)
assert "Paris" in c.choices[0].text, c

try:
    client.chat.completions.create(model="no-such-model", messages=question, max_tokens=2)
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404

try:
    client.chat.completions.create(model=model, messages=question, temperature=-1)
    raise AssertionError("bad temperature accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400

print(json.dumps({"models": ids, "answer": answer, "streamed_chunks": len(chunks)}))
