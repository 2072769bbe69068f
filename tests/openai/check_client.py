#!/usr/bin/env python3
"""Drives Cairn's OpenAI-compatible API with the official `openai` Python client.

usage: check_client.py --base-url https://127.0.0.1:PORT/v1 --api-key TOKEN [--quick]

Every check raises AssertionError with what a user would see go wrong; the last line printed
is "all checks passed". The appliance's certificate is self-signed, so TLS verification is off
(the console's certificate pinning is tested elsewhere).
"""
import argparse
import math
import sys
import time

import openai

try:  # openai 3.x ships on httpx2; 1.x/2.x on httpx.
    import httpx2 as httpx
except ImportError:
    import httpx

CHAT = "smollm2-135m-instruct-q4_1"
EMBED = "all-minilm-l6-v2"


def check(name, cond, detail=""):
    if not cond:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok: {name}", flush=True)


def expect_error(name, status, fn):
    try:
        fn()
    except openai.APIStatusError as e:
        check(name, e.status_code == status, f"status {e.status_code}, wanted {status}: {e}")
        body = e.body if isinstance(e.body, dict) else {}
        check(f"{name} has an OpenAI error body", bool(body.get("message")), repr(e.body))
        return e
    raise AssertionError(f"{name}: the request succeeded, wanted HTTP {status}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", required=True, help="a Cairn API token (operator or admin)")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter generations (emulated CPUs)")
    a = ap.parse_args()
    http = httpx.Client(verify=False, timeout=httpx.Timeout(600.0))

    stranger = openai.OpenAI(base_url=a.base_url, api_key="cairn_0000_wrong", http_client=http, max_retries=0)
    try:
        stranger.models.list()
        raise AssertionError("a wrong API key was accepted")
    except openai.AuthenticationError as e:
        check("a wrong API key is refused with 401", e.status_code == 401, str(e))

    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, http_client=http, max_retries=0)
    # Hand-made requests (what the client library would never send) carry the token too.
    raw_http = httpx.Client(verify=False, timeout=httpx.Timeout(600.0),
                            headers={"authorization": f"Bearer {a.api_key}"})

    ids = [m.id for m in client.models.list().data]
    check("models lists the chat and embedding models", CHAT in ids and EMBED in ids, ids)

    q = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    n = 8 if a.quick else 24
    r = client.chat.completions.create(model=CHAT, messages=q, temperature=0, max_tokens=n, seed=7)
    text = r.choices[0].message.content
    check("a greedy chat reply mentions Paris", "Paris" in text, repr(text))
    check("usage counts prompt and completion tokens",
          r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= n
          and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage)
    check("finish_reason is stop or length", r.choices[0].finish_reason in ("stop", "length"),
          r.choices[0].finish_reason)

    chunks = client.chat.completions.create(model=CHAT, messages=q, temperature=0, max_tokens=n, seed=7,
                                            stream=True, stream_options={"include_usage": True})
    parts, usage, finish = [], None, None
    for c in chunks:
        if c.usage is not None:
            usage = c.usage
        for ch in c.choices:
            if ch.delta.content:
                parts.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
    check("a streamed greedy reply equals the unstreamed one", "".join(parts) == text,
          f"{''.join(parts)!r} vs {text!r}")
    check("the stream arrives in several pieces", len(parts) >= 2, parts)
    check("the stream ends with a finish reason and usage",
          finish is not None and usage is not None and usage.completion_tokens == r.usage.completion_tokens,
          (finish, usage))

    r = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Count from 1 to 20, comma separated."}],
                                       temperature=0, max_tokens=4)
    check("max_tokens ends the reply with finish_reason length",
          r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4, r)

    if not a.quick:
        r = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Count from 1 to 20, comma separated."}],
                                           temperature=0, max_tokens=60, stop=["5"])
        t = r.choices[0].message.content
        check("a stop string ends the reply before it", "5" not in t and r.choices[0].finish_reason == "stop", repr(t))
        s1 = client.chat.completions.create(model=CHAT, messages=q, temperature=0.9, max_tokens=12, seed=42)
        s2 = client.chat.completions.create(model=CHAT, messages=q, temperature=0.9, max_tokens=12, seed=42)
        check("the same seed gives the same sampled reply",
              s1.choices[0].message.content == s2.choices[0].message.content,
              (s1.choices[0].message.content, s2.choices[0].message.content))

    e = client.embeddings.create(model=EMBED, input=["The cat sits on the mat.", "A cat is sitting on a mat.",
                                                     "Quarterly revenue grew by eight percent."])
    vs = [d.embedding for d in e.data]
    check("embeddings have 384 dimensions", all(len(v) == 384 for v in vs), [len(v) for v in vs])
    norms = [math.sqrt(sum(x * x for x in v)) for v in vs]
    check("embeddings are L2-normalised", all(abs(nv - 1) < 1e-3 for nv in norms), norms)
    cos = lambda u, v: sum(x * y for x, y in zip(u, v))
    check("paraphrases are closer than unrelated text", cos(vs[0], vs[1]) > cos(vs[0], vs[2]) + 0.3,
          (cos(vs[0], vs[1]), cos(vs[0], vs[2])))
    check("embedding usage counts tokens", e.usage.prompt_tokens > 10, e.usage)

    err = expect_error("an unknown model is 404", 404,
                       lambda: client.chat.completions.create(model="no-such-model", messages=q))
    check("the unknown model error names the model parameter", err.body.get("param") == "model", err.body)
    expect_error("empty messages are 400", 400,
                 lambda: client.chat.completions.create(model=CHAT, messages=[]))
    expect_error("a chat model cannot embed", 400, lambda: client.embeddings.create(model=CHAT, input="x"))
    expect_error("max_tokens 0 is 400", 400,
                 lambda: client.chat.completions.create(model=CHAT, messages=q, max_tokens=0))
    err = expect_error("a prompt longer than the context is 400", 400,
                       lambda: client.chat.completions.create(
                           model=CHAT, messages=[{"role": "user", "content": "word " * 9000}], max_tokens=4))
    check("the overlong prompt error says context_length_exceeded",
          err.body.get("code") == "context_length_exceeded", err.body)
    raw = raw_http.post(a.base_url + "/chat/completions", content=b'{"model": "x", "messages": [',
                    headers={"content-type": "application/json"})
    check("malformed JSON is 400 with an error body", raw.status_code == 400 and "error" in raw.json(), raw.text)
    raw = raw_http.post(a.base_url + "/chat/completions", headers={"content-type": "application/json"},
                    content=b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}' % CHAT.encode())
    check("a NaN temperature is 400", raw.status_code == 400, raw.text)
    raw = raw_http.post(a.base_url + "/chat/completions", headers={"content-type": "application/json"},
                    content=b'{"model": "%s", "messages": [{"role": "user", "content": "\xff\xfe"}]}' % CHAT.encode())
    check("invalid UTF-8 is 400", raw.status_code == 400, raw.text)

    # A client that goes away mid-stream: the server stops generating and keeps serving.
    api = a.base_url.rsplit("/v1", 1)[0] + "/api/v1/system"
    engine = lambda: raw_http.get(api).json()["inference"]["engines"][CHAT]
    before = engine()["generated_tokens"]
    with client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Tell me a long story."}],
                                        temperature=0, max_tokens=400, stream=True) as s:
        for i, _ in enumerate(s):
            if i >= 2:
                break
    for _ in range(600):
        e = engine()
        if e["active"] == 0 and e["waiting"] == 0:
            break
        time.sleep(0.1)
    check("generation stops when the client disconnects mid-stream",
          e["active"] == 0 and e["generated_tokens"] - before < 100, (before, e))
    r = client.chat.completions.create(model=CHAT, messages=q, temperature=0, max_tokens=n)
    check("the server still answers after a client disconnected mid-stream",
          r.choices[0].message.content == text, repr(r.choices[0].message.content))
    print("all checks passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
