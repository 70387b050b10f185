"""OpenAIPolicy against small misbehaving HTTP servers on 127.0.0.1: retries, Retry-After, 4xx, concurrency, pooling.

Each server is a real socket (http.server, HTTP/1.1 keep-alive) that answers from a script and records
when each request arrived, from which client port, and how many were in flight at once, so the test
measures retry counts and delays instead of trusting the client's own bookkeeping.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("httpx")

from agentrl.policies import PolicyError, SamplingParams  # noqa: E402
from agentrl.policies.openai import OpenAIPolicy  # noqa: E402

OK_CHOICE = {"index": 0, "text": "ok", "finish_reason": "stop", "token_ids": [1, 2],
             "logprobs": {"tokens": ["token_id:1", "token_id:2"], "token_logprobs": [-0.5, -0.25]}}  # fmt: skip


class Scripted:
    """Serve ``script[i]`` = (status, headers, body) for the i-th POST (the last entry repeats)."""

    def __init__(self, script, delay: float = 0.0):
        self.script, self.delay = list(script), delay
        self.hits: list[float] = []
        self.ports: set[int] = set()
        self.in_flight = self.max_in_flight = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                return

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    outer.hits.append(time.perf_counter())
                    outer.ports.add(self.client_address[1])
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    status, headers, body = outer.script[min(len(outer.hits) - 1, len(outer.script) - 1)]
                time.sleep(outer.delay)
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with lock:
                    outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.hits, self.hits[1:], strict=False)]


def ok_reply():
    return (200, {}, {"choices": [OK_CHOICE]})


def error(status: int, message: str, code: str | None = None, headers=None):
    return (status, headers or {}, {"error": {"message": message, "type": "x", "code": code}})


def policy(url: str, **kwargs) -> OpenAIPolicy:
    return OpenAIPolicy(url, model="m", **kwargs)


def test_429_waits_exactly_what_retry_after_says():
    with Scripted([error(429, "slow down", headers={"Retry-After": "0.4"}), ok_reply()]) as srv:
        client = policy(srv.url, backoff=5.0)  # backoff would wait 2.5-5 s: Retry-After must win
        (completion,) = client.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2))
    assert completion.token_ids == [1, 2] and len(srv.hits) == 2 and client.stats["retries"] == 1
    assert 0.4 <= srv.gaps()[0] < 0.4 + 0.3


def test_503_retry_after_ms_and_http_date():
    with Scripted([error(503, "busy", headers={"retry-after-ms": "250"}), ok_reply()]) as srv:
        policy(srv.url, backoff=5.0).generate([[1]], SamplingParams())
    assert 0.25 <= srv.gaps()[0] < 0.25 + 0.3
    from email.utils import formatdate

    with Scripted([error(503, "busy", headers={"Retry-After": formatdate(time.time() + 1.5, usegmt=True)}), ok_reply()]) as srv:
        policy(srv.url, backoff=5.0).generate([[1]], SamplingParams())
    assert 0.4 <= srv.gaps()[0] < 1.5 + 0.3  # an HTTP date has one-second resolution


def test_5xx_without_retry_after_backs_off_exponentially_with_jitter_then_gives_up():
    with Scripted([error(503, "overloaded")]) as srv:
        client = policy(srv.url, max_retries=3, backoff=0.1)
        with pytest.raises(PolicyError, match=r"HTTP 503: overloaded \(gave up after 4 attempts\)"):
            client.generate([[1]], SamplingParams())
    assert len(srv.hits) == 4
    for attempt, gap in enumerate(srv.gaps()):  # jitter: a uniform draw in [50%, 100%] of backoff * 2**attempt
        assert 0.5 * 0.1 * 2**attempt <= gap < 0.1 * 2**attempt + 0.1


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422])
def test_4xx_is_never_retried(status):
    with Scripted([error(status, "no such thing", code="invalid_value"), ok_reply()]) as srv:
        client = policy(srv.url, max_retries=5, backoff=0.01)
        with pytest.raises(PolicyError, match=f"HTTP {status}: no such thing"):
            client.generate([[1]], SamplingParams())
    assert len(srv.hits) == 1 and client.stats["retries"] == 0


def test_vllm_context_overflow_message_is_recognised():
    """vLLM answers 400 with its message and no OpenAI code: still this prompt's truncation, not an error."""
    message = "This model's maximum context length is 32 tokens. However, you requested 40 tokens."
    with Scripted([error(400, message)]) as srv:
        (completion,) = policy(srv.url, max_retries=3).generate([[1] * 30], SamplingParams(max_new_tokens=10))
    assert len(srv.hits) == 1 and completion.meta == {"context_overflow": True, "error": message}
    assert completion.finish_reason == "length" and completion.token_ids == []


def test_prompts_of_one_call_go_out_at_once_over_pooled_connections():
    with Scripted([ok_reply()], delay=0.3) as srv:
        client = policy(srv.url)
        start = time.perf_counter()
        completions = client.generate([[i] for i in range(6)], SamplingParams())
        elapsed = time.perf_counter() - start
        client.generate([[i] for i in range(6)], SamplingParams())
        client.close()
    assert len(completions) == 6 and srv.max_in_flight == 6
    assert elapsed < 6 * 0.3 / 2  # six 0.3 s requests in parallel, not one after another
    assert len(srv.ports) <= 6  # 12 requests, connections kept alive and reused


def test_seed_of_prompt_i_is_seed_plus_i():
    bodies = []
    with Scripted([ok_reply()]) as srv:
        original = srv.httpd.RequestHandlerClass.do_POST

        def do_post(handler):
            length = int(handler.headers.get("Content-Length") or 0)
            body = handler.rfile.read(length)
            bodies.append(json.loads(body))
            handler.headers.replace_header("Content-Length", "0")
            original(handler)

        srv.httpd.RequestHandlerClass.do_POST = do_post
        policy(srv.url).generate([[1], [2], [3]], SamplingParams(seed=40))
    assert sorted((b["prompt"], b["seed"]) for b in bodies) == [([1], 40), ([2], 41), ([3], 42)]
