#!/usr/bin/python3
"""agentbus-gateway's checks of values in range (not only of types), with a
real broker, ollama-sim, an Ollama worker and the gateway on free loopback
ports.

Usage: test_values.py BIN_DIR CASE, CASE one of:
  ranges    OpenAI's numeric parameters outside the range its API takes
            (max_tokens -5 and 0, max_completion_tokens 0, temperature 2.5,
            top_p 1.5, presence_penalty -3, frequency_penalty 2.5, n 0) get
            a 400 invalid_request_error whose message and param name the
            parameter, on /v1/chat/completions and /v1/completions, and
            never reach the simulator (max_tokens -5 went on as Ollama's
            num_predict -5: no limit). The bounds themselves are served,
            and Ollama's options.num_predict -1 and -2 (its "no limit" and
            "fill the context") too.
  embedempty an empty embeddings input: on /v1/embeddings "", [], [""] and
            none get a 400 naming input (OpenAI refuses them); on /api/embed
            "", [] and none get Ollama's answer, 200 with no embeddings (the
            model loaded), [""] an embedding; /api/embeddings with prompt ""
            {"embedding": []}; an unknown model still 404.
Standard library only; helpers shared with test_shed.py and
test_harden.py."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_shed as t  # noqa: E402
import test_harden as h  # noqa: E402

check, post = t.check, t.post
MSGS = [{"role": "user", "content": "hi"}]


def s_refused(gw, path, body, field):
    """POST BODY: a 400 in OpenAI's shape naming FIELD (message and param)."""
    st, _, text = post(gw + path, body)
    err = json.loads(text).get("error") if st == 400 else None
    ok = (isinstance(err, dict) and err.get("type") == "invalid_request_error" and
          err.get("param") == field and str(err.get("message")).startswith(f"invalid {field}:"))
    check(ok, f"{path} {json.dumps(body)[:90]}: 400 naming {field} ({st} {text[:200]})")


def case_ranges(tmp):
    sim, [(gw, _, _)] = t.start_stack(tmp, [[]])
    base = t.sim_stats(sim)["requests"]
    bad = [("max_tokens", -5), ("max_tokens", 0), ("max_completion_tokens", 0),
           ("temperature", 2.5), ("temperature", -0.1), ("top_p", 1.5), ("top_p", -1),
           ("presence_penalty", -3), ("frequency_penalty", 2.5), ("n", 0)]
    for field, value in bad:
        s_refused(gw, "/v1/chat/completions", {"model": "fast", "messages": MSGS, field: value},
                  field)
        if field != "max_completion_tokens":
            s_refused(gw, "/v1/completions", {"model": "fast", "prompt": "x", field: value},
                      field)
    check(t.sim_stats(sim)["requests"] == base, "none of them reached the simulator")
    good = [
        ("/v1/chat/completions", {"model": "fast", "messages": MSGS, "max_tokens": 1,
                                  "temperature": 2, "top_p": 0, "presence_penalty": -2,
                                  "frequency_penalty": 2, "n": 1, "seed": -7}),
        ("/v1/completions", {"model": "fast", "prompt": "x", "max_tokens": 5, "temperature": 0,
                             "top_p": 1}),
        ("/api/generate", {"model": "fast", "prompt": "x", "stream": False,
                           "options": {"num_predict": -1}}),
        ("/api/generate", {"model": "fast", "prompt": "x", "stream": False,
                           "options": {"num_predict": -2}}),
    ]
    for path, body in good:
        st, _, text = post(gw + path, dict(body, stream=False), {"X-Agentbus-Cache": "off"})
        check(st == 200, f"{path} {json.dumps(body)[:90]}: served ({st} {text[:160]})")


def case_embedempty(tmp):
    sim, [(gw, _, _)] = t.start_stack(tmp, [[]])
    base = t.sim_stats(sim)["requests"]
    for body in ({"input": ""}, {"input": []}, {"input": [""]}, {"input": ["x", ""]}, {}):
        s_refused(gw, "/v1/embeddings", dict(body, model="fast"), "input")
    check(t.sim_stats(sim)["requests"] == base, "none of them reached the simulator")
    for body in ({"input": ""}, {"input": []}, {}):
        st, _, text = post(gw + "/api/embed", dict(body, model="fast"))
        o = json.loads(text) if st == 200 else {}
        check(st == 200 and o.get("embeddings") == [] and o.get("model") == "fast",
              f"/api/embed {json.dumps(body)}: 200 with no embeddings, as Ollama "
              f"({st} {text[:160]})")
    st, _, text = post(gw + "/api/embed", {"model": "fast", "input": [""]})
    o = json.loads(text) if st == 200 else {}
    check(st == 200 and len(o.get("embeddings", [])) == 1 and len(o["embeddings"][0]) > 0,
          f'/api/embed [""]: an embedding of the empty text ({st} {text[:100]})')
    st, _, text = post(gw + "/api/embeddings", {"model": "fast", "prompt": ""})
    check(st == 200 and json.loads(text) == {"embedding": []},
          f'/api/embeddings prompt "": {{"embedding": []}} ({st} {text[:100]})')
    st, _, text = post(gw + "/api/embed", {"model": "nope", "input": ""})
    check(st == 404, f'/api/embed "" of an unknown model: 404 ({st} {text[:100]})')


def main():
    h.run_case("ab-gw-values.", {"ranges": case_ranges, "embedempty": case_embedempty})


if __name__ == "__main__":
    main()
