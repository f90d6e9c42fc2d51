"""generate / chat / embed through an Ollama worker and tools/ollama-sim."""

import time

import pytest

import agentbus


@pytest.fixture
def ollama(bus, sim):
    port = sim("--time-scale", "20", "--quiet")
    bus.sim_port = port
    bus.procs.spawn("agentbus-worker", "--broker", bus.endpoint, "--backend", "ollama",
                    "--ollama-url", "http://127.0.0.1:%d" % port, "--name", "gpu0",
                    "--heartbeat-ms", "200")
    bus.wait_workers("ollama")
    return bus


def test_generate_stream(ollama):
    with ollama.client() as c:
        chunks = list(c.generate("sim-small", "Why is the sky blue?", stream=True,
                                 options={"seed": 7}, timeout=20))
        assert len(chunks) > 2
        assert all(not ch["done"] for ch in chunks[:-1])
        last = chunks[-1]
        assert last["done"] and last["done_reason"] == "stop"
        assert last["eval_count"] > 0 and last["total_duration"] > 0
        assert last["worker"] == "gpu0"
        text = "".join(ch["response"] for ch in chunks)
        assert text.strip()
        whole = c.generate("sim-small", "Why is the sky blue?", options={"seed": 7}, timeout=20)
        assert whole["done"] and whole["response"] == text  # same seed, same words


def test_chat_and_embed(ollama):
    with ollama.client() as c:
        r = c.chat("sim-small", [{"role": "user", "content": "hi"}], timeout=20)
        assert r["done"] and r["message"]["role"] == "assistant" and r["message"]["content"]
        parts = list(c.chat("sim-small", [{"role": "user", "content": "hi"}], stream=True,
                            timeout=20))
        assert parts[-1]["done"] and len(parts) > 1
        e = c.embed("sim-embed", ["one", "two"], timeout=20)
        assert len(e["embeddings"]) == 2 and len(e["embeddings"][0]) == 768
        assert isinstance(e["embeddings"][0][0], float)


TOOLS = [{"type": "function", "function": {"name": "get_time", "description": "the time",
           "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                          "required": ["zone"]}}}]


@pytest.mark.parametrize("stream", [False, True])
def test_chat_tools(ollama, stream):
    """A two-turn tool conversation: the simulator's model calls get_time
    (docs/ollama-sim.md, "Tool calls"), the result goes back with
    tool_name, and the answer quotes it."""
    def chat(c, messages):
        if not stream:
            return c.chat("sim-small", messages, tools=TOOLS, timeout=20,
                          options={"temperature": 0, "num_predict": 3})
        parts = list(c.chat("sim-small", messages, tools=TOOLS, stream=True, timeout=20,
                            options={"temperature": 0, "num_predict": 3}))
        msg = {"role": "assistant", "content": "".join(p["message"]["content"] for p in parts)}
        calls = [t for p in parts for t in p["message"].get("tool_calls", [])]
        if calls:
            msg["tool_calls"] = calls
        return dict(parts[-1], message=msg)

    with ollama.client() as c:
        messages = [{"role": "user", "content": "what time is it in Lima? (%s)" % stream}]
        r = chat(c, messages)
        assert r["done"] and r["message"]["content"] == ""
        assert r["message"]["tool_calls"] == [
            {"function": {"name": "get_time", "arguments": {"zone": "sim-zone"}}}]
        messages += [r["message"], {"role": "tool", "content": "noon", "tool_name": "get_time"}]
        r = chat(c, messages)
        assert "tool_calls" not in r["message"]
        assert r["message"]["content"].startswith("The get_time tool said: noon. ")


def test_model_not_found(ollama):
    with ollama.client() as c:
        with pytest.raises(agentbus.ModelNotFoundError) as e:
            c.generate("no-such-model", "x", timeout=20)
        assert e.value.text


def test_generate_cancel(ollama):
    with ollama.client() as c:
        s = c.generate("sim-large", "long story", stream=True, options={"num_predict": 2000},
                       timeout=60)
        first = next(s)
        assert "response" in first
        s.close()
        assert c.pending == 0
        # the slot is free again: a new request is served
        assert c.generate("sim-small", "again", timeout=20)["done"]


def test_images_and_untyped_options(ollama):
    """Images and options without a typed field (mirostat, num_gpu) reach
    the backend: the simulator counts 576 prompt tokens an image and the
    option names it sees. The worker dropped both before."""
    import json
    import urllib.request

    def seen():
        url = "http://127.0.0.1:%d/sim/stats" % ollama.sim_port
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r).get("options_seen", {})
    with ollama.client() as c:
        before = seen()
        plain = c.generate("sim-small", "look", options={"seed": 1, "num_predict": 2}, timeout=20)
        img = c.generate("sim-small", "look", images=[b"\x89PNG\r\n"],
                         options={"seed": 1, "num_predict": 2, "mirostat": 2, "num_gpu": 1},
                         timeout=20)
        after = seen()
    assert img["prompt_eval_count"] == plain["prompt_eval_count"] + 576
    assert after.get("mirostat", 0) - before.get("mirostat", 0) == 1
    assert after.get("num_gpu", 0) - before.get("num_gpu", 0) == 1


def test_think(ollama):
    """think reaches a reasoning model and its thinking comes back apart
    from the answer (the simulator's sim-small thinks 6 words for True, 3
    for "low"); a model without thinking answers Ollama's 400. The binding
    had no think before (a TypeError)."""
    with ollama.client() as c:
        g = c.generate("sim-small", "think", think=True,
                       options={"seed": 1, "num_predict": 2}, timeout=20)
        assert g["thinking"] == "Let me think this through step"
        plain = c.generate("sim-small", "think", options={"seed": 1, "num_predict": 2},
                           timeout=20)
        assert "thinking" not in plain and plain["response"] == g["response"]
        r = c.chat("sim-small", [{"role": "user", "content": "hi"}], think="low",
                   options={"seed": 1, "num_predict": 2}, timeout=20)
        assert r["message"]["thinking"] == "Let me think"
        with pytest.raises(Exception) as e:
            c.chat("sim-large", [{"role": "user", "content": "hi"}], think=True, timeout=20)
        assert "does not support thinking" in str(e.value)


def test_logprobs_context(ollama):
    """logprobs / top_logprobs reach Ollama and each token's entry comes
    back (an entry per eval_count token, the sampled token first among
    TOP alternatives); a generate's context comes back and, sent with the
    next prompt, counts as its prompt. The binding had neither before (a
    TypeError)."""
    opts = {"seed": 2, "num_predict": 3}
    with ollama.client() as c:
        g = c.generate("sim-small", "how likely", logprobs=True, top_logprobs=2,
                       options=opts, timeout=20)
        assert len(g["logprobs"]) == g["eval_count"] == 3
        assert "".join(e["token"] for e in g["logprobs"]) == g["response"]
        assert all(len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["token"] == e["token"]
                   and e["logprob"] <= 0 for e in g["logprobs"])
        assert len(g["context"]) == g["prompt_eval_count"] + g["eval_count"]
        n = c.generate("sim-small", "and then", context=g["context"], options=opts, timeout=20)
        assert n["prompt_eval_count"] == len(g["context"]) + 2
        assert n["context"][:len(g["context"])] == g["context"] and "logprobs" not in n
        pieces = list(c.chat("sim-small", [{"role": "user", "content": "hi"}], logprobs=True,
                             stream=True, options=opts, timeout=20))
        lps = [e for p in pieces for e in p.get("logprobs", [])]
        assert len(lps) == pieces[-1]["eval_count"] == 3


def test_ids_out_of_range(ollama):
    """A token id or top_logprobs the bus field cannot hold is a ValueError
    naming it: ctypes wrapped them, so context=[-1] reached Ollama as
    4294967295, [2**32] as 0, [1.5] as 1 and top_logprobs=2**33 as 0
    (no alternatives), silently. The edges still cross."""
    with ollama.client() as c:
        for ctx in ([-1], [2**32], [1.5]):
            with pytest.raises(ValueError, match="context"):
                c.generate("sim-small", "x", context=ctx, timeout=20)
        with pytest.raises(ValueError, match="top_logprobs"):
            c.generate("sim-small", "x", logprobs=True, top_logprobs=2**33, timeout=20)
        g = c.generate("sim-small", "x", context=[0, 4294967295], options={"num_predict": 1},
                       timeout=20)
        assert g["context"][:2] == [0, 4294967295]


def test_wrong_types_are_refused(ollama):
    """A text field given another type, a text with a NUL, or a list given
    as a str or dict is a TypeError/ValueError naming it, before anything
    is sent. ctypes took them before: prompt=5 went as "" (and
    system=10**8 allocated 100 MB of NULs to send ""), "a\\0b" as "a",
    images="abc" as three one-byte images, context="12" as [1, 2],
    raw="false" as True; options=[1] and messages=["hi"] raised
    AttributeError."""
    msgs = [{"role": "user", "content": "hi"}]
    with ollama.client() as c:
        cases = [
            (TypeError, "prompt", lambda: c.generate("sim-small", 5, timeout=20)),
            (TypeError, "system", lambda: c.generate("sim-small", "x", system=10**8, timeout=20)),
            (ValueError, "prompt", lambda: c.generate("sim-small", "a\0b", timeout=20)),
            (TypeError, "images", lambda: c.generate("sim-small", "x", images="abc", timeout=20)),
            (TypeError, "images", lambda: c.generate("sim-small", "x", images=[5], timeout=20)),
            (TypeError, "context", lambda: c.generate("sim-small", "x", context="12", timeout=20)),
            (TypeError, "raw", lambda: c.generate("sim-small", "x", raw="false", timeout=20)),
            (TypeError, "options", lambda: c.generate("sim-small", "x", options=[1], timeout=20)),
            (TypeError, "temperature", lambda: c.generate("sim-small", "x",
                                                          options={"temperature": "0"})),
            (TypeError, "messages", lambda: c.chat("sim-small", "hi", timeout=20)),
            (TypeError, "message", lambda: c.chat("sim-small", ["hi"], timeout=20)),
            (TypeError, "content", lambda: c.chat("sim-small", [{"role": "user", "content": 5}])),
            (ValueError, "content", lambda: c.chat("sim-small", [{"role": "user",
                                                                  "content": "a\0b"}])),
            (TypeError, "format", lambda: c.chat("sim-small", msgs, format=5, timeout=20)),
        ]
        for exc, name, call in cases:
            with pytest.raises(exc, match=name):
                call()
        assert c.generate("sim-small", "x", options={"num_predict": 1}, timeout=20)["done"]


def test_format_schema(ollama):
    """format takes a JSON schema (a dict), as Ollama's does and the
    gateway carries it: it crosses as its text, and the simulator answers
    JSON. Before, a dict raised TypeError from ctypes ("{'type': ...}")."""
    import json
    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    with ollama.client() as c:
        g = c.generate("sim-small", "x", format=schema, options={"num_predict": 4}, timeout=20)
        assert isinstance(json.loads(g["response"]), dict)
        r = c.chat("sim-small", [{"role": "user", "content": "x"}], format=schema,
                   options={"num_predict": 4}, timeout=20)
        assert isinstance(json.loads(r["message"]["content"]), dict)


def test_big_unstreamed_answer(ollama):
    """An answer over the worker's 8 MiB bound for stream: false (7,000
    tokens with 20 top_logprobs each, ~9 MB) is a TooLargeError (BackendError
    until 2026-12-06) saying so and what to do; it said "backend sent a line
    over the size limit", though the client had asked for no lines."""
    with ollama.client() as c:
        with pytest.raises(agentbus.TooLargeError, match="stream: true"):
            c.generate("sim-small", "x", logprobs=True, top_logprobs=20,
                       options={"num_predict": 7000}, timeout=120)


def test_embed_dimensions(ollama):
    """dimensions reaches Ollama: the simulator cuts the vectors to it (and
    normalises them again). The binding had no dimensions before."""
    with ollama.client() as c:
        e = c.embed("sim-embed", ["a", "b"], dimensions=16, timeout=20)
    assert [len(v) for v in e["embeddings"]] == [16, 16]
    assert abs(sum(x * x for x in e["embeddings"][0]) - 1) < 1e-4


def test_truncate_shift(ollama):
    """truncate and shift reach Ollama: with num_ctx 8 the simulator refuses
    a longer prompt when truncate is False, and shift False ends the answer
    when the context is full. The binding had neither before."""
    words = "one two three four five six seven eight nine ten eleven twelve"
    with ollama.client() as c:
        cut = c.generate("sim-small", words, options={"num_ctx": 8, "seed": 1}, timeout=20)
        assert cut["prompt_eval_count"] == 8
        with pytest.raises(Exception) as e:
            c.generate("sim-small", words, options={"num_ctx": 8}, truncate=False, timeout=20)
        assert "exceeds the available context size" in str(e.value)
        r = c.chat("sim-small", [{"role": "user", "content": "one two three"}], shift=False,
                   options={"num_ctx": 10, "seed": 1}, timeout=20)
        assert r["done_reason"] == "length" and r["eval_count"] == 10 - r["prompt_eval_count"]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "unstreamed"])
def test_long_answers_past_their_deadline_do_not_eject(bus, sim, stream):
    # One client asks a slow model for long answers with a 1.5 s deadline:
    # each passes while the worker generates it, and the worker answers the
    # CANCEL at once, saying its backend had begun (tokens were flowing).
    # Five such deadlines ejected the only worker, again at each probe; a
    # request that was long is not a worker that failed. With stream: false
    # Ollama sent nothing until the whole answer was ready, so the worker
    # could not say it had begun: it now asks Ollama to stream and puts the
    # lines together itself (docs/health.md, "Circuit breaker").
    port = sim("--quiet", "--model", "slow,token_ms=100,load_ms=0,reply_tokens=1000",
               "--model", "fast,token_ms=1,load_ms=0,reply_tokens=3")
    bus.procs.spawn("agentbus-worker", "--broker", bus.endpoint, "--backend", "ollama",
                    "--ollama-url", "http://127.0.0.1:%d" % port, "--heartbeat-ms", "200")
    bus.wait_workers("ollama")
    with bus.client() as c:
        for i in range(7):
            # DEADLINE from the broker, or TIMEOUT from the library when the
            # broker's answer comes more than its 250 ms grace late (a busy
            # machine): either way the deadline passed at the broker.
            with pytest.raises((agentbus.DeadlineError, agentbus.TimeoutError)):
                r = c.generate("slow", "a long story %d" % i, stream=stream, timeout=1.5)
                if stream:
                    list(r)
        # Each deadline is judged when the worker answers its CANCEL: the
        # last ones may come after the loop.
        end = time.monotonic() + 30
        while True:
            st = c.control("stats")
            if st["deadline_busy"] >= 5 or time.monotonic() > end:
                break
            time.sleep(0.1)
        assert st["workers_ejected"] == 0 and st["deadline_busy"] >= 5, st["deadline_busy"]
        assert c.generate("fast", "hi", timeout=10)["done"]


def _sim_whole(port, path, body):
    """Ollama-sim's own stream: false answer to BODY."""
    import json
    import urllib.request
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 data=json.dumps(dict(body, stream=False)).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.load(r)


def _same_answer(ours, theirs):
    """OURS (the worker's REPLY) holds what THEIRS (the backend's stream:
    false answer) does, but for the time it was made and the durations."""
    skip = {"created_at", "worker", "total_duration", "load_duration", "prompt_eval_duration",
            "eval_duration"}
    a = {k: v for k, v in ours.items() if k not in skip}
    b = {k: v for k, v in theirs.items() if k not in skip}
    assert a == b


def test_unstreamed_answer_is_ollamas(ollama):
    """The worker asks Ollama to stream a stream: false request and puts
    the lines together: the REPLY holds what Ollama's own stream: false
    answer does (text, thinking, logprobs, tool calls, context, counts)."""
    opts = {"seed": 3, "num_predict": 12}
    with ollama.client() as c:
        g = c.generate("sim-small", "Why is the sky blue?", think=True, logprobs=True,
                       top_logprobs=2, options=opts, timeout=20)
        _same_answer(g, _sim_whole(ollama.sim_port, "/api/generate", {
            "model": "sim-small", "prompt": "Why is the sky blue?", "think": True,
            "logprobs": True, "top_logprobs": 2, "options": opts}))
        assert g["thinking"] and g["response"] and g["context"] and len(g["logprobs"]) > 12
        g = c.generate("sim-small", "a JSON object", format="json", options=opts, timeout=20)
        _same_answer(g, _sim_whole(ollama.sim_port, "/api/generate", {
            "model": "sim-small", "prompt": "a JSON object", "format": "json",
            "options": opts}))
        msgs = [{"role": "user", "content": "hello there"}]
        r = c.chat("sim-small", msgs, think=True, logprobs=True, options=opts, timeout=20)
        _same_answer(r, _sim_whole(ollama.sim_port, "/api/chat", {
            "model": "sim-small", "messages": msgs, "think": True, "logprobs": True,
            "options": opts}))
        assert r["message"]["thinking"] and r["message"]["content"] and r["logprobs"]
        msgs = [{"role": "user", "content": "what time is it in Lima?"}]
        r = c.chat("sim-small", msgs, tools=TOOLS, options=opts, timeout=20)
        _same_answer(r, _sim_whole(ollama.sim_port, "/api/chat", {
            "model": "sim-small", "messages": msgs, "tools": TOOLS, "options": opts}))
        assert r["message"]["tool_calls"]
        msgs += [r["message"], {"role": "tool", "content": "noon", "tool_name": "get_time"}]
        r = c.chat("sim-small", msgs, tools=TOOLS, options=opts, timeout=20)
        _same_answer(r, _sim_whole(ollama.sim_port, "/api/chat", {
            "model": "sim-small", "messages": msgs, "tools": TOOLS, "options": opts}))
        assert r["message"]["content"].startswith("The get_time tool said: noon. ")
