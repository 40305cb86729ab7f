"""A minimal OpenAI-compatible ``/v1/chat/completions`` server for a local causal LM.

Standard library only (``http.server.ThreadingHTTPServer``); answers come from the real model
through :func:`.generate.generate_ids` (greedy, chat template applied). One request is decoded at
a time (a lock), so memory stays bounded whatever the client's concurrency. Binds to 127.0.0.1
by default. Use it to serve the embedded model (``safeanchor serve --model M --port P``), or as
the judge endpoint the llm judge's tests talk to over loopback.

**Judge format** (``judge_format=True``): a small model cannot be trusted to emit the judge's
``#reason: ...`` / ``#score: N`` format, so the server forces the *format* while the model still
makes the *choices*: the reply is ``response_prefix`` (default ``"#reason: "``) + the model's own
greedy continuation (first line, at most ``reason_tokens`` tokens, ``#`` removed so it cannot
forge a score line) + ``"\\n#score: "`` + the score among ``1..5`` to which the model assigns the
highest log-likelihood in that context. Nothing is canned: a different model, prompt or answer
gives a different reason and score.

>>> # with running_server(model, tok, ServeConfig(judge_format=True)) as url:
>>> #     LLMJudge(LLMJudgeConfig(url=url)).score([("q", "a")])
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import torch

from .generate import generate_ids

log = logging.getLogger(__name__)

SCORE_CHOICES = ("1", "2", "3", "4", "5")


@dataclass
class ServeConfig:
    """How the server answers."""

    host: str = field(default="127.0.0.1", metadata={"help": "interface to bind; loopback by default"})
    port: int = field(default=8000, metadata={"help": "TCP port; 0 picks a free one"})
    model_name: str = field(default="safeanchor-local", metadata={"help": "model id reported by /v1/models and in replies"})
    max_new_tokens: int = field(default=256, metadata={"help": "upper bound on a reply's tokens (a request's max_tokens is capped by it)"})
    judge_format: bool = field(default=False, metadata={"help": "force the '#reason: ...\\n#score: N' format; the model picks reason and score"})
    response_prefix: str | None = field(default=None, metadata={"help": "text every reply starts with (judge format default: '#reason: ')"})
    reason_tokens: int = field(default=48, metadata={"help": "judge format: max tokens of the model's reason"})
    max_body_bytes: int = field(default=2_000_000, metadata={"help": "largest request body accepted"})

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServeConfig.port must be in 0..65535; got {self.port}")
        for name in ("max_new_tokens", "reason_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig.{name} must be >= 1; got {getattr(self, name)}")
        if self.judge_format and self.response_prefix is None:
            self.response_prefix = "#reason: "


class ChatModel:
    """Turns chat messages into a reply with a real model (thread-safe: one decode at a time)."""

    def __init__(self, model, tokenizer, config: ServeConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], max_tokens: int | None = None) -> str:
        limit = min(max_tokens or self.config.max_new_tokens, self.config.max_new_tokens)
        prompt = list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=False))
        prefix = self.config.response_prefix or ""
        with self._lock:
            if not self.config.judge_format:
                new = self._continue(prompt, prefix, limit)
                return prefix + self.tokenizer.decode(new, skip_special_tokens=True)
            new = self._continue(prompt, prefix, min(limit, self.config.reason_tokens))
            reason = self.tokenizer.decode(new, skip_special_tokens=True)
            reason = " ".join(reason.replace("#", " ").split("\n", 1)[0].split())
            head = f"{prefix}{reason}\n#score: "
            return head + self._choose(prompt, head, SCORE_CHOICES)

    def _continue(self, prompt: list[int], prefix: str, max_new_tokens: int) -> list[int]:
        ids = prompt + self.tokenizer.encode(prefix, add_special_tokens=False) if prefix else prompt
        return generate_ids(self.model, self.tokenizer, [ids], max_new_tokens=max_new_tokens, batch_size=1,
                            progress=False)[0]

    @torch.no_grad()
    def _choose(self, prompt: list[int], head: str, choices: tuple[str, ...]) -> str:
        """The choice whose tokens the model finds most likely after ``prompt + head``."""
        seqs = [prompt + self.tokenizer.encode(head + c, add_special_tokens=False) for c in choices]
        start = 0  # first position where the candidates' token sequences differ
        while all(start < len(s) for s in seqs) and len({s[start] for s in seqs}) == 1:
            start += 1
        if start == 0:
            raise ValueError("score candidates share no context")
        device = next(self.model.parameters()).device
        from ..models import model_precision

        if len({len(s) for s in seqs}) == 1:  # the usual case (one token per digit): no padding,
            # and only the last positions' logits are computed (the vocab projection dominates)
            keep = len(seqs[0]) - start + 1
            ids = torch.tensor(seqs, device=device)  # (C, T)
            with model_precision(self.model).autocast_context(device):
                logits = self.model(input_ids=ids, logits_to_keep=keep).logits  # (C, keep, V)
            offset = len(seqs[0]) - keep
        else:
            T = max(len(s) for s in seqs)
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(seqs), T), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), T), dtype=torch.long)
            for i, s in enumerate(seqs):  # right padding keeps every position id correct
                ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
            with model_precision(self.model).autocast_context(device):
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (C, T, V)
            offset = 0
        logp = torch.log_softmax(logits.float(), dim=-1)
        totals = []
        for i, s in enumerate(seqs):
            pos = torch.arange(start, len(s), device=device) - 1 - offset  # token t is predicted at t-1
            targets = torch.tensor(s[start:], device=device)
            totals.append(logp[i, pos, targets].sum().item())
        return choices[max(range(len(choices)), key=lambda i: totals[i])]


def _handler(chat: ChatModel):
    config = chat.config

    class Handler(BaseHTTPRequestHandler):
        server_version = "safeanchor-serve"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # route access logs to logging, not stderr
            log.debug("%s - %s", self.address_string(), fmt % args)

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "type": "invalid_request_error", "code": code}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": config.model_name, "object": "model",
                                                             "owned_by": "safeanchor"}]})
            elif self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._error(404, f"no route GET {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                self._error(404, f"no route POST {self.path}; use /v1/chat/completions")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= config.max_body_bytes:
                self._error(413 if length else 411, f"request body must be 1..{config.max_body_bytes} bytes")
                return
            try:
                body = json.loads(self.rfile.read(length))
                messages = _validate_messages(body.get("messages"))
                max_tokens = body.get("max_tokens")
                if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
                    raise ValueError("'max_tokens' must be a positive integer")
            except (ValueError, AttributeError) as e:
                self._error(400, str(e))
                return
            try:
                content = chat.complete(messages, max_tokens)
            except Exception as e:  # a model error is the server's fault, reported to the client
                log.exception("completion failed")
                self._error(500, f"{type(e).__name__}: {e}")
                return
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
                "model": config.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            })

    return Handler


def _validate_messages(messages) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError(f"'messages[{i}]' must have role system/user/assistant and string content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def make_server(model, tokenizer, config: ServeConfig | None = None) -> ThreadingHTTPServer:
    """A bound (not yet serving) server; ``server.server_address`` has the real port."""
    config = config or ServeConfig()
    server = ThreadingHTTPServer((config.host, config.port), _handler(ChatModel(model, tokenizer, config)))
    server.daemon_threads = True
    return server


@contextlib.contextmanager
def running_server(model, tokenizer, config: ServeConfig | None = None) -> Iterator[str]:
    """Serve in a background thread; yields the base URL (``http://host:port/v1``); stops on exit.

    >>> # with running_server(model, tok, ServeConfig(port=0)) as url: ...
    """
    server = make_server(model, tokenizer, config or ServeConfig(port=0))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
