"""A minimal OpenAI-compatible ``/v1/chat/completions`` server for a local causal LM.

Standard library only (``http.server.ThreadingHTTPServer``); answers come from the real model, chat
template applied: greedy through :func:`.generate.generate_ids` (``temperature`` absent or 0), else
sampled (``temperature``, ``top_p``, ``seed``). One request is decoded at a time (a lock), so memory
stays bounded whatever the client's concurrency. Binds to 127.0.0.1 by default. Use it to serve the
embedded model (``safeanchor serve --model M --port P``), or as the judge endpoint the llm judge's
tests talk to over loopback.

**Never accept-and-ignore.** Every request field is checked: a wrong type or range, a parameter this
server does not honour (``stream: true``, ``n`` != 1, ``stop``, penalties, tools ...) or an unknown
one is an HTTP 400 whose OpenAI-style body names the parameter. A request's ``max_tokens`` is capped
by the server's ``max_new_tokens`` and by the model's context; ``finish_reason`` says ``"length"``
whenever the reply was cut by a token limit, ``"stop"`` when the model ended it, and ``usage``
counts the prompt's and the reply's tokens (the forced prefix and the stop token included).

**Judge format** (``judge_format=True``): a small model cannot be trusted to emit the judge's
``#reason: ...`` / ``#score: N`` format, so the server forces the *format* while the model still
makes the *choices*: the reply is ``response_prefix`` (default ``"#reason: "``) + the model's own
greedy continuation (first line, at most ``reason_tokens`` tokens, ``#`` removed so it cannot
forge a score line) + ``"\\n#score: "`` + the score among ``1..5`` to which the model assigns the
highest log-likelihood in that context. Nothing is canned: a different model, prompt or answer
gives a different reason and score. (Greedy only: a sampling ``temperature`` is refused.)

>>> # with running_server(model, tok, ServeConfig(judge_format=True)) as url:
>>> #     LLMJudge(LLMJudgeConfig(url=url)).score([("q", "a")])
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import urlsplit

import torch

from .generate import generate_ids, stop_token_ids

log = logging.getLogger(__name__)

SCORE_CHOICES = ("1", "2", "3", "4", "5")
ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 2.0  # OpenAI's range


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
    request_timeout_s: float = field(default=60.0, metadata={"help": "seconds a client may stall mid-request or idle"})

    def __post_init__(self) -> None:
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"ServeConfig.port must be an integer in 0..65535; got {self.port!r}")
        for name in ("max_new_tokens", "reason_tokens", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServeConfig.{name} must be an integer >= 1; got {value!r}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"ServeConfig.request_timeout_s must be > 0; got {self.request_timeout_s!r}")
        if self.judge_format and self.response_prefix is None:
            self.response_prefix = "#reason: "


class RequestError(ValueError):
    """A request the server will not answer as asked: HTTP ``status`` with an OpenAI-style error body
    naming ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.status = param, status


@dataclass(frozen=True)
class ChatRequest:
    """A checked ``/v1/chat/completions`` request: only what the server honours."""

    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Reply:
    """One answer: ``finish_reason`` is ``"length"`` when a token limit cut it, ``"stop"`` when the model ended it
    (or the judge format completed it)."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _is_neutral(value: Any, neutral: Any) -> bool:
    if isinstance(neutral, bool):  # false, not 0
        return value is neutral
    if isinstance(neutral, int):  # 0 or 0.0, not false
        return _is_number(value) and value == neutral
    return value == neutral


# Parameters of the OpenAI API that this server does not implement, accepted only with the value that
# asks for nothing (``null`` is always fine): anything else is refused, never ignored.
_NEUTRAL: dict[str, tuple[Any, str]] = {
    "frequency_penalty": (0, "0"),
    "presence_penalty": (0, "0"),
    "logprobs": (False, "false"),
    "top_logprobs": (0, "0"),
    "logit_bias": ({}, "{}"),
    "stop": ([], "[]"),
    "response_format": ({"type": "text"}, '{"type": "text"}'),
    "tools": ([], "[]"),
    "tool_choice": ("none", '"none"'),
    "functions": ([], "[]"),
    "function_call": ("none", '"none"'),
    "store": (False, "false"),
}
_HONOURED = ("messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n",
             "stream", "stream_options", "user", "parallel_tool_calls")


def parse_request(body: Any) -> ChatRequest:
    """Check a decoded request body; a :class:`RequestError` names the first bad field.

    >>> parse_request({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}).max_tokens
    8
    >>> parse_request({"messages": [{"role": "user", "content": "Hi"}], "n": 2})
    Traceback (most recent call last):
    ...
    safeanchor.evaluate.serve.RequestError: 'n' must be 1 (this server returns one choice); got 2
    """
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object; got {type(body).__name__}")
    for key, value in body.items():
        if key in _NEUTRAL:
            neutral, shown = _NEUTRAL[key]
            if value is not None and not _is_neutral(value, neutral):
                raise RequestError(f"{key!r} is not supported by this server (only {shown} or null); got {value!r}", key)
        elif key not in _HONOURED:
            raise RequestError(f"unrecognized request argument {key!r} (this server honours "
                               f"{', '.join(_HONOURED)})", key)
    messages = _check_messages(body.get("messages"))
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise RequestError(f"'model' must be a string; got {body['model']!r}", "model")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestError(f"'user' must be a string; got {body['user']!r}", "user")
    if body.get("parallel_tool_calls") is not None and not isinstance(body["parallel_tool_calls"], bool):
        raise RequestError(f"'parallel_tool_calls' must be a boolean; got {body['parallel_tool_calls']!r}",
                           "parallel_tool_calls")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(f"'stream' must be a boolean; got {stream!r}", "stream")
    if stream:
        raise RequestError("'stream': true is not supported by this server; send stream false (or omit it) "
                           "for one JSON reply", "stream")
    if body.get("stream_options") is not None:
        raise RequestError("'stream_options' is only allowed with stream true, which this server does not support",
                           "stream_options")
    n = body.get("n")
    if n is not None and not (_is_int(n) and n == 1):
        raise RequestError(f"'n' must be 1 (this server returns one choice); got {n!r}", "n")
    limits = {}
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None:
            if not _is_int(v) or v < 1:
                raise RequestError(f"{key!r} must be a positive integer; got {v!r}", key)
            limits[key] = v
    if len(set(limits.values())) > 1:
        raise RequestError(f"'max_tokens' ({limits['max_tokens']}) and 'max_completion_tokens' "
                           f"({limits['max_completion_tokens']}) disagree; send one of them", "max_tokens")
    temperature = body.get("temperature")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        raise RequestError(f"'temperature' must be a number in [0, {MAX_TEMPERATURE:g}]; got {temperature!r}", "temperature")
    top_p = body.get("top_p")
    if top_p is not None and not (_is_number(top_p) and 0 <= top_p <= 1):
        raise RequestError(f"'top_p' must be a number in [0, 1]; got {top_p!r}", "top_p")
    seed = body.get("seed")
    if seed is not None and not (_is_int(seed) and -(2 ** 63) <= seed < 2 ** 64):
        raise RequestError(f"'seed' must be an integer in [-2**63, 2**64); got {seed!r}", "seed")
    return ChatRequest(messages=messages, max_tokens=next(iter(limits.values()), None),
                       temperature=float(temperature or 0.0), top_p=1.0 if top_p is None else float(top_p), seed=seed)


def _check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"'messages[{i}]' must be an object {{role, content}}; got {m!r}", f"messages[{i}]")
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise RequestError(f"'messages[{i}].{extra[0]}' is not supported by this server (a message has role and "
                               "content only)", f"messages[{i}].{extra[0]}")
        if m.get("role") not in ROLES:
            raise RequestError(f"'messages[{i}].role' must be one of {', '.join(ROLES)}; got {m.get('role')!r}",
                               f"messages[{i}].role")
        if not isinstance(m.get("content"), str):
            raise RequestError(f"'messages[{i}].content' must be a string; got {m.get('content')!r}",
                               f"messages[{i}].content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


class ChatModel:
    """Turns chat messages into a reply with a real model (thread-safe: one decode at a time)."""

    def __init__(self, model, tokenizer, config: ServeConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self._lock = threading.Lock()
        # positions the model was trained on: beyond them it would answer, silently worse
        self.context = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    def complete(self, messages: list[dict[str, str]], max_tokens: int | None = None) -> str:
        """The reply's text (greedy). See :meth:`reply`."""
        return self.reply(ChatRequest(messages=messages, max_tokens=max_tokens)).content

    def reply(self, request: ChatRequest) -> Reply:
        """Answer one checked request; a :class:`RequestError` when it cannot be answered as asked.

        >>> # ChatModel(model, tok, ServeConfig()).reply(ChatRequest([{"role": "user", "content": "Hi"}], 8))
        """
        cfg = self.config
        if cfg.judge_format and request.temperature > 0:
            raise RequestError("this server forces the judge format, which decodes greedily (the score is the most "
                               f"likely one); 'temperature' must be 0; got {request.temperature:g}", "temperature")
        limit = min(request.max_tokens or cfg.max_new_tokens, cfg.max_new_tokens)
        try:
            prompt = list(self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True,
                                                             tokenize=True, return_dict=False))
        except Exception as e:  # the template's own checks (e.g. roles must alternate) speak of the request
            import jinja2

            if isinstance(e, jinja2.TemplateError):
                raise RequestError(f"the model's chat template refused 'messages': {e}", "messages") from None
            raise
        prefix = cfg.response_prefix or ""
        prefix_ids = self.tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
        reserve = len(self.tokenizer.encode("\n#score: 5", add_special_tokens=False)) + 4 if cfg.judge_format else 0
        if self.context is not None:
            room = self.context - len(prompt) - len(prefix_ids) - reserve
            if room < 1:
                raise RequestError(f"'messages' take {len(prompt)} tokens (with the chat template); the model's context "
                                   f"is {self.context} tokens, which leaves no room for a reply", "messages")
            limit = min(limit, room)
        with self._lock:
            if not cfg.judge_format:
                new, stopped = self._continue(prompt + prefix_ids, limit, request)
                return Reply(content=prefix + self.tokenizer.decode(new, skip_special_tokens=True),
                             finish_reason="stop" if stopped else "length", prompt_tokens=len(prompt),
                             completion_tokens=len(prefix_ids) + len(new) + int(stopped))
            new, _ = self._continue(prompt + prefix_ids, min(limit, cfg.reason_tokens), request)
            reason = self.tokenizer.decode(new, skip_special_tokens=True)
            reason = " ".join(reason.replace("#", " ").split("\n", 1)[0].split())
            head = f"{prefix}{reason}\n#score: "
            content = head + self._choose(prompt, head, SCORE_CHOICES)
        # the format is complete whatever cut the reason: the judge's reply ends as it should
        return Reply(content=content, finish_reason="stop", prompt_tokens=len(prompt),
                     completion_tokens=len(self.tokenizer.encode(content, add_special_tokens=False)))

    def _continue(self, ids: list[int], max_new_tokens: int, request: ChatRequest) -> tuple[list[int], bool]:
        """New tokens after ``ids`` (stop token excluded) and whether a stop token ended them."""
        if request.temperature > 0:
            return self._sample(ids, max_new_tokens, request)
        new = generate_ids(self.model, self.tokenizer, [ids], max_new_tokens=max_new_tokens, batch_size=1,
                           progress=False)[0]
        # generate_ids cuts at the first stop token: fewer tokens than allowed means the model stopped
        return new, len(new) < max_new_tokens

    @torch.no_grad()
    def _sample(self, ids: list[int], max_new_tokens: int, request: ChatRequest) -> tuple[list[int], bool]:
        """Sampling at ``temperature`` from the ``top_p`` nucleus, with a private generator (``seed``: the same
        reply every time; the process's global RNG is never touched)."""
        from ..models import model_precision

        device = next(self.model.parameters()).device
        stops = set(stop_token_ids(self.model, self.tokenizer))
        gen = torch.Generator(device=device)
        seed = request.seed if request.seed is not None else int.from_bytes(os.urandom(8), "little")
        gen.manual_seed(seed % 2 ** 64)
        x = torch.tensor([ids], device=device)  # (1, T)
        past, out = None, []
        was_training = self.model.training
        self.model.eval()
        try:
            with model_precision(self.model).autocast_context(device):
                for _ in range(max_new_tokens):
                    o = self.model(input_ids=x, past_key_values=past, use_cache=True, logits_to_keep=1)
                    past = o.past_key_values
                    probs = torch.softmax(o.logits[0, -1].float() / request.temperature, dim=-1)  # (V,)
                    if request.top_p < 1:
                        p, order = probs.sort(descending=True)  # (V,), (V,)
                        keep = (p.cumsum(0) - p) < request.top_p  # the smallest set whose mass reaches top_p
                        keep[0] = True
                        t = int(order[torch.multinomial(p * keep, 1, generator=gen)])
                    else:
                        t = int(torch.multinomial(probs, 1, generator=gen))
                    if t in stops:
                        return out, True
                    out.append(t)
                    x = torch.tensor([[t]], device=device)  # (1, 1)
        finally:
            self.model.train(was_training)
        return out, False

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


# path -> the one method it answers
_ROUTES = {"/v1/models": "GET", "/models": "GET", "/health": "GET",
           "/v1/chat/completions": "POST", "/chat/completions": "POST"}


def _handler(chat: ChatModel):
    config = chat.config

    class Handler(BaseHTTPRequestHandler):
        server_version = "safeanchor-serve"
        protocol_version = "HTTP/1.1"
        timeout = config.request_timeout_s  # a client that stalls mid-request (or idles) is dropped, not waited on

        def log_message(self, fmt, *args):  # route access logs to logging, not stderr
            log.debug("%s - %s", self.address_string(), fmt % args)

        def _send(self, code: int, obj: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode("utf-8")
            if not self._body_read and (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                                        or self.headers.get("Transfer-Encoding")):
                self.close_connection = True  # an unread body would be parsed as the next request
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except OSError as e:  # the client left before its answer: nothing to tell it
                log.debug("could not send the reply to %s: %s", self.address_string(), e)
                self.close_connection = True

        def _error(self, code: int, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
            kind = "server_error" if code >= 500 else "invalid_request_error"
            self._send(code, {"error": {"message": message, "type": kind, "param": param, "code": None}}, headers)

        def _route(self, method: str) -> bool:
            """True when ``method`` on this path is served here; else the 404 or 405 was sent."""
            self._body_read = False
            path = urlsplit(self.path).path.rstrip("/")
            if path not in _ROUTES:
                self._error(404, f"no route {method} {self.path}; this server answers POST /v1/chat/completions, "
                                 "GET /v1/models and GET /health")
                return False
            if _ROUTES[path] != method:
                self._error(405, f"{method} is not allowed on {path}; use {_ROUTES[path]}",
                            headers={"Allow": _ROUTES[path]})
                return False
            return True

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding"):
                raise RequestError("chunked request bodies are not supported; send a Content-Length", status=411)
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise RequestError("a Content-Length header is required", status=411)
            if not (raw.strip().isascii() and raw.strip().isdigit()):
                raise RequestError(f"the Content-Length header must be a non-negative integer; got {raw!r}")
            length = int(raw)
            if length == 0:
                raise RequestError("the request body is empty; send a JSON object with 'messages'")
            if length > config.max_body_bytes:
                raise RequestError(f"the request body is {length} bytes; this server accepts at most "
                                   f"{config.max_body_bytes}", status=413)
            try:
                data = self.rfile.read(length)
            except TimeoutError:
                self.close_connection = True
                raise RequestError(f"the request body did not arrive within {config.request_timeout_s:g} s",
                                   status=408) from None
            self._body_read = len(data) == length
            if len(data) < length:
                self.close_connection = True
                raise RequestError(f"the request body ended after {len(data)} of the {length} bytes its "
                                   "Content-Length announced")
            return data

        def do_GET(self):
            if not self._route("GET"):
                return
            if urlsplit(self.path).path.rstrip("/") == "/health":
                self._send(200, {"status": "ok"})
            else:
                self._send(200, {"object": "list", "data": [{"id": config.model_name, "object": "model",
                                                             "owned_by": "safeanchor"}]})

        def do_POST(self):
            if not self._route("POST"):
                return
            try:
                data = self._read_body()
                try:
                    body = json.loads(data)
                except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
                    raise RequestError(f"the request body is not valid JSON: {e}") from None
                reply = chat.reply(parse_request(body))
            except RequestError as e:
                self._error(e.status, str(e), e.param)
                return
            except Exception as e:  # a model error is the server's fault, reported to the client
                log.exception("completion failed")
                self._error(500, f"{type(e).__name__}: {e}")
                return
            self._send(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
                "model": config.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                             "logprobs": None, "finish_reason": reply.finish_reason}],
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                          "total_tokens": reply.prompt_tokens + reply.completion_tokens},
            })

        def _refuse(self):
            self._route(self.command)  # a known path answers 405, an unknown one 404

        do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _refuse

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def bind_server(config: ServeConfig) -> ThreadingHTTPServer:
    """A listening socket on ``config.host:config.port``, no model yet: a port in use or an unknown host fails
    here, in a moment, before a long model load; attach the model with :func:`make_server` (``server=``).
    Connections made meanwhile wait in the listen queue.

    >>> # server = bind_server(ServeConfig(port=0)); ...load...; make_server(model, tok, cfg, server=server)
    """
    cls = _Server6 if ":" in config.host else _Server
    try:
        return cls((config.host, config.port), BaseHTTPRequestHandler)
    except OSError as e:
        reason = e.strerror or str(e)
        raise OSError(f"cannot listen on {config.host}:{config.port}: {reason}") from e


def make_server(model, tokenizer, config: ServeConfig | None = None, *,
                server: ThreadingHTTPServer | None = None) -> ThreadingHTTPServer:
    """A bound (not yet serving) server; ``server.server_address`` has the real port. ``server``: one from
    :func:`bind_server` (same ``config``) to answer with this model."""
    config = config or ServeConfig()
    server = server or bind_server(config)
    server.RequestHandlerClass = _handler(ChatModel(model, tokenizer, config))
    return server


def server_url(server: ThreadingHTTPServer) -> str:
    """The base URL clients use: ``http://host:port/v1`` (IPv6 hosts in brackets)."""
    host, port = server.server_address[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


@contextlib.contextmanager
def running_server(model, tokenizer, config: ServeConfig | None = None) -> Iterator[str]:
    """Serve in a background thread; yields the base URL (``http://host:port/v1``); stops on exit.

    >>> # with running_server(model, tok, ServeConfig(port=0)) as url: ...
    """
    server = make_server(model, tokenizer, config or ServeConfig(port=0))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server_url(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
