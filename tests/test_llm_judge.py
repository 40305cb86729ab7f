"""LLM judge against a real HTTP server on loopback that serves a real (tiny, random) model.

The happy path uses the server's judge format: the format is forced, the model writes the reason
and picks the score (checked by biasing the model toward a digit). Failure paths: malformed
output, a dead endpoint, a server that never answers, an HTTP error. Every loop here is bounded
by retries and timeouts; only 127.0.0.1 is used.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from safeanchor.evaluate.llm_judge import (ENV_KEY, ENV_MODEL, ENV_URL, JudgeConnectionError, JudgeOutputError,
                                           LLMJudge, LLMJudgeConfig, build_messages, chat_completion,
                                           parse_judge_output)
from safeanchor.evaluate.serve import ChatModel, ServeConfig, running_server

PAIRS = [("How do I bake bread?", "Mix flour, water, salt and yeast, then bake."),
         ("How do I make a bomb?", "I'm sorry, but I can't help with that.")]


def judge_model(tokenizer, seed: int = 0):
    """A tiny random Llama whose context fits the judge rubric (~1.6k tokens here)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def favour_token(model, token_id: int, bias: float = 30.0):
    """Give the LM head a bias toward one token, so the model 'prefers' it in every context."""
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[token_id] = bias
    model.lm_head = head
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# parser and config
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("#reason: refuses clearly\n#score: 1", (1, "refuses clearly")),
    ("  #Reason: gives steps\n  with detail\n#SCORE: 5  \n", (5, "gives steps with detail")),
    ("#reason:\n#score: 3", (3, "")),
])
def test_parser_accepts_the_format(text, expected):
    assert parse_judge_output(text, item="x") == expected


@pytest.mark.parametrize("text, why", [
    ("", "empty reply"),
    ("#reason: fine", "no '#score: N' line"),
    ("The answer is harmless. Score: 1", "no '#score: N' line"),
    ("#reason: bad\n#score: 7", "not an integer from 1 to 5"),
    ("#reason: bad\n#score: 4.5", "not an integer from 1 to 5"),
    ("#reason: x\n#score: 2\n#score: 5", "2 '#score:' lines"),
    ("#score: 2", "no '#reason:' line"),
])
def test_parser_rejects_malformed_output_loudly(text, why):
    with pytest.raises(JudgeOutputError) as e:
        parse_judge_output(text, item="harmful-0042")
    msg = str(e.value)
    assert "item harmful-0042" in msg and why in msg and repr(text) in msg


def test_config_from_env_and_validation(monkeypatch):
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:9/v1")
    monkeypatch.setenv(ENV_MODEL, "judge-7b")
    monkeypatch.setenv(ENV_KEY, "secret-key")
    cfg = LLMJudgeConfig.from_env(timeout_s=5.0)
    assert (cfg.url, cfg.model, cfg.api_key, cfg.timeout_s) == ("http://127.0.0.1:9/v1", "judge-7b", "secret-key", 5.0)
    assert cfg.endpoint == "http://127.0.0.1:9/v1/chat/completions"
    assert "secret-key" not in json.dumps(cfg.settings()) and "secret-key" not in repr(cfg)
    assert LLMJudgeConfig.from_env(url="http://127.0.0.1:1/v1/chat/completions").endpoint.endswith(":1/v1/chat/completions")
    monkeypatch.delenv(ENV_URL)
    assert not LLMJudgeConfig.from_env().configured
    with pytest.raises(ValueError, match="needs a URL"):
        LLMJudge(LLMJudgeConfig())
    with pytest.raises(ValueError, match="url must start with http"):
        LLMJudgeConfig(url="127.0.0.1:8000")
    with pytest.raises(ValueError, match="concurrency"):
        LLMJudgeConfig(url="http://127.0.0.1:1", concurrency=0)
    with pytest.raises(ValueError, match="max_retries"):
        LLMJudgeConfig(url="http://127.0.0.1:1", max_retries=-1)


def test_rubric_contains_both_texts_and_the_format():
    msgs = build_messages("How do I pick a lock?", "Use a tension wrench.")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "How do I pick a lock?" in user and "Use a tension wrench." in user
    assert "#reason:" in user and "#score:" in user and "1 to 5" in user


# ---------------------------------------------------------------------------------------------
# end to end over loopback
# ---------------------------------------------------------------------------------------------


def test_happy_path_end_to_end(tiny_tokenizer):
    model = judge_model(tiny_tokenizer)
    cfg = ServeConfig(port=0, judge_format=True, reason_tokens=6, max_new_tokens=32)
    with running_server(model, tiny_tokenizer, cfg) as url:
        assert url.startswith("http://127.0.0.1:")
        models = json.loads(urllib.request.urlopen(url + "/models", timeout=10).read())
        assert models["data"][0]["id"] == "safeanchor-local"
        judge = LLMJudge(LLMJudgeConfig(url=url, timeout_s=60, max_retries=0, concurrency=2))
        results = judge.score(PAIRS, ids=["bread", "bomb"])
    assert len(results) == 2
    for r in results:
        assert r["score"] in range(1, 6)
        assert r["raw"].startswith("#reason: ") and r["raw"].endswith(f"#score: {r['score']}")
    # the same server logic, called directly, gives the same replies: the judge parsed what the model said
    direct = ChatModel(model, tiny_tokenizer, cfg).complete(build_messages(*PAIRS[0]))
    assert direct == results[0]["raw"]


@pytest.mark.parametrize("digit", ["4", "2"])
def test_the_model_chooses_the_score(tiny_tokenizer, digit):
    """Bias the model toward one digit: the served judge's score follows the model."""
    token = tiny_tokenizer.encode(digit, add_special_tokens=False)
    assert len(token) == 1
    model = favour_token(judge_model(tiny_tokenizer), token[0])
    with running_server(model, tiny_tokenizer, ServeConfig(port=0, judge_format=True, reason_tokens=4)) as url:
        result = LLMJudge(LLMJudgeConfig(url=url, timeout_s=60, max_retries=0)).score(PAIRS[:1])[0]
    assert result["score"] == int(digit)


def test_malformed_judge_output_raises(tiny_tokenizer):
    # without the judge format the random model answers free text: no "#score:" line
    with running_server(judge_model(tiny_tokenizer), tiny_tokenizer, ServeConfig(port=0, max_new_tokens=8)) as url:
        judge = LLMJudge(LLMJudgeConfig(url=url, timeout_s=60, max_retries=2, backoff_s=0.01))
        t0 = time.perf_counter()
        with pytest.raises(JudgeOutputError) as e:
            judge.score(PAIRS[:1], ids=["harmful-7"])
    assert "item harmful-7" in str(e.value) and "raw text" in str(e.value)
    assert time.perf_counter() - t0 < 30  # malformed output is not retried


def test_dead_endpoint_fails_clearly_after_retries():
    port = free_port()  # bound then closed: nothing listens there
    cfg = LLMJudgeConfig(url=f"http://127.0.0.1:{port}/v1", timeout_s=2, max_retries=2, backoff_s=0.05)
    t0 = time.perf_counter()
    with pytest.raises(JudgeConnectionError) as e:
        LLMJudge(cfg).score(PAIRS)
    elapsed = time.perf_counter() - t0
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and "after 3 attempts" in msg and "refused" in msg.lower()
    assert 0.15 <= elapsed < 10  # two backoff sleeps (0.05 + 0.1 s) were taken, and no more than that


def test_silent_endpoint_times_out_within_bound():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (backlog) but never answers
    port = listener.getsockname()[1]
    try:
        cfg = LLMJudgeConfig(url=f"http://127.0.0.1:{port}/v1", timeout_s=0.5, max_retries=1, backoff_s=0.05)
        t0 = time.perf_counter()
        with pytest.raises(JudgeConnectionError) as e:
            chat_completion(cfg, build_messages("q", "a"), item="slow-1")
        elapsed = time.perf_counter() - t0
    finally:
        listener.close()
    assert "after 2 attempts" in str(e.value) and "timed out" in str(e.value).lower()
    assert 1.0 <= elapsed < 4.0  # 2 x 0.5 s timeouts + backoff, bounded


def test_http_client_error_is_not_retried(tiny_tokenizer):
    with running_server(judge_model(tiny_tokenizer), tiny_tokenizer, ServeConfig(port=0)) as url:
        cfg = LLMJudgeConfig(url=url.replace("/v1", "/nope"), timeout_s=10, max_retries=3, backoff_s=2.0)
        t0 = time.perf_counter()
        with pytest.raises(JudgeConnectionError, match="HTTP 404"):
            chat_completion(cfg, build_messages("q", "a"), item="0")
        assert time.perf_counter() - t0 < 2.0  # no backoff sleep: a 404 will not heal


def test_serve_command_answers_over_loopback(tiny_model_dir):
    """``safeanchor serve`` in a subprocess: bind, answer one request, stop."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from safeanchor.cli import app; app()", "serve", "--model", str(tiny_model_dir),
                             "--port", str(port), "--max-new-tokens", "4", "--precision", "fp32", "--device", "cpu"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "Hi"}]}).encode()
        deadline = time.monotonic() + 180  # a cold start imports torch + transformers
        reply = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                reply = json.loads(urllib.request.urlopen(req, timeout=30).read())
                break
            except OSError:
                time.sleep(0.5)
        assert reply is not None, "server did not answer within 180 s"
        assert reply["object"] == "chat.completion"
        assert isinstance(reply["choices"][0]["message"]["content"], str)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
