"""``safeanchor serve`` is never silently wrong: a request it cannot honour is an HTTP 400 naming the
parameter, a broken HTTP request gets a JSON error (never a dropped connection), ``finish_reason`` and
``usage`` tell the truth, sampling is honoured (seeded), and the command checks its options and binds
its port before the model load. A tiny random Llama served in-process over loopback (seconds)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import make_tiny_llama
from typer.testing import CliRunner

from safeanchor.evaluate.generate import generate_ids, stop_token_ids
from safeanchor.evaluate.serve import ServeConfig, running_server

HI = [{"role": "user", "content": "Hi"}]
MAX_NEW = 8


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return make_tiny_llama(len(tiny_tokenizer))  # max_position_embeddings=256


@pytest.fixture(scope="module")
def url(model, tiny_tokenizer):
    cfg = ServeConfig(port=0, max_new_tokens=MAX_NEW, max_body_bytes=4096, request_timeout_s=0.5)
    with running_server(model, tiny_tokenizer, cfg) as u:
        yield u


def post(url: str, body, path: str = "/chat/completions") -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def raw(url: str, data: bytes, *, close_write: bool = True) -> tuple[int, dict, dict]:
    """Send ``data`` verbatim (request line, headers, body); the status, headers and JSON body of the answer."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        resp = http.client.HTTPResponse(s)
        resp.begin()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())


def greedy(model, tok, messages, max_new: int) -> list[int]:
    prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    return generate_ids(model, tok, [prompt], max_new_tokens=max_new, batch_size=1, progress=False)[0]


# ---------------------------------------------------------------------------------------------
# request fields: every one honoured or refused by name
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, param, says", [
    ({"stream": True}, "stream", "'stream': true is not supported"),
    ({"stream": "yes"}, "stream", "must be a boolean"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed with stream"),
    ({"n": 3}, "n", "'n' must be 1"),
    ({"n": True}, "n", "'n' must be 1"),
    ({"max_tokens": True}, "max_tokens", "positive integer; got True"),
    ({"max_tokens": 0}, "max_tokens", "positive integer"),
    ({"max_tokens": "5"}, "max_tokens", "positive integer"),
    ({"max_tokens": 2.5}, "max_tokens", "positive integer"),
    ({"max_completion_tokens": -1}, "max_completion_tokens", "positive integer"),
    ({"max_tokens": 4, "max_completion_tokens": 5}, "max_tokens", "disagree"),
    ({"temperature": 2.5}, "temperature", "[0, 2]"),
    ({"temperature": "hot"}, "temperature", "[0, 2]"),
    ({"temperature": False}, "temperature", "[0, 2]"),
    ({"top_p": 1.5}, "top_p", "[0, 1]"),
    ({"seed": "1"}, "seed", "integer"),
    ({"stop": ["\n"]}, "stop", "not supported"),
    ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
    ({"presence_penalty": 1}, "presence_penalty", "not supported"),
    ({"logprobs": True}, "logprobs", "not supported"),
    ({"logit_bias": {"5": 100}}, "logit_bias", "not supported"),
    ({"response_format": {"type": "json_object"}}, "response_format", "not supported"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
    ({"best_of": 2}, "best_of", "unrecognized request argument 'best_of'"),
    ({"model": 5}, "model", "must be a string"),
])
def test_unhonoured_or_malformed_fields_are_refused_by_name(url, extra, param, says):
    status, body = post(url, {"messages": HI, **extra})
    assert status == 400, body
    err = body["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert says in err["message"] and param in err["message"]


@pytest.mark.parametrize("messages, param, says", [
    (None, "messages", "non-empty list"),
    ([], "messages", "non-empty list"),
    ("Hi", "messages", "non-empty list"),
    (["Hi"], "messages[0]", "must be an object"),
    ([{"role": "tool", "content": "x"}], "messages[0].role", "one of system, user, assistant; got 'tool'"),
    ([{"content": "x"}], "messages[0].role", "got None"),
    ([{"role": "user", "content": 5}], "messages[0].content", "must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "user"}], "messages[1].content", "must be a string"),
    ([{"role": "user", "content": "a", "name": "bob"}], "messages[0].name", "not supported"),
    ([{"role": "user", "content": "word " * 300}], "messages", "the model's context is 256 tokens"),
])
def test_bad_messages_are_refused_by_name(url, messages, param, says):
    body = {} if messages is None else {"messages": messages}
    status, reply = post(url, body)
    assert status == 400 and reply["error"]["param"] == param and says in reply["error"]["message"], reply


def test_a_body_that_is_not_an_object_is_refused(url):
    status, reply = post(url, [HI])
    assert status == 400 and "must be a JSON object; got list" in reply["error"]["message"]


def test_neutral_values_are_accepted_and_give_the_greedy_reply(url, model, tiny_tokenizer):
    status, plain = post(url, {"messages": HI})
    assert status == 200
    neutral = {"model": "any", "n": 1, "stream": False, "stop": None, "frequency_penalty": 0.0, "presence_penalty": 0,
               "logprobs": False, "logit_bias": {}, "tools": [], "user": "u1", "temperature": 0, "top_p": 0.5, "seed": 3}
    status, reply = post(url, {"messages": HI, **neutral})
    assert status == 200, reply
    expected = tiny_tokenizer.decode(greedy(model, tiny_tokenizer, HI, MAX_NEW), skip_special_tokens=True)
    assert reply["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"] == expected


# ---------------------------------------------------------------------------------------------
# finish_reason and usage
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens, expected_tokens", [(3, 3), (None, MAX_NEW), (1000, MAX_NEW)])
def test_a_reply_cut_by_a_token_limit_says_length(url, model, tiny_tokenizer, max_tokens, expected_tokens):
    """The random model never emits EOS this early: every limit (the request's, or the server's cap) cuts it."""
    status, reply = post(url, {"messages": HI, **({"max_tokens": max_tokens} if max_tokens else {})})
    assert status == 200
    new = greedy(model, tiny_tokenizer, HI, expected_tokens)
    assert len(new) == expected_tokens  # the model did not stop by itself
    prompt = tiny_tokenizer.apply_chat_template(HI, add_generation_prompt=True, tokenize=True, return_dict=False)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == tiny_tokenizer.decode(new, skip_special_tokens=True)
    assert reply["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": expected_tokens,
                              "total_tokens": len(prompt) + expected_tokens}


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_a_reply_the_model_ended_says_stop(tiny_tokenizer, max_tokens):
    """A model whose LM head favours the stop token ends at once: "stop", even when max_tokens is 1 (the stop
    token is the one token generated and is counted)."""
    from test_llm_judge import favour_token

    m = make_tiny_llama(len(tiny_tokenizer))
    m = favour_token(m, stop_token_ids(m, tiny_tokenizer)[0])
    with running_server(m, tiny_tokenizer, ServeConfig(port=0, max_new_tokens=MAX_NEW)) as u:
        status, reply = post(u, {"messages": HI, "max_tokens": max_tokens})
    assert status == 200
    assert reply["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                                   "finish_reason": "stop"}
    assert reply["usage"]["completion_tokens"] == 1


def test_judge_format_is_greedy_complete_and_counted(model, tiny_tokenizer):
    with running_server(model, tiny_tokenizer, ServeConfig(port=0, judge_format=True, reason_tokens=4)) as u:
        status, reply = post(u, {"messages": HI, "temperature": 0.0, "max_tokens": 256})
        assert status == 200
        content = reply["choices"][0]["message"]["content"]
        assert content.startswith("#reason: ") and content[-1] in "12345" and "\n#score: " in content
        assert reply["choices"][0]["finish_reason"] == "stop"
        assert reply["usage"]["completion_tokens"] == len(tiny_tokenizer.encode(content, add_special_tokens=False))
        status, reply = post(u, {"messages": HI, "temperature": 0.7})
    assert status == 400 and reply["error"]["param"] == "temperature" and "greedily" in reply["error"]["message"]


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------


def test_sampling_is_honoured_and_seeded(url, model, tiny_tokenizer):
    def content(**kw):
        status, reply = post(url, {"messages": HI, **kw})
        assert status == 200, reply
        assert reply["usage"]["completion_tokens"] == MAX_NEW  # the random model does not stop within 8 tokens
        return reply["choices"][0]["message"]["content"]

    greedy_text = content()
    a, b = content(temperature=1.5, seed=7), content(temperature=1.5, seed=7)
    assert a == b  # same seed, same reply
    assert content(temperature=1.5, seed=8) != a != greedy_text  # a near-uniform random model: other draws
    # the nucleus of a tiny top_p holds only the most likely token: sampling then decodes greedily, which checks
    # the sampler's own KV-cached loop against generate()
    assert content(temperature=1.0, top_p=0.0, seed=1) == greedy_text
    assert isinstance(content(temperature=0.8), str)  # no seed: a fresh draw


# ---------------------------------------------------------------------------------------------
# HTTP: every broken request gets a JSON answer; the server keeps serving
# ---------------------------------------------------------------------------------------------

PATH = "/v1/chat/completions"
GOOD = json.dumps({"messages": HI, "max_tokens": 2}).encode()


@pytest.mark.parametrize("request_bytes, status, says", [
    (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nxx".encode(), 400, "Content-Length header must be"),
    (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\nxx".encode(), 400, "Content-Length header must be"),
    (f"POST {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 411, "Content-Length header is required"),
    (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n".encode(), 411,
     "chunked"),
    (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode(), 400, "body is empty"),
    (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".encode() + b"x" * 5000, 413, "at most 4096"),
    (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".encode() + b"{" * 10, 400,
     "ended after 10 of the 100 bytes"),
    (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{{not json".encode(), 400, "not valid JSON"),
    (f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n".encode() + b"\xff\xfe\xfd", 400, "not valid JSON"),
    (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode(), 404, "no route POST"),
    (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, "no route GET /nope"),
    (f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 405, "use POST"),
    (b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 405, "use GET"),
    (b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 405, "use GET"),
])
def test_broken_http_requests_get_a_json_error(url, capsys, request_bytes, status, says):
    code, headers, body = raw(url, request_bytes)
    assert code == status and says in body["error"]["message"], body
    if code == 405:
        assert headers["Allow"] in ("GET", "POST")
    assert post(url, {"messages": HI, "max_tokens": 1})[0] == 200  # still serving
    assert "Traceback" not in capsys.readouterr().err


def test_an_error_with_an_unread_body_closes_the_connection_and_keep_alive_works(url):
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for _ in range(2):  # keep-alive: two good requests on one connection
            conn.request("POST", PATH, body=GOOD, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200 and json.loads(r.read())["choices"][0]["finish_reason"] == "length"
        conn.request("POST", "/v1/nope", body=GOOD)  # refused before its body is read
        r = conn.getresponse()
        assert r.status == 404 and r.getheader("Connection") == "close"
        r.read()
    finally:
        conn.close()


def test_a_stalled_client_is_answered_408_within_the_timeout(url):
    t0 = time.perf_counter()
    code, _, body = raw(url, f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode(),
                        close_write=False)
    assert code == 408 and "did not arrive within 0.5 s" in body["error"]["message"]
    assert time.perf_counter() - t0 < 5


def test_models_and_health_routes(url):
    with urllib.request.urlopen(url + "/models?x=1", timeout=10) as r:
        assert json.loads(r.read())["data"][0]["id"] == "safeanchor-local"
    with urllib.request.urlopen(url.replace("/v1", "/health"), timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok"}


# ---------------------------------------------------------------------------------------------
# the command: options and socket checked before the model load, one line, exit 2
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_load(monkeypatch):
    import safeanchor.models

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the options and the port were checked")

    monkeypatch.setattr(safeanchor.models, "load_model", load_model)


@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def serve_cli(*args: str):
    from safeanchor.cli import app

    return CliRunner().invoke(app, ["serve", "--model", "unused", *args])


@pytest.mark.parametrize("args, says", [
    (("--precision", "bogus"), "precision must be one of auto, fp32, bf16, fp16; got 'bogus'"),
    (("--device", "bogus"), "device 'bogus' is not a device name"),
    (("--port", "70000"), "--port"),
    (("--port", "-1"), "--port"),
    (("--max-new-tokens", "0"), "--max-new-tokens"),
    (("--host", "192.0.2.1", "--port", "0"), "cannot listen on 192.0.2.1:0: Cannot assign requested address"),
])
def test_bad_options_are_refused_before_the_model_load(no_load, args, says):
    result = serve_cli(*args)
    assert result.exit_code == 2, result.output
    assert says in " ".join(result.output.replace("│", " ").split())
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError)


def test_a_port_in_use_is_one_line_before_the_model_load(no_load, busy_port):
    result = serve_cli("--port", str(busy_port))
    assert result.exit_code == 2
    assert result.output.strip() == f"error: cannot listen on 127.0.0.1:{busy_port}: Address already in use"


def test_installed_command_port_in_use_one_line_exit_2(tiny_model_dir, busy_port):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", "from safeanchor.cli import app; app()", "serve", "--model",
                           str(tiny_model_dir), "--port", str(busy_port), "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "serving" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{busy_port}: Address already in use"]
