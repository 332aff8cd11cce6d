"""Client for LLM judges behind an OpenAI-compatible chat completions endpoint.

:class:`ChatJudgeClient` sends ``POST {base_url}/chat/completions`` requests from a
thread pool, retries transient failures, stores every judgment in a SQLite cache
(:class:`JudgmentCache`) and counts tokens and cost per client and per run.

- Retries: timeouts, connection errors, HTTP 408, 429 and 5xx are retried with
  exponential backoff and jitter, or after the delay in the ``Retry-After`` header.
  A 2xx body that is not JSON or has no usable ``choices`` is retried at most
  ``max_malformed_retries`` times. Any other status raises :class:`JudgeHTTPError` at once.
- Cache: the key is the SHA-256 of the canonical JSON of the judge model and the
  request payload, which contains no credentials. A request whose key is in the cache
  is never sent again, so a restarted run resumes where it stopped.
- Secrets: the API key is read from the environment for each request and only
  placed in the ``Authorization`` header. Error bodies, log messages and stored
  texts have the key replaced by ``[redacted]``.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import http.client
import json
import math
import os
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rspo_bench.logs import get_logger, progress_bar

logger = get_logger(__name__)

CACHE_ENV_VAR = "RSPO_BENCH_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/rspo-bench")
DEFAULT_CACHE_FILE = "judgments.sqlite"
CACHE_SCHEMA_VERSION = 1

# Statuses that a later attempt can succeed on: request timeout, rate limit, server errors.
RETRYABLE_STATUSES = frozenset({408, 429})
# Upper bound on a server-requested Retry-After delay, so that a wrong header cannot stall a run.
MAX_RETRY_AFTER_S = 600.0
REDACTED = "[redacted]"
_ERROR_DETAIL_CHARS = 300


def default_cache_path() -> Path:
    """Return ``$RSPO_BENCH_CACHE/judgments.sqlite``, or the same file under ``~/.cache/rspo-bench``."""
    root = os.environ.get(CACHE_ENV_VAR)
    base = Path(root) if root else DEFAULT_CACHE_ROOT
    return (base / DEFAULT_CACHE_FILE).expanduser()


def canonical_json(value: Any) -> str:
    """Serialise a JSON value with sorted keys and no spaces, the form that cache keys hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# Errors


class JudgeError(RuntimeError):
    """A judge request failed."""


class JudgeHTTPError(JudgeError):
    """The endpoint responded with a status that a retry cannot fix (most 4xx, and 3xx redirects)."""

    def __init__(self, status: int, model: str, url: str, detail: str):
        self.status = status
        self.model = model
        self.url = url
        self.detail = detail
        super().__init__(
            f"judge request to {url} for model {model!r} failed with HTTP {status}: {detail}"
            f"{_STATUS_HINTS.get(status, '')}"
        )


_STATUS_HINTS = {
    401: " (check the API key in the environment variable that api_key_env names)",
    403: " (the API key is not allowed to use this model or endpoint)",
    404: " (check base_url and the model name)",
}


class JudgeRetriesExhaustedError(JudgeError):
    """Every attempt of a request failed with a transient error."""

    def __init__(self, key: str, attempts: int, reason: str):
        self.key = key
        self.attempts = attempts
        self.reason = reason
        super().__init__(f"judge request {key} failed after {attempts} attempts; last error: {reason}")


class JudgeResponseFormatError(JudgeError):
    """The endpoint kept returning bodies that are not a chat completion."""

    def __init__(self, key: str, attempts: int, reason: str):
        self.key = key
        self.attempts = attempts
        self.reason = reason
        super().__init__(
            f"judge request {key}: invalid response body on {attempts} attempts; last problem: {reason}"
        )


class JudgeBatchError(JudgeError):
    """Some requests of a batch failed; the others are stored in the cache."""

    def __init__(self, failures: Mapping[str, JudgeError], completed: int):
        self.failures = dict(failures)
        self.completed = completed
        first_key, first_error = next(iter(self.failures.items()))
        super().__init__(
            f"{len(self.failures)} judge requests failed and {completed} succeeded (stored in the cache, "
            f"so a rerun sends only the failed ones). First failure, request {first_key}: {first_error}"
        )


class _TransientError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _MalformedResponseError(Exception):
    pass


# Requests, responses and prices


@dataclass
class JudgeRequest:
    """One chat completion request; with ``top_logprobs=None`` it requests no log-probabilities."""

    messages: Sequence[Mapping[str, str]]
    temperature: float = 0.0
    max_tokens: int = 1024
    top_logprobs: int | None = None

    def __post_init__(self) -> None:
        messages = []
        for position, message in enumerate(self.messages):
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise ValueError(f"invalid message at position {position}: expected a mapping with a 'role'")
            if not isinstance(message.get("content"), str):
                raise ValueError(f"invalid message at position {position}: 'content' must be a string")
            messages.append(dict(message))
        if not messages:
            raise ValueError("a judge request needs at least one message")
        self.messages = messages
        if self.max_tokens < 1:
            raise ValueError(f"invalid max_tokens {self.max_tokens}: expected a value >= 1")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"invalid top_logprobs {self.top_logprobs}: the OpenAI API accepts 0 to 20")

    def payload(self, model: str) -> dict[str, Any]:
        """Return the JSON body of ``POST /chat/completions`` for a judge model."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [dict(message) for message in self.messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        return body


def request_cache_key(model: str, payload: Mapping[str, Any], url: str | None = None) -> str:
    """Return the SHA-256 hex digest of the endpoint URL, the judge model and the request payload.

    The URL is part of the key because two servers may serve different models under one name.
    """
    identity: dict[str, Any] = {"model": model, "payload": payload}
    if url is not None:
        identity["url"] = url
    return hashlib.sha256(canonical_json(identity).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class JudgeResponse:
    """A judgment: the completion text, its token log-probabilities and its token usage.

    ``logprobs`` has one entry per generated token, ``{"token", "logprob", "top_logprobs":
    [{"token", "logprob"}, ...]}``, or is None when the request asked for none or the
    endpoint returned none. Token counts are None when the response had no ``usage``.
    """

    key: str
    model: str
    text: str
    logprobs: list[dict[str, Any]] | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    created_at: float
    from_cache: bool

    def top_logprobs(self, position: int = 0) -> dict[str, float]:
        """Return ``{token: logprob}`` of the alternatives at a generated position ({} if there are none).

        When two alternatives decode to the same string, the first listed (the more
        probable) one is kept.
        """
        if not self.logprobs or not -len(self.logprobs) <= position < len(self.logprobs):
            return {}
        alternatives: dict[str, float] = {}
        for entry in self.logprobs[position].get("top_logprobs") or []:
            alternatives.setdefault(entry["token"], float(entry["logprob"]))
        return alternatives


@dataclass(frozen=True)
class ModelPrice:
    """Prices of a judge model in US dollars per one million tokens."""

    prompt_per_million: float
    completion_per_million: float

    def __post_init__(self) -> None:
        if self.prompt_per_million < 0 or self.completion_per_million < 0:
            raise ValueError(
                f"invalid prices {self.prompt_per_million} and {self.completion_per_million}: "
                f"expected dollars per million tokens >= 0"
            )

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """Return the cost in dollars; missing token counts count as 0."""
        prompt_cost = (prompt_tokens or 0) * self.prompt_per_million
        completion_cost = (completion_tokens or 0) * self.completion_per_million
        return (prompt_cost + completion_cost) / 1_000_000


def _as_price(model: str, value: ModelPrice | Mapping[str, float]) -> ModelPrice:
    if isinstance(value, ModelPrice):
        return value
    if isinstance(value, Mapping) and set(value) == {"prompt", "completion"}:
        return ModelPrice(float(value["prompt"]), float(value["completion"]))
    raise ValueError(
        f"invalid price entry for {model!r}: expected ModelPrice or a mapping with keys 'prompt' and "
        f"'completion' in dollars per million tokens, got {value!r}"
    )


# Accounting


@dataclass
class UsageTotals:
    """Counts of one client or one run.

    ``prompt_tokens``, ``completion_tokens`` and ``cost_usd`` cover judgments fetched
    from the endpoint. The ``cached_`` fields cover judgments served from the cache,
    whose cost was paid when they were first fetched. Costs are None without a price.
    """

    responses: int = 0
    duplicates: int = 0
    cache_hits: int = 0
    fetched: int = 0
    api_requests: int = 0
    retries: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    responses_without_usage: int = 0
    price: ModelPrice | None = field(default=None, repr=False)

    @property
    def cost_usd(self) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(self.prompt_tokens, self.completion_tokens)

    @property
    def cached_cost_usd(self) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(self.cached_prompt_tokens, self.cached_completion_tokens)

    def as_dict(self) -> dict[str, Any]:
        return {
            "responses": self.responses,
            "duplicates": self.duplicates,
            "cache_hits": self.cache_hits,
            "fetched": self.fetched,
            "api_requests": self.api_requests,
            "retries": self.retries,
            "failures": self.failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cached_completion_tokens": self.cached_completion_tokens,
            "cached_cost_usd": self.cached_cost_usd,
            "responses_without_usage": self.responses_without_usage,
        }


# Persistent cache


_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    logprobs TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    created_at REAL NOT NULL
)
"""
_COLUMNS = "key, model, text, logprobs, finish_reason, prompt_tokens, completion_tokens, created_at"
_SELECT_ROW = f"SELECT {_COLUMNS} FROM judgments WHERE key = ?"


class JudgmentCache:
    """SQLite table of judgments keyed by :func:`request_cache_key`.

    The database runs in WAL mode with a busy timeout, so several processes can read
    and write one file. A key is written once: a second insert of the same key keeps
    the first row, and both writers get that row back from :meth:`insert`.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection shared by the client's threads, serialised by the lock.
        self._connection = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            mode = self._connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning(
                    "judgment cache %s: SQLite did not switch to WAL mode (journal mode is %s), so "
                    "concurrent processes may wait on each other's writes",
                    self.path,
                    mode,
                )
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(_SCHEMA)
            version = self._connection.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._connection.execute(f"PRAGMA user_version={CACHE_SCHEMA_VERSION}")
            elif version != CACHE_SCHEMA_VERSION:
                raise ValueError(
                    f"judgment cache {self.path} has schema version {version}, but this code reads "
                    f"version {CACHE_SCHEMA_VERSION}; use another cache_path or delete the file"
                )

    def get(self, key: str) -> JudgeResponse | None:
        """Return the stored judgment of a key, or None."""
        with self._lock:
            row = self._connection.execute(_SELECT_ROW, (key,)).fetchone()
        return None if row is None else _row_to_response(row)

    def insert(
        self,
        key: str,
        model: str,
        payload: Mapping[str, Any],
        text: str,
        logprobs: list[dict[str, Any]] | None,
        finish_reason: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> JudgeResponse:
        """Store a judgment unless the key is present, and return the stored row."""
        with self._lock:
            self._connection.execute(
                "INSERT OR IGNORE INTO judgments (key, model, request, text, logprobs, finish_reason, "
                "prompt_tokens, completion_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    model,
                    canonical_json(payload),
                    text,
                    None if logprobs is None else canonical_json(logprobs),
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                    time.time(),
                ),
            )
            row = self._connection.execute(_SELECT_ROW, (key,)).fetchone()
        return _row_to_response(row)

    def request_payload(self, key: str) -> dict[str, Any] | None:
        """Return the request payload stored with a key, or None."""
        with self._lock:
            row = self._connection.execute("SELECT request FROM judgments WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection.execute("SELECT COUNT(*) FROM judgments").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()


def _row_to_response(row: Sequence[Any]) -> JudgeResponse:
    key, model, text, logprobs, finish_reason, prompt_tokens, completion_tokens, created_at = row
    return JudgeResponse(
        key=key,
        model=model,
        text=text,
        logprobs=None if logprobs is None else json.loads(logprobs),
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        created_at=created_at,
        from_cache=True,
    )


# Response parsing


@dataclass(frozen=True)
class _Completion:
    text: str
    logprobs: list[dict[str, Any]] | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


def _parse_completion(body: bytes) -> _Completion:
    """Parse a chat completion body, raising _MalformedResponseError with the reason."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _MalformedResponseError(f"body is not JSON ({error}); first bytes {body[:80]!r}") from error
    if not isinstance(data, dict):
        raise _MalformedResponseError(f"body is a JSON {type(data).__name__}, expected an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _MalformedResponseError("body has no 'choices' list with an object in it")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        raise _MalformedResponseError("choices[0] has no 'message' with string 'content'")

    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return _Completion(
        text=message["content"],
        logprobs=_parse_logprobs(choice.get("logprobs")),
        finish_reason=choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None,
        prompt_tokens=_token_count(usage.get("prompt_tokens")),
        completion_tokens=_token_count(usage.get("completion_tokens")),
    )


def _token_count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


def _parse_logprobs(value: Any) -> list[dict[str, Any]] | None:
    """Keep token, logprob and the alternatives of each generated token (OpenAI ``logprobs.content``)."""
    if value is None:
        return None
    content = value.get("content") if isinstance(value, dict) else None
    if content is None:
        return None
    if not isinstance(content, list):
        raise _MalformedResponseError("choices[0].logprobs.content is not a list")
    tokens = []
    for position, entry in enumerate(content):
        try:
            alternatives = [
                {"token": str(item["token"]), "logprob": _finite_logprob(item["logprob"])}
                for item in entry.get("top_logprobs") or []
            ]
            tokens.append(
                {
                    "token": str(entry["token"]),
                    "logprob": _finite_logprob(entry["logprob"]),
                    "top_logprobs": alternatives,
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise _MalformedResponseError(f"invalid logprobs entry at token {position}: {error!r}") from error
    return tokens


def _finite_logprob(value: Any) -> float:
    number = float(value)
    # A logprob of -inf is valid (probability 0), but JSON has no infinity, so it is stored as -9999.
    if math.isnan(number):
        raise ValueError("logprob is NaN")
    return max(number, -9999.0)


def _retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Return the delay from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), or None."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return min(max(float(milliseconds) / 1000.0, 0.0), MAX_RETRY_AFTER_S)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class _NoRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Turn redirects into errors, so that the Authorization header never follows one to another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102, ANN001
        return None


def _validate_base_url(base_url: str) -> str:
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid base_url {base_url!r}: expected http(s)://host[:port][/path]")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "invalid base_url: it contains credentials; put the API key in the environment variable "
            "that api_key_env names"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"invalid base_url {base_url!r}: a query string or fragment is not supported")
    return base_url.rstrip("/")


# Client


class ChatJudgeClient:
    """Concurrent, retrying and caching client of one judge model at one endpoint.

    Args:
        base_url: endpoint root such as ``http://127.0.0.1:8000/v1``; requests go to
            ``{base_url}/chat/completions``.
        model: judge model name, sent in each request and part of each cache key.
        api_key_env: environment variable with the API key. When it is unset or empty
            the requests carry no ``Authorization`` header (local servers need none).
        max_concurrency: maximum number of requests in flight from this client.
        timeout_s: seconds to wait for the connection and for each read of the response.
        max_retries: retries of one request after its first attempt.
        backoff_base_s, backoff_max_s: the n-th retry waits ``min(backoff_max_s,
            backoff_base_s * 2 ** (n - 1))`` seconds, with the upper half drawn at random,
            unless the response had a Retry-After header.
        max_malformed_retries: retries of one request after invalid 2xx bodies (these
            count towards ``max_retries`` too).
        cache_path: SQLite file of the cache; default :func:`default_cache_path`.
        prices: dollars per million prompt and completion tokens, by model name.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_malformed_retries: int = 2,
        cache_path: str | os.PathLike[str] | None = None,
        prices: Mapping[str, ModelPrice | Mapping[str, float]] | None = None,
    ):
        if not model:
            raise ValueError("model must be a non-empty judge model name")
        if max_concurrency < 1:
            raise ValueError(f"invalid max_concurrency {max_concurrency}: expected a value >= 1")
        if not timeout_s > 0:
            raise ValueError(f"invalid timeout_s {timeout_s}: expected a value > 0")
        if max_retries < 0 or max_malformed_retries < 0:
            raise ValueError(
                f"invalid max_retries {max_retries} or max_malformed_retries {max_malformed_retries}: "
                f"expected values >= 0"
            )
        if backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError(
                f"invalid backoff_base_s {backoff_base_s} or backoff_max_s {backoff_max_s}: "
                f"expected values >= 0"
            )
        self.base_url = _validate_base_url(base_url)
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_malformed_retries = int(max_malformed_retries)
        self.prices = {name: _as_price(name, value) for name, value in (prices or {}).items()}
        self.price = self.prices.get(model)
        if prices is not None and self.price is None:
            logger.warning(
                "no price for judge model %r in the price table; costs are reported as None", model
            )
        self.cache = JudgmentCache(cache_path if cache_path is not None else default_cache_path())

        self._opener = urllib.request.build_opener(_NoRedirectHandler())
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._random = random.Random()
        self._lock = threading.Lock()
        self._in_flight: dict[str, Future[JudgeResponse]] = {}
        self.totals = UsageTotals(price=self.price)
        self.runs: dict[str, UsageTotals] = {}

    def __repr__(self) -> str:
        return f"ChatJudgeClient(model={self.model!r}, url={self.url!r}, cache={str(self.cache.path)!r})"

    # Public API

    def cache_key(self, request: JudgeRequest) -> str:
        """Return the cache key of a request: SHA-256 of the endpoint URL, the model and the payload."""
        return request_cache_key(self.model, request.payload(self.model), self.url)

    def complete(self, request: JudgeRequest, *, run: str = "default") -> JudgeResponse:
        """Return the judgment of one request, from the cache or the endpoint; raise its error on failure."""
        try:
            return self.complete_many([request], run=run, desc=None)[0]
        except JudgeBatchError as error:
            raise next(iter(error.failures.values())) from None

    def complete_many(
        self, requests: Iterable[JudgeRequest], *, run: str = "default", desc: str | None = "judge requests"
    ) -> list[JudgeResponse]:
        """Return the judgments of requests in their order, fetching those missing from the cache.

        Identical requests are sent once. Requests run on up to ``max_concurrency``
        threads. A :class:`JudgeHTTPError` cancels the requests not yet started and is
        raised at once. Other failures are collected and raised together as
        :class:`JudgeBatchError` after the remaining requests finish and are stored.
        """
        requests = list(requests)
        keys = [self.cache_key(request) for request in requests]
        unique: dict[str, JudgeRequest] = {}
        for key, request in zip(keys, requests):
            unique.setdefault(key, request)

        results: dict[str, JudgeResponse] = {}
        for key in unique:
            cached = self.cache.get(key)
            if cached is not None:
                results[key] = cached
                self._count_cached(cached, run)
        self._count(run, responses=len(requests), duplicates=len(requests) - len(unique))
        missing = [key for key in unique if key not in results]
        if missing:
            logger.info(
                "judge %s: %d requests, %d in the cache, %d to fetch from %s",
                self.model,
                len(requests),
                len(unique) - len(missing),
                len(missing),
                self.url,
            )

        failures: dict[str, JudgeError] = {}
        if missing:
            with progress_bar(desc=desc or "judge requests", total=len(unique), unit="judgment") as bar:
                bar.update(len(unique) - len(missing))
                self._fetch_all(missing, unique, run, results, failures, bar.update)
        if failures:
            raise JudgeBatchError(failures, completed=len(results))
        return [results[key] for key in keys]

    def summary(self) -> dict[str, Any]:
        """Return the model, endpoint, prices and usage totals of the client and of each run."""
        with self._lock:
            return {
                "model": self.model,
                "url": self.url,
                "cache_path": str(self.cache.path),
                "price_per_million_tokens": None if self.price is None else self._price_dict(),
                "totals": self.totals.as_dict(),
                "runs": {name: totals.as_dict() for name, totals in self.runs.items()},
            }

    def close(self) -> None:
        self.cache.close()

    def _price_dict(self) -> dict[str, float]:
        assert self.price is not None
        return {"prompt": self.price.prompt_per_million, "completion": self.price.completion_per_million}

    # Fetching

    def _fetch_all(
        self,
        keys: Sequence[str],
        requests: Mapping[str, JudgeRequest],
        run: str,
        results: dict[str, JudgeResponse],
        failures: dict[str, JudgeError],
        advance: Any,
    ) -> None:
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(keys))) as pool:
            futures = {pool.submit(self._fetch, key, requests[key], run): key for key in keys}
            try:
                for future in as_completed(futures):
                    key = futures[future]
                    try:
                        results[key] = future.result()
                    except JudgeHTTPError:
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
                    except JudgeError as error:
                        failures[key] = error
                    advance(1)
            except KeyboardInterrupt:
                # Stop spending on the endpoint: only the requests already in flight finish and are stored.
                pending = sum(not future.done() for future in futures)
                logger.warning("judge %s: interrupted; cancelling up to %d queued requests", self.model, pending)
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    def _fetch(self, key: str, request: JudgeRequest, run: str) -> JudgeResponse:
        """Fetch one judgment, or wait for the thread that is already fetching the same key."""
        with self._lock:
            owner = self._in_flight.get(key)
            if owner is None:
                future: Future[JudgeResponse] = Future()
                self._in_flight[key] = future
        if owner is not None:
            return owner.result()

        # NOTE: this deduplication covers the threads of one client. Two processes that miss
        # the same key at the same moment both send the request, and both return the first
        # stored row.
        try:
            # Another process or thread may have stored the key since the caller looked.
            response = self.cache.get(key)
            if response is not None:
                self._count_cached(response, run)
            else:
                response = self._request_with_retries(key, request, run)
            future.set_result(response)
            return response
        except BaseException as error:
            future.set_exception(error)
            if isinstance(error, JudgeError):
                self._count(run, failures=1)
            raise
        finally:
            with self._lock:
                del self._in_flight[key]

    def _request_with_retries(self, key: str, request: JudgeRequest, run: str) -> JudgeResponse:
        payload = request.payload(self.model)
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        attempt = 0
        malformed = 0
        while True:
            attempt += 1
            self._count(run, api_requests=1)
            try:
                completion = self._post(key, body)
            except _TransientError as error:
                if attempt > self.max_retries:
                    logger.error(
                        "judge request %s: %s; giving up after %d attempts", key, error.reason, attempt
                    )
                    raise JudgeRetriesExhaustedError(key, attempt, error.reason) from None
                delay = error.retry_after if error.retry_after is not None else self._backoff(attempt)
                reason = error.reason
            except _MalformedResponseError as error:
                malformed += 1
                reason = self._redact(str(error))
                if malformed > self.max_malformed_retries or attempt > self.max_retries:
                    logger.error("judge request %s: %s; giving up after %d attempts", key, reason, attempt)
                    raise JudgeResponseFormatError(key, attempt, reason) from None
                delay = self._backoff(attempt)
            else:
                return self._store(key, payload, completion, run)

            self._count(run, retries=1)
            logger.warning(
                "judge request %s: %s; retry %d of %d in %.2f s",
                key,
                reason,
                attempt,
                self.max_retries,
                delay,
            )
            time.sleep(delay)

    def _post(self, key: str, body: bytes) -> _Completion:
        """Send one attempt, returning the parsed completion or raising a classified error."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        api_key = os.environ.get(self.api_key_env) or None
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        http_request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")

        with self._slots:
            try:
                with self._opener.open(http_request, timeout=self.timeout_s) as http_response:
                    status = http_response.status
                    response_headers = http_response.headers
                    data = http_response.read()
            except urllib.error.HTTPError as error:
                status = error.code
                response_headers = error.headers
                try:
                    data = error.read()
                except (OSError, http.client.HTTPException):
                    data = b""
                finally:
                    error.close()
            except TimeoutError:
                raise _TransientError(f"timed out after {self.timeout_s:g} s") from None
            except urllib.error.URLError as error:
                if isinstance(error.reason, TimeoutError):
                    raise _TransientError(f"timed out after {self.timeout_s:g} s") from None
                raise _TransientError(f"connection failed: {self._redact(str(error.reason))}") from None
            except (OSError, http.client.HTTPException) as error:
                raise _TransientError(f"connection failed: {self._redact(repr(error))}") from None

        if 200 <= status < 300:
            return _parse_completion(data)
        detail = self._error_detail(data)
        if status in RETRYABLE_STATUSES or 500 <= status < 600:
            raise _TransientError(f"HTTP {status}: {detail}", _retry_after_seconds(response_headers))
        logger.error("judge request %s: HTTP %d from %s: %s", key, status, self.url, detail)
        raise JudgeHTTPError(status, self.model, self.url, detail)

    def _store(
        self, key: str, payload: Mapping[str, Any], completion: _Completion, run: str
    ) -> JudgeResponse:
        stored = self.cache.insert(
            key,
            self.model,
            payload,
            self._redact(completion.text),
            self._redact_logprobs(completion.logprobs),
            completion.finish_reason,
            completion.prompt_tokens,
            completion.completion_tokens,
        )
        with self._lock:
            for totals in (self.totals, self._run(run)):
                totals.fetched += 1
                totals.prompt_tokens += completion.prompt_tokens or 0
                totals.completion_tokens += completion.completion_tokens or 0
                if completion.prompt_tokens is None or completion.completion_tokens is None:
                    totals.responses_without_usage += 1
        return dataclasses.replace(stored, from_cache=False)

    # Helpers

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _redact(self, text: str) -> str:
        api_key = os.environ.get(self.api_key_env)
        if api_key:
            text = text.replace(api_key, REDACTED)
        return text

    def _redact_logprobs(self, logprobs: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if logprobs is None:
            return None
        redacted = []
        for entry in logprobs:
            alternatives = [{**item, "token": self._redact(item["token"])} for item in entry["top_logprobs"]]
            redacted.append({**entry, "token": self._redact(entry["token"]), "top_logprobs": alternatives})
        return redacted

    def _error_detail(self, data: bytes) -> str:
        """Return the error message of a JSON error body, else the start of the body, without the API key."""
        text = data.decode("utf-8", errors="replace")
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            error = parsed.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            if isinstance(message, str) and message:
                text = message
        text = " ".join(text.split())[:_ERROR_DETAIL_CHARS] or "(empty body)"
        return self._redact(text)

    def _run(self, run: str) -> UsageTotals:
        totals = self.runs.get(run)
        if totals is None:
            totals = self.runs[run] = UsageTotals(price=self.price)
        return totals

    def _count(self, run: str, **increments: int) -> None:
        with self._lock:
            for totals in (self.totals, self._run(run)):
                for name, value in increments.items():
                    setattr(totals, name, getattr(totals, name) + value)

    def _count_cached(self, response: JudgeResponse, run: str) -> None:
        with self._lock:
            for totals in (self.totals, self._run(run)):
                totals.cache_hits += 1
                totals.cached_prompt_tokens += response.prompt_tokens or 0
                totals.cached_completion_tokens += response.completion_tokens or 0
