"""scripts/runpod_endpoint.py against a fake RunPod REST API v2 served on 127.0.0.1.

The fake keeps templates and endpoints in memory and answers 400 to any body that breaks the rules
of RunPod's published schema (runpod/docs `api-reference-v2/openapi.json`, encoded below). With
RUNPOD_DOCS_DIR pointing at a checkout of runpod/docs, every body is also validated against that
file itself with jsonschema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "scripts" / "runpod_endpoint.py"
API_KEY = "rp_test_key_never_printed"
BUCKET_SECRET = "bucket-secret-never-printed"
sys.path.insert(0, str(ROOT / "scripts"))

from endpoint_compute import compute_for  # noqa: E402

KNOWN_POOLS = {"AMPERE_16", "AMPERE_24", "ADA_24", "AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO", "HOPPER_141"}
CONTAINER_FIELDS = {"args", "disk", "env", "image", "ports", "registry"}
TEMPLATE_FIELDS = CONTAINER_FIELDS | {
    "name", "allowedCudaVersions", "category", "mounts", "public", "serverless", "startJupyter", "startSsh",
}
ENDPOINT_UPDATE_FIELDS = CONTAINER_FIELDS | {
    "cpu", "dataCenterIds", "flashboot", "gpu", "name", "networkVolumes", "scaling", "templateId", "timeout", "workers",
}
ENDPOINT_CREATE_FIELDS = ENDPOINT_UPDATE_FIELDS | {"type"}
GPU_FIELDS = {"pools", "excludedTypes", "count", "allowedCudaVersions", "minCudaVersion"}


def schema_violations(kind: str, body: Any, existing: dict[str, Any] | None = None) -> list[str]:
    """RunPod's rules for the four request bodies this tool sends; [] when the body is valid."""
    if not isinstance(body, dict):
        return ["body is not a JSON object"]
    create = existing is None
    allowed = {
        "template": TEMPLATE_FIELDS,
        "endpoint": ENDPOINT_CREATE_FIELDS if create else ENDPOINT_UPDATE_FIELDS,
    }[kind]
    problems = [f"unknown field {key!r}" for key in body if key not in allowed]
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        problems.append("env must map names to strings")
    if "disk" in body and (not isinstance(body["disk"], int) or body["disk"] < 1):
        problems.append("disk must be an integer >= 1")
    if kind == "template":
        if create:
            problems += [f"missing {key}" for key in ("name", "image") if key not in body]
        if body.get("category", "NVIDIA") not in {"CPU", "NVIDIA", "AMD"}:
            problems.append("bad category")
        return problems
    if create:
        problems += [f"missing {key}" for key in ("name", "type", "scaling") if key not in body]
        if "image" not in body and "templateId" not in body:
            problems.append("image is required without templateId")
        if ("gpu" in body) == ("cpu" in body):
            problems.append("exactly one of gpu and cpu")
        if body.get("type") not in {"QUEUE", "LOAD_BALANCER"}:
            problems.append("bad type")
    elif "cpu" in body and not existing.get("cpu"):
        problems.append("cpu on a GPU endpoint")
    gpu = body.get("gpu")
    if gpu is not None:
        problems += [f"unknown gpu field {key!r}" for key in gpu if key not in GPU_FIELDS]
        pools = gpu.get("pools")
        if create or pools is not None:
            if not pools or not all(pool in KNOWN_POOLS for pool in pools):
                problems.append(f"gpu.pools must be known pool ids, got {pools!r}")
        if not isinstance(gpu.get("count", 1), int) or gpu.get("count", 1) < 1:
            problems.append("gpu.count must be an integer >= 1")
        if gpu.get("allowedCudaVersions") and gpu.get("minCudaVersion"):
            problems.append("a non-empty allowedCudaVersions excludes minCudaVersion")
    for cpu in body.get("cpu", []):
        count = cpu.get("vcpuCount")
        if set(cpu) != {"id", "vcpuCount"} or not isinstance(count, int) or count < 2 or count & (count - 1):
            problems.append(f"bad cpu configuration {cpu!r}")
    workers = body.get("workers", {})
    problems += [f"unknown workers field {key!r}" for key in workers if key not in {"min", "max", "idleTimeout"}]
    if "idleTimeout" in workers and not 1 <= workers["idleTimeout"] <= 3600:
        problems.append("workers.idleTimeout outside 1..3600")
    scaling = body.get("scaling")
    if scaling is not None:
        if scaling.get("type") == "QUEUE_DELAY":
            if set(scaling) != {"type", "queueDelay"} or scaling["queueDelay"] < 0.5:
                problems.append(f"bad QUEUE_DELAY scaling {scaling!r}")
        elif scaling.get("type") == "REQUEST_COUNT":
            if set(scaling) != {"type", "requestCount"} or not isinstance(scaling["requestCount"], int):
                problems.append(f"bad REQUEST_COUNT scaling {scaling!r}")
            if "idleTimeout" in workers:
                problems.append("idleTimeout is rejected with REQUEST_COUNT scaling on a queue endpoint")
        else:
            problems.append(f"bad scaling type {scaling!r}")
    if body.get("flashboot", "OFF") not in {"OFF", "FLASHBOOT", "PRIORITY_FLASHBOOT"}:
        problems.append("bad flashboot")
    if not isinstance(body.get("timeout", 0), int):
        problems.append("timeout must be an integer (milliseconds)")
    for key in ("networkVolumes", "dataCenterIds"):
        if not all(isinstance(item, str) for item in body.get(key, [])):
            problems.append(f"{key} must be a list of strings")
    return problems


def published_schema_violations(schema_name: str, body: Any) -> list[str]:
    """Validation against runpod/docs' own openapi.json, when RUNPOD_DOCS_DIR names a checkout."""
    docs = os.environ.get("RUNPOD_DOCS_DIR")
    if not docs:
        return []
    import jsonschema

    spec = json.loads((Path(docs) / "api-reference-v2" / "openapi.json").read_text())
    validator = jsonschema.Draft202012Validator({**spec, "$ref": f"#/components/schemas/{schema_name}"})
    return [f"{schema_name}: {error.message}" for error in validator.iter_errors(body)]


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeRunPodApi:
    """Templates and serverless endpoints of RunPod's REST API v2, in memory."""

    def __init__(self) -> None:
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.violations: list[str] = []
        # (status, content type, body) answered to every request, to test error handling
        self.forced_answer: tuple[int, str, str] | None = None
        self._ids = itertools.count(1)

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        body = json.loads(raw) if raw else None
        self.requests.append(RecordedRequest(method, path, headers, body))
        if headers.get("Authorization") != f"Bearer {API_KEY}":
            return 401, _problem(401, "Unauthorized", "invalid bearer token")
        parts = path.strip("/").split("/")
        if parts[:1] != ["v2"] or len(parts) not in (2, 3) or parts[1] not in ("templates", "serverless"):
            return 404, _problem(404, "Not Found", f"no route {path}")
        store = self.templates if parts[1] == "templates" else self.endpoints
        kind = "template" if parts[1] == "templates" else "endpoint"
        if method == "GET" and len(parts) == 2:
            return 200, {"templates" if kind == "template" else "endpoints": list(store.values())}
        existing = store.get(parts[2]) if len(parts) == 3 else None
        if len(parts) == 3 and existing is None:
            return 404, _problem(404, "Not Found", f"{kind} {parts[2]} not found")
        if not ((method == "POST" and len(parts) == 2) or (method == "PATCH" and len(parts) == 3)):
            return 405, _problem(405, "Method Not Allowed", f"{method} {path}")
        if headers.get("Content-Type") != "application/json":
            return 415, _problem(415, "Unsupported Media Type", "send application/json")
        schema = {("template", True): "CreateTemplateRequest", ("template", False): "UpdateTemplateRequest",
                  ("endpoint", True): "CreateEndpointRequest", ("endpoint", False): "UpdateEndpointRequest"}
        problems = schema_violations(kind, body, existing) + published_schema_violations(
            schema[kind, existing is None], body
        )
        if problems:
            self.violations += problems
            return 400, {**_problem(400, "Bad Request", "request validation failed"), "errors": problems}
        if kind == "endpoint" and body.get("templateId"):
            template = self.templates.get(body["templateId"])
            if template is None:
                return 404, _problem(404, "Not Found", "template not found")
            if not template["serverless"]:
                return 422, _problem(422, "Unprocessable Entity", "not a serverless template")
            # The template's container settings are applied once, body fields winning.
            body = {"image": template["image"], "disk": template.get("disk"), **body,
                    "env": {**template.get("env", {}), **body.get("env", {})}}
        if existing is None:
            prefix = "tpl" if kind == "template" else "ep"
            resource = {"id": f"{prefix}{next(self._ids)}", "serverless": False, **body}
            store[resource["id"]] = resource
            return 201, resource
        existing.update(body)
        return 200, existing

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if api.forced_answer is not None:
                    api.requests.append(RecordedRequest(self.command, self.path, dict(self.headers), raw))
                    status, content_type, text = api.forced_answer
                else:
                    status, payload = api.handle(self.command, self.path, dict(self.headers), raw)
                    content_type = "application/json" if status < 400 else "application/problem+json"
                    text = json.dumps(payload)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"title": title, "status": status, "detail": detail}


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeRunPodApi, str]]:
    api = FakeRunPodApi()
    with api.serving() as base_url:
        yield api, base_url


def run_tool(base_url: str, *args: str, api_key: str = API_KEY, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.environ["PATH"],
        "RUNPOD_API_BASE": base_url,
        "RUNPOD_API_KEY": api_key,
        "BUCKET_NAME": "talking-head-out",
        "BUCKET_ENDPOINT_URL": "https://s3.example.invalid",
        "BUCKET_ACCESS_KEY_ID": "{{ RUNPOD_SECRET_bucket_key_id }}",
        "BUCKET_SECRET_ACCESS_KEY": "{{ RUNPOD_SECRET_bucket_secret }}",
        "HF_TOKEN": "hf_literal_token_never_sent",
        **env,
    }
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, env=environ, timeout=60
    )


def calls(api: FakeRunPodApi) -> list[tuple[str, str]]:
    return [(request.method, request.path) for request in api.requests]


def test_first_run_creates_the_template_then_the_endpoint(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "talking-head", "--image", "docker.io/acme/th:0123abcd",
                      "--data-centers", "EU-RO-1,US-KS-2", "--network-volume", "vol42", "--hf-token-secret", "hf_token")
    assert result.returncode == 0, result.stderr
    assert api.violations == []
    assert calls(api) == [("GET", "/v2/templates"), ("POST", "/v2/templates"),
                          ("GET", "/v2/serverless"), ("POST", "/v2/serverless")]
    assert all(r.headers["Authorization"] == f"Bearer {API_KEY}" for r in api.requests)
    (template,) = api.templates.values()
    (endpoint,) = api.endpoints.values()
    assert result.stdout.strip() == endpoint["id"]

    assert template["name"] == "talking-head-template"
    assert template["image"] == "docker.io/acme/th:0123abcd"
    assert template["serverless"] is True and template["category"] == "NVIDIA"
    assert template["env"] == {
        "MODEL_BACKEND": "wan-s2v",
        "WAN_MEMORY_MODE": "fp8",
        "BUCKET_NAME": "talking-head-out",
        "BUCKET_ENDPOINT_URL": "https://s3.example.invalid",
        "BUCKET_ACCESS_KEY_ID": "{{ RUNPOD_SECRET_bucket_key_id }}",
        "BUCKET_SECRET_ACCESS_KEY": "{{ RUNPOD_SECRET_bucket_secret }}",
        "HF_TOKEN": "{{ RUNPOD_SECRET_hf_token }}",
    }
    create = api.requests[3].body
    assert create["type"] == "QUEUE" and create["templateId"] == template["id"]
    assert create["gpu"] == {"pools": ["ADA_48_PRO", "AMPERE_48", "ADA_80_PRO"], "count": 1,
                             "allowedCudaVersions": [], "minCudaVersion": "12.8"}
    assert create["workers"] == {"min": 0, "max": 3, "idleTimeout": 60}
    assert create["scaling"] == {"type": "QUEUE_DELAY", "queueDelay": 4}
    assert create["flashboot"] == "FLASHBOOT"
    assert create["timeout"] == 3600 * 1000
    assert create["networkVolumes"] == ["vol42"]
    assert create["dataCenterIds"] == ["EU-RO-1", "US-KS-2"]
    assert endpoint["image"] == "docker.io/acme/th:0123abcd"
    sent = json.dumps([r.body for r in api.requests])
    assert "hf_literal_token_never_sent" not in sent


def test_second_run_updates_in_place_and_never_duplicates(fake_api):
    api, base_url = fake_api
    first = run_tool(base_url, "--name", "talking-head", "--image", "acme/th:aaaa1111")
    second = run_tool(base_url, "--name", "talking-head", "--image", "acme/th:bbbb2222",
                      "--workers-max", "5", "--workers-min", "1", "--flashboot", "off")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert api.violations == []
    assert calls(api)[4:] == [("GET", "/v2/templates"), ("PATCH", f"/v2/templates/{next(iter(api.templates))}"),
                              ("GET", "/v2/serverless"), ("PATCH", f"/v2/serverless/{next(iter(api.endpoints))}")]
    assert len(api.templates) == 1 and len(api.endpoints) == 1
    assert first.stdout == second.stdout
    (endpoint,) = api.endpoints.values()
    assert endpoint["image"] == "acme/th:bbbb2222"
    assert endpoint["workers"]["max"] == 5 and endpoint["workers"]["min"] == 1
    assert endpoint["flashboot"] == "OFF"
    assert "type" not in api.requests[-1].body


def test_two_names_make_two_endpoints_for_an_ab_test(fake_api):
    api, base_url = fake_api
    for name, mode in (("th-a", "fp8"), ("th-b", "full")):
        result = run_tool(base_url, "--name", name, "--image", "acme/th:cafe", "--memory-mode", mode)
        assert result.returncode == 0, result.stderr
    assert sorted(e["name"] for e in api.endpoints.values()) == ["th-a", "th-b"]
    assert sorted(t["name"] for t in api.templates.values()) == ["th-a-template", "th-b-template"]
    pools = {e["name"]: e["gpu"]["pools"] for e in api.endpoints.values()}
    assert pools == {"th-a": ["ADA_48_PRO", "AMPERE_48", "ADA_80_PRO"],
                     "th-b": ["ADA_80_PRO", "AMPERE_80", "HOPPER_141"]}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("full", ("ADA_80_PRO", "AMPERE_80", "HOPPER_141")),
        ("fp8", ("ADA_48_PRO", "AMPERE_48", "ADA_80_PRO")),
        ("offload", ("ADA_24", "AMPERE_24", "ADA_48_PRO")),
    ],
)
def test_memory_mode_picks_the_smallest_fitting_gpu_class_first(mode, expected):
    assert compute_for("wan-s2v", mode).gpu_pools == expected


def test_lite_backend_deploys_a_cpu_endpoint(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th-lite", "--image", "acme/th:cafe", "--backend", "lite")
    assert result.returncode == 0, result.stderr
    assert api.violations == []
    (template,) = api.templates.values()
    assert template["category"] == "CPU" and template["env"]["MODEL_BACKEND"] == "lite"
    assert "WAN_MEMORY_MODE" not in template["env"]
    create = api.requests[3].body
    assert "gpu" not in create
    assert create["cpu"] == [{"id": "cpu5c", "vcpuCount": 4}, {"id": "cpu3c", "vcpuCount": 4}]
    assert create["timeout"] == 600 * 1000


def test_flags_override_the_right_sizing_and_scaling(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", "--gpu-pools", "HOPPER_141,ADA_80_PRO",
                      "--gpu-count", "2", "--scaler", "request-count", "--scaler-value", "1",
                      "--execution-timeout", "900")
    assert result.returncode == 0, result.stderr
    assert api.violations == []
    create = api.requests[3].body
    assert create["gpu"]["pools"] == ["HOPPER_141", "ADA_80_PRO"] and create["gpu"]["count"] == 2
    assert create["scaling"] == {"type": "REQUEST_COUNT", "requestCount": 1}
    assert "idleTimeout" not in create["workers"]
    assert create["timeout"] == 900_000
    assert "HF_TOKEN" not in api.requests[1].body["env"]


def test_a_gpu_endpoint_is_not_turned_into_a_cpu_one(fake_api):
    api, base_url = fake_api
    assert run_tool(base_url, "--name", "th", "--image", "acme/th:cafe").returncode == 0
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", "--backend", "lite")
    assert result.returncode == 1
    assert "GPU endpoint" in result.stderr and "--name" in result.stderr
    assert not [r for r in api.requests if r.method == "PATCH" and r.path.startswith("/v2/serverless")]


def test_wrong_api_key_ends_with_a_clear_message(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", api_key="rp_wrong_key")
    assert result.returncode == 1
    assert "401" in result.stderr and "RUNPOD_API_KEY" in result.stderr
    assert "invalid bearer token" in result.stderr
    assert "Traceback" not in result.stderr and "rp_wrong_key" not in result.stderr
    assert calls(api) == [("GET", "/v2/templates")]


@pytest.mark.parametrize(
    ("status", "content_type", "text", "expected"),
    [
        (400, "application/problem+json",
         json.dumps({"title": "Bad Request", "status": 400, "detail": "gpu.pools: unknown pool",
                     "errors": ["$.gpu.pools[0]: not a serverless pool"]}),
         ["400", "gpu.pools: unknown pool", "not a serverless pool"]),
        (503, "text/html", "<html>upstream unavailable</html>", ["503", "again"]),
        (500, "application/problem+json",
         json.dumps({"title": "Internal Server Error", "status": 500, "detail": "boom"}), ["500", "boom"]),
    ],
)
def test_api_errors_end_with_a_clear_message_and_nonzero_exit(fake_api, status, content_type, text, expected):
    api, base_url = fake_api
    api.forced_answer = (status, content_type, text)
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe")
    assert result.returncode == 1
    for fragment in expected:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr and API_KEY not in result.stderr
    assert result.stdout == ""


def test_unreachable_api_ends_with_a_clear_message():
    api = FakeRunPodApi()
    with api.serving() as base_url:
        pass  # the server is closed again: its port refuses connections
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe")
    assert result.returncode == 1
    assert "did not get an answer" in result.stderr and "Traceback" not in result.stderr


def test_missing_api_key_is_reported_before_any_request(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", api_key="")
    assert result.returncode == 2 and "RUNPOD_API_KEY" in result.stderr
    assert api.requests == []


def test_dry_run_prints_every_request_and_sends_none(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", "--dry-run", "--hf-token-secret", "hf_token",
                      BUCKET_SECRET_ACCESS_KEY=BUCKET_SECRET)
    assert result.returncode == 0, result.stderr
    assert api.requests == []
    for line in (f"GET {base_url}/v2/templates", f"POST {base_url}/v2/templates",
                 f"PATCH {base_url}/v2/templates/<template-id>", f"GET {base_url}/v2/serverless",
                 f"POST {base_url}/v2/serverless", f"PATCH {base_url}/v2/serverless/<endpoint-id>"):
        assert line in result.stderr
    assert '"pools": [' in result.stderr and "RUNPOD_SECRET_hf_token" in result.stderr
    assert API_KEY not in result.stderr + result.stdout
    assert BUCKET_SECRET not in result.stderr + result.stdout
    assert "plain text" in result.stderr  # the literal bucket secret is warned about


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "acme/th:latest"], "tag"),
        (["--image", "acme/th"], "tag"),
        (["--image", "acme/th:cafe", "--workers-min", "4", "--workers-max", "2"], "workers"),
        (["--image", "acme/th:cafe", "--gpu-pools", "ADA_4090"], "unknown GPU pool"),
        (["--image", "acme/th:cafe", "--backend", "lite", "--memory-mode", "full"], "--memory-mode"),
        (["--image", "acme/th:cafe", "--backend", "lite", "--cpu", "cpu5c:3"], "power of two"),
        (["--image", "acme/th:cafe", "--scaler-value", "0.1"], "0.5"),
    ],
)
def test_bad_settings_are_refused_before_any_request(fake_api, args, message):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert api.requests == []


def test_a_half_configured_bucket_is_refused_as_the_worker_would(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", BUCKET_NAME="")
    assert result.returncode == 2
    assert "half configured" in result.stderr and "BUCKET_NAME" in result.stderr
    assert api.requests == []


@pytest.mark.skipif(not os.environ.get("RUNPOD_DOCS_DIR"), reason="set RUNPOD_DOCS_DIR to a runpod/docs checkout")
def test_requests_validate_against_the_published_openapi_schema(fake_api):
    api, base_url = fake_api
    for args in (["--name", "th"], ["--name", "th", "--workers-max", "6"],
                 ["--name", "th-cpu", "--backend", "lite", "--network-volume", "vol1"]):
        result = run_tool(base_url, *args, "--image", "acme/th:cafe")
        assert result.returncode == 0, result.stderr
    assert api.violations == []
    assert published_schema_violations("CreateEndpointRequest", {"name": "x", "type": "QUEUE", "bogus": 1})
