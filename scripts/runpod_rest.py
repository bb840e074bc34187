"""A small client for RunPod's REST API v2, the API RunPod documents today.

Schema: `api-reference-v2/openapi.json` in the runpod/docs repository (commit a900806e,
2026-08-20); REST v1 (rest.runpod.io/v1) is retired on 2026-11-15 and GraphQL is being retired
(`api-reference-v2/migrate-from-v1.mdx`). Errors come back as RFC 9457 problem objects
(`title`, `status`, `detail`, optional `errors`).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import requests

DEFAULT_API_BASE = "https://api.runpod.io"
REQUEST_TIMEOUT_SECONDS = 60
# A 429 means RunPod refused the request without acting on it, so any method may be sent again.
# Its Retry-After header gives the seconds to wait (the published 429 response); without one the
# wait doubles from 1 s. At most RATE_LIMIT_RETRIES retries and RATE_LIMIT_WAIT_SECONDS of waiting
# per request, each wait at most RATE_LIMIT_MAX_DELAY_SECONDS.
RATE_LIMIT_RETRIES = 5
RATE_LIMIT_WAIT_SECONDS = 180.0
RATE_LIMIT_MAX_DELAY_SECONDS = 60.0

# Environment variables whose literal values must not reach a terminal or a log.
_SECRET_ENV_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "ACCESS_KEY")


class RunPodApiError(Exception):
    """A request failed; the message says which, why, and what to do. `status`: the HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def redact_body(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The body with literal secrets in `env` masked; RunPod secret references are kept."""
    if not body or "env" not in body:
        return body
    env = {
        key: "<redacted>" if is_secret_name(key) and not is_secret_reference(value) else value
        for key, value in body["env"].items()
    }
    return {**body, "env": env}


def is_secret_reference(value: str) -> bool:
    return value.startswith("{{") and "RUNPOD_SECRET_" in value and value.endswith("}}")


def is_secret_name(name: str) -> bool:
    return any(marker in name.upper() for marker in _SECRET_ENV_MARKERS)


def format_request(method: str, url: str, body: dict[str, Any] | None) -> str:
    """How a request is shown to the user: never with the API key or a literal secret."""
    lines = [f"{method} {url}", "Authorization: Bearer <RUNPOD_API_KEY>"]
    if body is not None:
        lines += ["Content-Type: application/json", json.dumps(redact_body(body), indent=2)]
    return "\n".join(lines)


class RunPodRest:
    def __init__(self, api_key: str, api_base: str = DEFAULT_API_BASE) -> None:
        self.api_base = api_base.rstrip("/")
        self._session = requests.Session()
        self._session.headers.update(
            {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        )

    def url(self, path: str) -> str:
        return f"{self.api_base}{path}"

    def get(self, path: str) -> dict[str, Any]:
        return self._send("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._send("POST", path, body)

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._send("PATCH", path, body)

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        url = self.url(path)
        waited = 0.0
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            response = self._request(method, url, body)
            if response.status_code != 429 or attempt == RATE_LIMIT_RETRIES:
                break
            delay = _retry_delay(response, attempt)
            if waited + delay > RATE_LIMIT_WAIT_SECONDS:
                break
            print(f"RunPod is rate-limiting this key (429); {method} {url} again in {delay:.0f} s "
                  f"(retry {attempt + 1} of {RATE_LIMIT_RETRIES})", file=sys.stderr, flush=True)
            time.sleep(delay)
            waited += delay
        if response.ok:
            try:
                return response.json()
            except ValueError:
                raise RunPodApiError(
                    f"{method} {url} answered {response.status_code} with a body that is not JSON.",
                    response.status_code,
                ) from None
        message = _error_message(method, url, response)
        if response.status_code == 429:
            message += f" (gave up after {attempt + 1} tries and {waited:.0f} s of waiting)"
        raise RunPodApiError(message, response.status_code)

    def _request(self, method: str, url: str, body: dict[str, Any] | None) -> requests.Response:
        try:
            return self._session.request(method, url, json=body, timeout=REQUEST_TIMEOUT_SECONDS)
        except requests.RequestException as error:
            raise RunPodApiError(
                f"{method} {url} did not get an answer ({type(error).__name__}); check the "
                "network and RUNPOD_API_BASE."
            ) from None


def _retry_delay(response: requests.Response, attempt: int) -> float:
    """Seconds to wait before retrying a 429: its Retry-After, else 1, 2, 4, ... s; capped."""
    header = response.headers.get("Retry-After", "").strip()
    delay = float(header) if header.isdigit() else float(2**attempt)
    return min(delay, RATE_LIMIT_MAX_DELAY_SECONDS)


def _error_message(method: str, url: str, response: requests.Response) -> str:
    status = response.status_code
    problem = _problem_text(response)
    where = f"{method} {url} failed with {status}"
    if status == 401:
        hint = "RunPod did not accept the API key: check RUNPOD_API_KEY (console → Settings → API Keys)."
    elif status == 403:
        hint = "the API key lacks the permission for this: give it read/write access to Serverless and Templates."
    elif status == 429:
        hint = "RunPod is rate-limiting this key: wait a minute and run the same command again."
    elif status >= 500:
        hint = "RunPod had an internal error; running the same command again later is safe, it updates what exists."
    else:
        hint = "RunPod rejected the request."
    return f"{where}: {hint}" + (f" RunPod says: {problem}" if problem else "")


def _problem_text(response: requests.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if not isinstance(problem, dict):
        return str(problem)[:300]
    parts = [str(problem.get("detail") or problem.get("message") or problem.get("title") or "")]
    parts += [str(error) for error in problem.get("errors") or []]
    return "; ".join(part for part in parts if part)
