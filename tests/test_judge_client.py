"""Tests of the judge client against a real HTTP server on 127.0.0.1 that can misbehave on request."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rspo_bench.evals.judges import (
    MAX_RETRY_AFTER_S,
    ChatJudgeClient,
    JudgeBatchError,
    JudgeHTTPError,
    JudgeRequest,
    JudgeResponseFormatError,
    JudgeRetriesExhaustedError,
    JudgmentCache,
    ModelPrice,
    _retry_after_seconds,
    request_cache_key,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "RSPO_TEST_JUDGE_API_KEY"
MODEL = "judge-model"

Responder = Callable[[dict[str, Any], str], dict[str, Any]]


def default_responder(payload: dict[str, Any], authorization: str) -> dict[str, Any]:
    """Reply with a text derived from the last user message, fixed usage and optional log-probabilities."""
    user = payload["messages"][-1]["content"]
    reply: dict[str, Any] = {"content": f"judgment of {user}", "usage": (100, 10)}
    if payload.get("logprobs"):
        reply["top_logprobs"] = [("m", -0.5), ("M", -1.0), ("The", -5.0)]
    return reply


class FakeJudgeServer:
    """OpenAI-compatible ``/v1/chat/completions`` endpoint whose failures follow a script.

    ``script[user_message]`` lists behaviours for the successive requests with that last
    user message: "ok", "timeout" (reply after ``slow_reply_s``), "429" (with
    ``Retry-After: retry_after``), "500", "503", "malformed_json", "no_choices", "400"
    and "401" (whose body echoes the Authorization header). When the list is used up,
    ``default_behaviour`` applies. Every request is logged with its arrival time.
    """

    def __init__(self, responder: Responder = default_responder):
        self.responder = responder
        self.script: dict[str, list[str]] = {}
        self.default_behaviour = "ok"
        self.retry_after = "1"
        self.slow_reply_s = 0.6
        self.reply_delay_s = 0.0
        self.log: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests_for(self, user: str) -> list[dict[str, Any]]:
        with self._lock:
            return [entry for entry in self.log if entry["user"] == user]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", 0))
        payload = json.loads(handler.rfile.read(length))
        user = payload["messages"][-1]["content"]
        authorization = handler.headers.get("Authorization", "")
        with self._lock:
            behaviours = self.script.get(user)
            behaviour = behaviours.pop(0) if behaviours else self.default_behaviour
            self.log.append(
                {
                    "time": time.monotonic(),
                    "user": user,
                    "behaviour": behaviour,
                    "authorization": authorization,
                    "path": handler.path,
                    "payload": payload,
                }
            )
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._respond(handler, behaviour, payload, authorization)
        except (BrokenPipeError, ConnectionResetError):
            pass  # The client timed out and closed the connection.
        finally:
            with self._lock:
                self.in_flight -= 1

    def _respond(
        self, handler: BaseHTTPRequestHandler, behaviour: str, payload: dict, authorization: str
    ) -> None:
        if self.reply_delay_s:
            time.sleep(self.reply_delay_s)
        if behaviour == "timeout":
            time.sleep(self.slow_reply_s)
            behaviour = "ok"
        if behaviour == "ok":
            self._send(handler, 200, json.dumps(self._completion(payload, authorization)).encode())
        elif behaviour == "429":
            body = b'{"error": {"message": "rate limit reached"}}'
            self._send(handler, 429, body, {"Retry-After": self.retry_after})
        elif behaviour in ("500", "503", "400"):
            self._send(handler, int(behaviour), b'{"error": {"message": "scripted failure"}}')
        elif behaviour == "401":
            body = {"error": {"message": f"invalid API key in header {authorization!r}"}}
            self._send(handler, 401, json.dumps(body).encode())
        elif behaviour == "malformed_json":
            self._send(handler, 200, b'{"choices": [ this is not json')
        elif behaviour == "no_choices":
            self._send(handler, 200, b'{"id": "x", "object": "chat.completion"}')
        else:
            raise AssertionError(f"unknown scripted behaviour {behaviour!r}")

    def _completion(self, payload: dict[str, Any], authorization: str) -> dict[str, Any]:
        reply = self.responder(payload, authorization)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": reply["content"]},
            "finish_reason": "stop",
            "logprobs": None,
        }
        alternatives = reply.get("top_logprobs")
        if alternatives is not None:
            first = alternatives[0] if alternatives else ("?", -1.0)
            choice["logprobs"] = {
                "content": [
                    {
                        "token": first[0],
                        "logprob": first[1],
                        "bytes": list(first[0].encode()),
                        "top_logprobs": [{"token": token, "logprob": value} for token, value in alternatives],
                    }
                ]
            }
        prompt_tokens, completion_tokens = reply.get("usage", (100, 10))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
            "object": "chat.completion",
            "model": payload["model"],
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture
def server():
    fake = FakeJudgeServer().start()
    yield fake
    fake.stop()


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = f"sk-planted-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, key)
    return key


@pytest.fixture
def make_client(tmp_path: Path, api_key: str):
    clients = []

    def make(server: FakeJudgeServer, model: str = MODEL, **settings: Any) -> ChatJudgeClient:
        options = {
            "api_key_env": KEY_ENV,
            "timeout_s": 2.0,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "cache_path": tmp_path / "judgments.sqlite",
        }
        options.update(settings)
        client = ChatJudgeClient(server.url, model, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured_logs():
    """Collect every rspo_bench log line, with tracebacks, whatever handlers the CLI set up."""
    logger = logging.getLogger("rspo_bench")
    handler = ListHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(previous_level)


def user_request(text: str, **settings: Any) -> JudgeRequest:
    messages = [{"role": "system", "content": "Judge fairly."}, {"role": "user", "content": text}]
    return JudgeRequest(messages, **settings)


# Requests and keys


def test_request_payload_and_cache_key():
    plain = user_request("a", temperature=0.0, max_tokens=8)
    with_logprobs = user_request("a", temperature=0.0, max_tokens=8, top_logprobs=5)

    payload = plain.payload(MODEL)
    assert payload == {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Judge fairly."}, {"role": "user", "content": "a"}],
        "temperature": 0.0,
        "max_tokens": 8,
    }
    assert with_logprobs.payload(MODEL)["logprobs"] is True
    assert with_logprobs.payload(MODEL)["top_logprobs"] == 5
    assert request_cache_key(MODEL, payload) == request_cache_key(MODEL, plain.payload(MODEL))
    assert request_cache_key(MODEL, payload) != request_cache_key(MODEL, with_logprobs.payload(MODEL))
    assert request_cache_key(MODEL, payload) != request_cache_key("other-judge", plain.payload("other-judge"))


def test_request_rejects_invalid_messages():
    with pytest.raises(ValueError, match="at least one message"):
        JudgeRequest([])
    with pytest.raises(ValueError, match="content"):
        JudgeRequest([{"role": "user", "content": None}])
    with pytest.raises(ValueError, match="top_logprobs"):
        user_request("a", top_logprobs=50)


def test_base_url_with_credentials_rejected():
    with pytest.raises(ValueError, match="credentials") as raised:
        ChatJudgeClient("http://user:hunter2@127.0.0.1:9/v1", MODEL, cache_path=":memory:")
    assert "hunter2" not in str(raised.value)


# Cache


def test_batch_fetches_each_judgment_once(server: FakeJudgeServer, make_client):
    client = make_client(server, max_concurrency=4)
    texts = [f"question {n}" for n in range(5)]
    requests = [user_request(text) for text in texts] + [user_request(texts[0]), user_request(texts[3])]

    responses = client.complete_many(requests)

    expected_texts = [f"judgment of {text}" for text in texts + [texts[0], texts[3]]]
    assert [response.text for response in responses] == expected_texts
    assert len(server.log) == 5
    assert all(len(server.requests_for(text)) == 1 for text in texts)
    assert all(entry["path"] == "/v1/chat/completions" for entry in server.log)
    assert len(client.cache) == 5
    assert not any(response.from_cache for response in responses[:5])

    again = client.complete_many(requests)
    assert len(server.log) == 5
    assert all(response.from_cache for response in again)
    assert [response.text for response in again] == [response.text for response in responses]


def test_restarted_client_sends_no_request(server: FakeJudgeServer, make_client):
    requests = [user_request(f"question {n}", top_logprobs=5) for n in range(4)]
    first = make_client(server).complete_many(requests)
    sent = len(server.log)

    restarted = make_client(server)
    resumed = restarted.complete_many(requests)

    assert sent == 4
    assert len(server.log) == sent
    assert all(response.from_cache for response in resumed)
    assert [response.text for response in resumed] == [response.text for response in first]
    assert resumed[0].top_logprobs(0) == {"m": -0.5, "M": -1.0, "The": -5.0}
    assert resumed[0].prompt_tokens == 100
    assert resumed[0].completion_tokens == 10
    assert resumed[0].created_at == pytest.approx(first[0].created_at)
    assert restarted.summary()["totals"]["cache_hits"] == 4
    assert restarted.summary()["totals"]["api_requests"] == 0


def test_other_endpoint_same_model_not_cached(server: FakeJudgeServer, make_client):
    request = user_request("which answer is better?")
    make_client(server).complete(request)
    other = FakeJudgeServer().start()
    try:
        response = make_client(other).complete(request)
    finally:
        other.stop()
    assert len(other.log) == 1
    assert not response.from_cache


def test_concurrent_identical_requests_sent_once(server: FakeJudgeServer, make_client):
    server.reply_delay_s = 0.2
    client = make_client(server)
    request = user_request("shared question")
    results: list[str] = []

    def judge_once() -> None:
        results.append(client.complete(request).text)

    threads = [threading.Thread(target=judge_once) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == ["judgment of shared question"] * 4
    assert len(server.requests_for("shared question")) == 1


def test_cache_shared_by_processes(tmp_path: Path):
    path = tmp_path / "shared.sqlite"
    JudgmentCache(path).close()
    writer = (
        "import sys\n"
        "from rspo_bench.evals.judges import JudgmentCache\n"
        "cache = JudgmentCache(sys.argv[1])\n"
        "for n in range(200):\n"
        "    cache.insert(f'key-{n}', 'm', {'n': n}, f'text from {sys.argv[2]}', None, 'stop', 1, 1)\n"
        "cache.close()\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", writer, str(path), name], cwd=REPO_ROOT, stderr=subprocess.PIPE
        )
        for name in ("first", "second")
    ]
    errors = [process.communicate(timeout=60)[1].decode() for process in processes]

    assert [process.returncode for process in processes] == [0, 0], errors
    cache = JudgmentCache(path)
    assert len(cache) == 200
    assert cache.get("key-7").text in ("text from first", "text from second")
    assert cache.request_payload("key-7") == {"n": 7}
    cache.close()


# Retries


def test_transient_failures_retried_until_success(server: FakeJudgeServer, make_client, captured_logs):
    behaviours = ["timeout", "429", "500", "503", "malformed_json", "no_choices", "ok"]
    server.script["flaky"] = list(behaviours)
    client = make_client(server, timeout_s=0.3, max_retries=6, max_malformed_retries=2)
    key = client.cache_key(user_request("flaky"))

    response = client.complete(user_request("flaky"))

    attempts = server.requests_for("flaky")
    assert [entry["behaviour"] for entry in attempts] == behaviours
    assert response.text == "judgment of flaky"
    assert len(client.cache) == 1
    assert client.summary()["totals"]["api_requests"] == 7
    assert client.summary()["totals"]["retries"] == 6
    wait_after_rate_limit = attempts[2]["time"] - attempts[1]["time"]
    assert wait_after_rate_limit >= 0.95, "the client did not honour Retry-After: 1"
    retry_lines = [line for line in captured_logs if "retry" in line]
    assert len(retry_lines) == 6
    assert all(key in line for line in retry_lines)

    client.complete(user_request("flaky"))
    assert len(server.requests_for("flaky")) == 7


def test_retries_exhausted_raises(server: FakeJudgeServer, make_client, captured_logs):
    server.script["down"] = ["500"] * 10
    client = make_client(server, max_retries=2)
    key = client.cache_key(user_request("down"))

    with pytest.raises(JudgeRetriesExhaustedError) as raised:
        client.complete(user_request("down"))

    assert raised.value.attempts == 3
    assert key in str(raised.value)
    assert "HTTP 500" in str(raised.value)
    assert len(server.requests_for("down")) == 3
    assert len(client.cache) == 0
    assert any("ERROR" in line and key in line for line in captured_logs)


def test_malformed_bodies_retried_a_bounded_number_of_times(server: FakeJudgeServer, make_client):
    server.script["garbled"] = ["malformed_json", "no_choices", "malformed_json", "malformed_json", "ok"]
    client = make_client(server, max_retries=6, max_malformed_retries=2)

    with pytest.raises(JudgeResponseFormatError, match="invalid response body on 3 attempts"):
        client.complete(user_request("garbled"))

    assert len(server.requests_for("garbled")) == 3
    assert len(client.cache) == 0


def test_client_error_not_retried(server: FakeJudgeServer, make_client, api_key: str):
    server.script["bad"] = ["401"]
    client = make_client(server)

    started = time.monotonic()
    with pytest.raises(JudgeHTTPError) as raised:
        client.complete(user_request("bad"))

    message = str(raised.value)
    assert raised.value.status == 401
    assert "HTTP 401" in message
    assert repr(MODEL) in message
    assert f"{server.url}/chat/completions" in message
    assert api_key not in message
    assert len(server.requests_for("bad")) == 1
    assert time.monotonic() - started < 1.0


def test_bad_request_not_retried(server: FakeJudgeServer, make_client):
    server.script["invalid"] = ["400", "ok"]
    client = make_client(server)

    with pytest.raises(JudgeHTTPError, match="HTTP 400: scripted failure"):
        client.complete(user_request("invalid"))

    assert len(server.requests_for("invalid")) == 1


def test_client_error_stops_batch(server: FakeJudgeServer, make_client):
    server.default_behaviour = "401"
    server.reply_delay_s = 0.05
    client = make_client(server, max_concurrency=2)

    with pytest.raises(JudgeHTTPError):
        client.complete_many([user_request(f"question {n}") for n in range(20)])

    assert len(server.log) <= 4


def test_partial_failure_resumes_with_failed_requests_only(server: FakeJudgeServer, make_client):
    server.script["question 1"] = ["503", "503"]
    client = make_client(server, max_retries=1)
    requests = [user_request(f"question {n}") for n in range(3)]

    with pytest.raises(JudgeBatchError) as raised:
        client.complete_many(requests)

    assert list(raised.value.failures) == [client.cache_key(requests[1])]
    assert raised.value.completed == 2
    assert len(client.cache) == 2
    sent = len(server.log)

    responses = client.complete_many(requests)

    assert len(server.log) == sent + 1
    assert server.log[-1]["user"] == "question 1"
    assert [response.from_cache for response in responses] == [True, False, True]


def test_retry_after_header_parsing():
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))

    assert _retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert _retry_after_seconds({"retry-after-ms": "150", "Retry-After": "2"}) == pytest.approx(0.15)
    assert 25 <= _retry_after_seconds({"Retry-After": future}) <= 31
    assert _retry_after_seconds({"Retry-After": "soon"}) is None
    assert _retry_after_seconds({}) is None
    assert _retry_after_seconds({"Retry-After": "99999"}) == MAX_RETRY_AFTER_S
    assert _retry_after_seconds({"Retry-After": "-3"}) == 0.0


# Concurrency, secrets and accounting


def test_concurrency_limit_respected(server: FakeJudgeServer, make_client):
    server.reply_delay_s = 0.1
    client = make_client(server, max_concurrency=3)

    client.complete_many([user_request(f"question {n}") for n in range(12)])

    assert len(server.log) == 12
    assert server.max_in_flight <= 3
    assert server.max_in_flight >= 2, "requests did not run concurrently"


def test_api_key_never_leaks(
    server: FakeJudgeServer, make_client, api_key: str, captured_logs, tmp_path: Path
):
    def echoing_responder(payload: dict[str, Any], authorization: str) -> dict[str, Any]:
        return {"content": f"you sent {authorization}", "top_logprobs": [(authorization, -0.1)]}

    server.responder = echoing_responder
    server.script["rejected"] = ["401"]
    server.script["retried"] = ["500", "ok"]
    client = make_client(server, cache_path=tmp_path / "secret-check.sqlite")

    echoed = client.complete(user_request("echo"))
    client.complete(user_request("retried"))
    with pytest.raises(JudgeHTTPError) as raised:
        client.complete(user_request("rejected"))

    assert all(entry["authorization"] == f"Bearer {api_key}" for entry in server.log)
    exposed = [
        str(raised.value),
        repr(raised.value),
        repr(client),
        json.dumps(client.summary()),
        echoed.text,
        json.dumps(echoed.logprobs),
        *captured_logs,
    ]
    assert all(api_key not in text for text in exposed)
    assert "[redacted]" in echoed.text
    client.close()
    cache_files = list(tmp_path.glob("secret-check.sqlite*"))
    assert cache_files
    assert all(api_key.encode() not in path.read_bytes() for path in cache_files)


def test_missing_api_key_sends_no_authorization(server: FakeJudgeServer, make_client, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    client = make_client(server)

    client.complete(user_request("local server"))

    assert server.log[0]["authorization"] == ""


def test_usage_and_cost_accounting(server: FakeJudgeServer, make_client):
    client = make_client(server, prices={MODEL: {"prompt": 2.0, "completion": 8.0}})
    requests = [user_request(f"question {n}") for n in range(3)]
    cost_per_request = (100 * 2.0 + 10 * 8.0) / 1_000_000

    client.complete_many(requests, run="first")
    client.complete_many(requests + requests[:1], run="second")
    summary = client.summary()

    assert summary["price_per_million_tokens"] == {"prompt": 2.0, "completion": 8.0}
    first, second = summary["runs"]["first"], summary["runs"]["second"]
    assert first["fetched"] == 3
    assert first["prompt_tokens"] == 300
    assert first["completion_tokens"] == 30
    assert first["cost_usd"] == pytest.approx(3 * cost_per_request)
    assert second["responses"] == 4
    assert second["duplicates"] == 1
    assert second["cache_hits"] == 3
    assert second["fetched"] == 0
    assert second["cost_usd"] == 0.0
    assert second["cached_cost_usd"] == pytest.approx(3 * cost_per_request)
    assert summary["totals"]["api_requests"] == 3
    assert summary["totals"]["cost_usd"] == pytest.approx(3 * cost_per_request)


def test_cost_unknown_without_price(server: FakeJudgeServer, make_client):
    client = make_client(server, prices={"another-model": ModelPrice(1.0, 1.0)})

    client.complete(user_request("question"))

    assert client.summary()["totals"]["prompt_tokens"] == 100
    assert client.summary()["totals"]["cost_usd"] is None
    assert client.summary()["price_per_million_tokens"] is None
