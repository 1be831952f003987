"""``fastlm serve``: an OpenAI-compatible HTTP server with continuous batching (``pip install 'fastlm[server]'``).

One engine thread owns the model and a :class:`~fastlm.generation.ContinuousBatch` of ``parallel`` rows.
Requests wait in a bounded queue; between two decode steps the engine prefills waiting requests into free
rows (reusing the KV of the longest prefix an earlier request shared: a bounded LRU prompt cache), so a new
request joins the running batch at once; each row keeps its own sampler, seed, stop strings
and grammar, and a finished or cancelled row (a client that went away) leaves at the next step. A seeded
request gives the same tokens alone or beside others.

Endpoints: ``GET /`` (a web chat page), ``POST /v1/chat/completions``, ``POST /v1/completions`` (``stream: true`` as server-sent events
ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus). Bad
requests get a 400 with an OpenAI error object, a full queue a 503 with ``Retry-After``, a missing or wrong
key (``--api-key``) a 401; nothing answers with a stack trace.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .api import LanguageModel, TextRequest
from .errors import FastLMError
from .runtime import apply_to_this_thread

MAX_BODY_BYTES = 1 << 20
# The web chat at /: one static page, no external resources (it streams from /v1/chat/completions).
CHAT_PAGE = (Path(__file__).parent / "chat.html").read_text(encoding="utf-8")
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.param, self.status, self.kind, self.code, self.headers = param, status, kind, code, headers


def error_response(e: BadRequest) -> JSONResponse:
    return JSONResponse({"error": {"message": str(e), "type": e.kind, "param": e.param, "code": e.code}},
                        status_code=e.status, headers=e.headers)


# ---------------------------------------------------------------------------------------------- the engine

@dataclass
class Job:
    """A request on its way through the engine: pieces come back on ``out`` (an asyncio queue, fed from
    the engine thread through the event loop); ``None`` ends them."""
    text: TextRequest
    out: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    cached: int = 0
    created: float = field(default_factory=time.time)


class Engine:
    """The thread that owns the model: admits queued jobs into free rows, steps the batch, hands out pieces."""

    def __init__(self, lm: LanguageModel, parallel: int, ctx: int | None, queue_size: int, registry,
                 cache_bytes: int = 0):
        self.lm, self.queue_size = lm, queue_size
        self.batch = lm.continuous_batch(parallel, ctx, cache_bytes)
        self.waiting: queue.Queue[Job] = queue.Queue()
        self.jobs: dict[int, Job] = {}          # id(request) -> job, for the rows in the batch
        self._stop = threading.Event()
        self.requests = Counter("fastlm_requests", "Requests accepted", registry=registry)
        self.prompt_tokens = Counter("fastlm_prompt_tokens", "Prompt tokens processed", registry=registry)
        self.generated = Counter("fastlm_generated_tokens", "Tokens generated", registry=registry)
        self.queue_depth = Gauge("fastlm_queue_depth", "Requests waiting for a row", registry=registry)
        self.running = Gauge("fastlm_running_rows", "Rows in the decode batch", registry=registry)
        self.rate = Gauge("fastlm_tokens_per_second", "Generated tokens per second, last step", registry=registry)
        self.thread = threading.Thread(target=self._run, name="fastlm-engine", daemon=True)
        self.thread.start()

    @property
    def max_len(self) -> int:
        return self.batch.cache.max_len

    def submit(self, job: Job) -> None:
        if self.waiting.qsize() + len(self.batch.rows) >= self.queue_size + self.batch.slots:
            raise BadRequest("the server is busy; retry shortly", status=503, kind="server_error",
                             code="overloaded", headers={"Retry-After": "1"})
        self.requests.inc()
        self.waiting.put(job)
        self.queue_depth.set(self.waiting.qsize())

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)

    def _send(self, job: Job, item) -> None:
        job.loop.call_soon_threadsafe(job.out.put_nowait, item)

    def _admit(self, job: Job) -> None:
        if job.text.request.cancelled:
            self._send(job, None)
            return
        try:
            self.batch.add(job.text.request)
        except (FastLMError, ValueError) as e:
            self._send(job, BadRequest(str(e)))
            return
        self.prompt_tokens.inc(len(job.text.request.prompt))
        self.jobs[id(job.text.request)] = job

    def _run(self) -> None:
        apply_to_this_thread()                  # OpenMP counts threads per calling thread: give this one its count
        while not self._stop.is_set():
            if not self.batch.rows:
                try:                            # idle: wait for work without spinning
                    self._admit(self.waiting.get(timeout=0.1))
                except queue.Empty:
                    continue
            while self.batch.free and not self.waiting.empty():
                self._admit(self.waiting.get())
            self.queue_depth.set(self.waiting.qsize())
            self.running.set(len(self.batch.rows))
            if not self.batch.rows:
                continue
            start = time.perf_counter()
            try:
                events = self.batch.step()
            except Exception as e:              # a row's grammar or sampler failed: fail the rows running
                for job in self.jobs.values():
                    self._send(job, BadRequest(f"generation failed: {e}", status=500, kind="server_error"))
                self.jobs.clear()
                self.batch.rows.clear()
                continue
            self.rate.set(len(events) / max(time.perf_counter() - start, 1e-9))
            for request, event in events:
                job = self.jobs[id(request)]
                self.generated.inc()
                self._send(job, job.text.piece(event))
                if event.finish_reason:
                    del self.jobs[id(request)]
                    self._send(job, job.text.last_piece())
                    self._send(job, None)
            for key in [k for k, job in self.jobs.items() if job.text.request.finish_reason == "cancelled"]:
                self._send(self.jobs.pop(key), None)         # a client that went away: its row is gone
            self.running.set(len(self.batch.rows))


# ------------------------------------------------------------------------------------------ request bodies

def _get(body: dict, name: str, kinds, default=None, check=None, message: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise BadRequest(f"'{name}' must be {message or kinds}", name)
    if not isinstance(value, kinds):
        raise BadRequest(f"'{name}' must be {message or kinds}, got {type(value).__name__}", name)
    if check is not None and not check(value):
        raise BadRequest(f"'{name}' {message}, got {value!r}", name)
    return value


def sampling_options(body: dict, max_tokens_limit: int) -> tuple[int, dict]:
    """max_tokens (None: as many as the context leaves, up to 256) and the generate() options of an OpenAI
    request body; wrong values raise BadRequest."""
    number = (int, float)
    _get(body, "n", int, 1, lambda v: v == 1, "must be 1 (one choice per request)")
    max_tokens = _get(body, "max_completion_tokens", int, None, lambda v: 1 <= v <= max_tokens_limit,
                      f"must be between 1 and {max_tokens_limit}")
    max_tokens = max_tokens or _get(body, "max_tokens", int, None, lambda v: 1 <= v <= max_tokens_limit,
                                    f"must be between 1 and {max_tokens_limit}")
    finite = lambda v: math.isfinite(v)  # noqa: E731
    options = {
        "temperature": _get(body, "temperature", number, 1.0, lambda v: 0 <= v <= 2, "must be in [0, 2]"),
        "top_p": _get(body, "top_p", number, 1.0, lambda v: 0 < v <= 1, "must be in (0, 1]"),
        "top_k": _get(body, "top_k", int, 0, lambda v: v >= 0, "must be >= 0"),
        "min_p": _get(body, "min_p", number, 0.0, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        "presence_penalty": _get(body, "presence_penalty", number, 0.0, lambda v: -2 <= v <= 2, "must be in [-2, 2]"),
        "frequency_penalty": _get(body, "frequency_penalty", number, 0.0, lambda v: -2 <= v <= 2,
                                  "must be in [-2, 2]"),
        "seed": _get(body, "seed", int, None, lambda v: v >= 0, "must be >= 0"),
    }
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not (isinstance(stop, list) and len(stop) <= 16 and all(isinstance(s, str) and s for s in stop)):
            raise BadRequest("'stop' must be a non-empty string or a list of up to 16 of them", "stop")
        options["stop"] = stop
    bias = _get(body, "logit_bias", dict, None)
    if bias is not None:
        try:
            options["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError):
            raise BadRequest("'logit_bias' maps token ids to numbers", "logit_bias") from None
        if not all(finite(v) or v == -math.inf for v in options["logit_bias"].values()):
            raise BadRequest("'logit_bias' values must be finite", "logit_bias")
    logprobs = body.get("logprobs")
    top = _get(body, "top_logprobs", int, 0, lambda v: 0 <= v <= 20, "must be in [0, 20]")
    if isinstance(logprobs, bool):
        options["logprobs"] = logprobs or top > 0
    elif isinstance(logprobs, int):           # /v1/completions: logprobs is the number of alternatives
        top = logprobs
        options["logprobs"] = True
    elif logprobs is not None:
        raise BadRequest("'logprobs' must be a boolean (or an integer for completions)", "logprobs")
    if top:
        options["top_logprobs"] = top
    fmt = _get(body, "response_format", dict, None)
    if fmt is not None:
        kind = fmt.get("type")
        if kind == "json_object":
            options["json_schema"] = {"type": "object"}
        elif kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            if not isinstance(schema, dict):
                raise BadRequest("'response_format.json_schema.schema' must be an object", "response_format")
            options["json_schema"] = schema
        elif kind != "text":
            raise BadRequest(f"'response_format.type' must be text, json_object or json_schema, got {kind!r}",
                             "response_format")
    return max_tokens, options


def _finite(logprob: float) -> float:
    """JSON has no -inf: a token the grammar forbids gets OpenAI's floor."""
    return max(logprob, -9999.0)


def _logprobs_json(pieces_logprobs: list, chat: bool) -> dict | None:
    if not pieces_logprobs:
        return None
    if chat:
        return {"content": [{"token": t.text, "logprob": _finite(t.logprob), "bytes": list(t.text.encode()),
                             "top_logprobs": [{"token": s, "logprob": _finite(lp), "bytes": list(s.encode())}
                                              for _, s, lp in t.top]} for t in pieces_logprobs]}
    return {"tokens": [t.text for t in pieces_logprobs],
            "token_logprobs": [_finite(t.logprob) for t in pieces_logprobs],
            "top_logprobs": [{s: _finite(lp) for _, s, lp in t.top} for t in pieces_logprobs]}


# ------------------------------------------------------------------------------------------------- the app

def create_app(lm: LanguageModel, *, model_name: str = "fastlm", parallel: int = 4, ctx: int | None = 2048,
               queue_size: int = 64, api_key: str | None = None, max_tokens_limit: int = 4096,
               cache_bytes: int = 256 << 20) -> Starlette:
    """The Starlette app serving ``lm``; its engine thread starts now and stops at shutdown.
    ``cache_bytes`` bounds the prompt cache (KV of earlier requests, least recently used out first)."""
    registry = CollectorRegistry()
    ctx = min(ctx or lm.model.max_seq_len, lm.model.max_seq_len)
    engine = Engine(lm, parallel, ctx, queue_size, registry, cache_bytes)

    def authorized(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise BadRequest("invalid or missing API key", status=401, kind="authentication_error",
                             code="invalid_api_key")

    async def read_body(request: Request) -> dict:
        authorized(request)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(f"request body over {MAX_BODY_BYTES} bytes", status=413)
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise BadRequest(f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        name = body.get("model")
        if name is not None and name != model_name:
            raise BadRequest(f"model {name!r} does not exist; this server has {model_name!r}", "model",
                             code="model_not_found")
        return body

    async def completion(request: Request, chat: bool):
        try:
            body = await read_body(request)
            max_tokens, options = sampling_options(body, max_tokens_limit)
            if chat:
                messages = body.get("messages")
                if not (isinstance(messages, list) and messages and all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in messages)):
                    raise BadRequest("'messages' must be a non-empty list of {role, content} strings", "messages")
                try:
                    prompt_ids = lm.chat_prompt(messages)
                except (FastLMError, ValueError, TypeError) as e:     # the template refused these messages
                    raise BadRequest(f"cannot render the messages with the chat template: {e}", "messages") from None
            else:
                prompt = body.get("prompt")
                if not isinstance(prompt, str) or not prompt:
                    raise BadRequest("'prompt' must be a non-empty string", "prompt")
                prompt_ids = lm.encode(prompt)
            if max_tokens is None:
                max_tokens = max(1, min(256, max_tokens_limit, engine.max_len - len(prompt_ids)))
            if len(prompt_ids) + max_tokens > engine.max_len:
                raise BadRequest(f"the prompt ({len(prompt_ids)} tokens) and max_tokens {max_tokens} exceed the "
                                 f"context of {engine.max_len}", "max_tokens", code="context_length_exceeded")
            try:
                text = lm.text_request(prompt_ids, max_tokens, **options)
            except (FastLMError, ValueError, TypeError) as e:
                raise BadRequest(str(e)) from None
            stream = _get(body, "stream", bool, False, message="a boolean")
            include_usage = bool((_get(body, "stream_options", dict, {}) or {}).get("include_usage"))
            job = Job(text, asyncio.Queue(), asyncio.get_running_loop())
            engine.submit(job)
        except BadRequest as e:
            return error_response(e)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if stream:
            return StreamingResponse(_events(job, rid, chat, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _whole(job, rid, chat)

    def _usage(result) -> dict:
        u = result.usage
        return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": result.cached_tokens}}

    async def _pieces(job: Job):
        try:
            while True:
                item = await job.out.get()
                if item is None:
                    return
                if isinstance(item, BadRequest):
                    raise item
                yield item
        finally:                                 # the client went away, or we are done: free the row
            job.text.cancel()

    async def _whole(job: Job, rid: str, chat: bool):
        pieces = []
        try:
            async for piece in _pieces(job):
                pieces.append(piece)
        except BadRequest as e:
            return error_response(e)
        last = pieces[-1]
        text = "".join(p.text for p in pieces)
        logprobs = _logprobs_json([lp for p in pieces for lp in (p.logprobs or [])], chat)
        result = job.text.result()
        choice = {"index": 0, "finish_reason": FINISH[last.finish_reason], "logprobs": logprobs}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                             "created": int(job.created), "model": model_name, "choices": [choice],
                             "usage": _usage(result)})

    async def _events(job: Job, rid: str, chat: bool, include_usage: bool):
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: dict | str, finish=None, logprobs=None, usage=None, choices=True) -> str:
            body = {"id": rid, "object": kind, "created": int(job.created), "model": model_name}
            if choices:
                choice = {"index": 0, "finish_reason": finish, "logprobs": logprobs}
                choice.update({"delta": delta} if chat else {"text": delta})
                body["choices"] = [choice]
            else:
                body["choices"] = []
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body)}\n\n"

        if chat:
            yield chunk({"role": "assistant", "content": ""})
        try:
            async for piece in _pieces(job):
                lp = _logprobs_json(piece.logprobs or [], chat)
                if piece.usage is not None:      # the last piece: what it released, and why the row ended
                    if piece.text:
                        yield chunk({"content": piece.text} if chat else piece.text, logprobs=lp)
                    yield chunk({} if chat else "", finish=FINISH[piece.finish_reason])
                    if include_usage:
                        yield chunk(None, usage=_usage(job.text.result()), choices=False)
                elif piece.text or lp:
                    yield chunk({"content": piece.text} if chat else piece.text, logprobs=lp)
        except BadRequest as e:
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': e.kind, 'param': e.param, 'code': e.code}})}\n\n"
        yield "data: [DONE]\n\n"

    async def chat_completions(request: Request):
        return await completion(request, chat=True)

    async def completions(request: Request):
        return await completion(request, chat=False)

    async def models(request: Request):
        try:
            authorized(request)
        except BadRequest as e:
            return error_response(e)
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                                         "owned_by": "fastlm"}]})

    async def page(request: Request):
        return HTMLResponse(CHAT_PAGE)

    async def health(request: Request):
        return JSONResponse({"status": "ok", "running_rows": len(engine.batch.rows),
                             "queue_depth": engine.waiting.qsize()})

    async def metrics(request: Request):
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = Starlette(routes=[
        Route("/", page, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.engine = engine
    return app


def serve(lm: LanguageModel, host: str = "127.0.0.1", port: int = 8080, **options: Any) -> None:
    """Run the server until interrupted (uvicorn)."""
    import uvicorn
    uvicorn.run(create_app(lm, **options), host=host, port=port, log_level="warning")
