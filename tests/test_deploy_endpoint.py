"""scripts/runpod_endpoint.py against a fake RunPod REST API v2 served on 127.0.0.1.

The fake keeps templates, endpoints (with their releases), network volumes and a GPU catalog in
memory and answers 400 to any body that breaks the rules of RunPod's published schema (runpod/docs
`api-reference-v2/openapi.json`, encoded below), 429 when told to. With RUNPOD_DOCS_DIR pointing
at a checkout of runpod/docs, every body is also validated against that file itself with jsonschema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import io
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.registry import BACKENDS
from scripts import runpod_endpoint
from scripts.endpoint_compute import compute_for
from scripts.endpoint_requests import MIN_CUDA_VERSION

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "scripts" / "runpod_endpoint.py"
API_KEY = "rp_test_key_never_printed"
BUCKET_SECRET = "bucket-secret-never-printed"

# (GPU type id, serverless pool, memory GB): a few rows of GET /v2/catalog/gpus (ids and pools from
# runpod/docs references/gpu-types.mdx and flash/configuration/gpu-types.mdx). FUTURE_64 stands for a
# pool RunPod may add that the tool's table does not know yet; the RTX 3070 is in no serverless pool.
CATALOG_ROWS = [
    ("NVIDIA RTX A4000", "AMPERE_16", 16), ("NVIDIA GeForce RTX 4090", "ADA_24", 24), ("NVIDIA L4", "AMPERE_24", 24),
    ("NVIDIA RTX A5000", "AMPERE_24", 24), ("NVIDIA GeForce RTX 3090", "AMPERE_24", 24),
    ("NVIDIA RTX A6000", "AMPERE_48", 48), ("NVIDIA A40", "AMPERE_48", 48), ("NVIDIA L40", "ADA_48_PRO", 48),
    ("NVIDIA L40S", "ADA_48_PRO", 48), ("NVIDIA RTX 6000 Ada Generation", "ADA_48_PRO", 48),
    ("NVIDIA A100 80GB PCIe", "AMPERE_80", 80), ("NVIDIA A100-SXM4-80GB", "AMPERE_80", 80),
    ("NVIDIA H100 80GB HBM3", "ADA_80_PRO", 80), ("NVIDIA H100 PCIe", "ADA_80_PRO", 80),
    ("NVIDIA H200", "HOPPER_141", 141), ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "BLACKWELL_96", 96),
    ("NVIDIA B200", "BLACKWELL_180", 180), ("NVIDIA GeForce RTX 5090", "ADA_32_PRO", 32),
    ("NVIDIA Future GPU", "FUTURE_64", 64), ("NVIDIA GeForce RTX 3070", None, 8),
]
KNOWN_POOLS = {pool for _, pool, _ in CATALOG_ROWS if pool}
GPU_TYPES_BY_POOL = {pool: {gpu for gpu, p, _ in CATALOG_ROWS if p == pool} for pool in KNOWN_POOLS}
# The account's network volumes: two in one data centre, one in another.
NETWORK_VOLUMES = [("vol42", "EU-RO-1"), ("vol43", "EU-RO-1"), ("vol77", "US-KS-2")]
# Workers the fake says an endpoint runs, for its rollout summary.
RUNNING_WORKERS = 2
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
        excluded = gpu.get("excludedTypes")
        if excluded is not None:
            if pools is None:
                problems.append("gpu.excludedTypes requires gpu.pools")
            offered = set().union(*(GPU_TYPES_BY_POOL.get(pool, set()) for pool in pools or []))
            if len(set(excluded)) != len(excluded) or not all(gpu_type.strip() in offered for gpu_type in excluded):
                problems.append(f"gpu.excludedTypes must be distinct GPU types of the pools, got {excluded!r}")
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
    volume_centres = dict(NETWORK_VOLUMES)
    volumes = body.get("networkVolumes", [])
    if not all(volume in volume_centres for volume in volumes):
        problems.append(f"networkVolumes must be the account's volumes, got {volumes!r}")
    elif len({volume_centres[volume] for volume in volumes}) != len(volumes):
        problems.append("networkVolumes: at most one volume per data center")
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
    at: float = dataclasses.field(default_factory=time.monotonic)


class FakeRunPodApi:
    """Templates and serverless endpoints of RunPod's REST API v2, in memory."""

    def __init__(self) -> None:
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.releases: dict[str, list[dict[str, Any]]] = {}  # endpoint id -> its releases, newest first
        self.requests: list[RecordedRequest] = []
        self.violations: list[str] = []
        # (status, content type, body) answered to every request, to test error handling
        self.forced_answer: tuple[int, str, str] | None = None
        # path -> status answered to GETs of it alone (a route that fails)
        self.failing_routes: dict[str, int] = {}
        # answered 429 to the next requests, one each: the Retry-After header's value, or None for none
        self.rate_limits: list[str | None] = []
        self._ids = itertools.count(1)

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        body = json.loads(raw) if raw else None
        self.requests.append(RecordedRequest(method, path, headers, body))
        if headers.get("Authorization") != f"Bearer {API_KEY}":
            return 401, _problem(401, "Unauthorized", "invalid bearer token")
        if method == "GET" and path in self.failing_routes:
            status = self.failing_routes[path]
            return status, _problem(status, "Failing", f"{path} fails in this test")
        if method == "GET" and path == "/v2/catalog/gpus":
            return 200, {"gpus": [_gpu_type(*row) for row in CATALOG_ROWS]}
        if method == "GET" and path == "/v2/network-volumes":
            return 200, {"networkVolumes": [
                {"id": volume, "name": f"weights-{centre}", "size": 100, "dataCenter": centre, "type": "STANDARD"}
                for volume, centre in NETWORK_VOLUMES
            ]}
        parts = path.strip("/").split("/")
        if method == "GET" and len(parts) == 4 and parts[1] == "serverless" and parts[3] == "releases":
            return self._releases(parts[2])
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
            if kind == "endpoint":
                self.releases[resource["id"]] = [_release(1, [])]
            return 201, resource
        changed = [key for key in ("image", "env", "disk") if key in body and body[key] != existing.get(key)]
        existing.update(body)
        if kind == "endpoint" and changed:  # a container change makes a release that rolls out
            self.releases[existing["id"]].insert(0, _release(len(self.releases[existing["id"]]) + 1, changed))
        return 200, existing

    def _releases(self, endpoint_id: str) -> tuple[int, Any]:
        if endpoint_id not in self.releases:
            return 404, _problem(404, "Not Found", f"endpoint {endpoint_id} not found")
        releases = self.releases[endpoint_id]
        on_latest = RUNNING_WORKERS if len(releases) == 1 else 0
        rollout = {"inProgress": on_latest < RUNNING_WORKERS, "workersOnLatest": on_latest,
                   "workersTotal": RUNNING_WORKERS, "percentOnLatest": 100 * on_latest // RUNNING_WORKERS}
        return 200, {"endpointVersion": releases[0]["version"], "rollout": rollout, "releases": releases}

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                extra_headers = {}
                if api.forced_answer is not None:
                    api.requests.append(RecordedRequest(self.command, self.path, dict(self.headers), raw))
                    status, content_type, text = api.forced_answer
                elif api.rate_limits:
                    api.requests.append(RecordedRequest(self.command, self.path, dict(self.headers), raw))
                    retry_after = api.rate_limits.pop(0)
                    if retry_after is not None:
                        extra_headers["Retry-After"] = retry_after
                    status, content_type = 429, "application/problem+json"
                    text = json.dumps(_problem(429, "Too Many Requests", "rate limit exceeded for the minute window"))
                else:
                    status, payload = api.handle(self.command, self.path, dict(self.headers), raw)
                    content_type = "application/json" if status < 400 else "application/problem+json"
                    text = json.dumps(payload)
                data = text.encode()
                self.send_response(status)
                for name, value in extra_headers.items():
                    self.send_header(name, value)
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


def _gpu_type(gpu_id: str, pool: str | None, memory: int) -> dict[str, Any]:
    return {"id": gpu_id, "name": gpu_id.removeprefix("NVIDIA "), "pool": pool, "manufacturer": "NVIDIA",
            "memory": memory, "secure": True, "community": False, "price": {"secure": 1.0, "community": 0.0},
            "maxCount": {"secure": 8, "community": 0}}


def _release(version: int, changed: list[str]) -> dict[str, Any]:
    return {"id": f"rel{version}", "version": version, "source": "MANUAL", "buildId": None, "createdByUserId": None,
            "workerCount": 0, "createdAt": "2026-09-01T12:00:00Z",
            "diff": [{"field": field, "old": None, "new": None} for field in changed]}


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeRunPodApi, str]]:
    api = FakeRunPodApi()
    with api.serving() as base_url:
        yield api, base_url


def tool_environ(base_url: str, api_key: str, env: dict[str, str]) -> dict[str, str]:
    return {
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


def run_program(base_url: str, *args: str, api_key: str = API_KEY, **env: str) -> subprocess.CompletedProcess[str]:
    """`python scripts/runpod_endpoint.py ARGS` in its own process, with only these variables."""
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, env=tool_environ(base_url, api_key, env),
        timeout=60,
    )


def run_tool(base_url: str, *args: str, api_key: str = API_KEY, **env: str) -> subprocess.CompletedProcess[str]:
    """The tool's main() in this process (the program's own code path, its environment given instead
    of read): a new interpreter per run cost a quarter of a CPU-second, and
    test_first_run_creates_the_template_then_the_endpoint runs the program itself."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            status = runpod_endpoint.main(list(args), tool_environ(base_url, api_key, env))
        except SystemExit as stopped:  # argparse refusing the arguments
            status = stopped.code if isinstance(stopped.code, int) else 2
    return subprocess.CompletedProcess([str(TOOL), *args], status, stdout.getvalue(), stderr.getvalue())


def calls(api: FakeRunPodApi) -> list[tuple[str, str]]:
    return [(request.method, request.path) for request in api.requests]


def writes(api: FakeRunPodApi) -> list[tuple[str, str]]:
    return [(method, path) for method, path in calls(api) if method != "GET"]


def body_sent(api: FakeRunPodApi, method: str, path: str) -> Any:
    """The body of the last such request."""
    return [request.body for request in api.requests if (request.method, request.path) == (method, path)][-1]


def test_first_run_creates_the_template_then_the_endpoint(fake_api):
    api, base_url = fake_api
    result = run_program(base_url, "--name", "talking-head", "--image", "docker.io/acme/th:0123abcd",
                         "--data-centers", "EU-RO-1,US-KS-2", "--network-volume", "vol42", "--hf-token-secret",
                         "hf_token")
    assert result.returncode == 0, result.stderr
    assert api.violations == []
    assert calls(api) == [("GET", "/v2/catalog/gpus"), ("GET", "/v2/network-volumes"),
                          ("GET", "/v2/templates"), ("POST", "/v2/templates"),
                          ("GET", "/v2/serverless"), ("POST", "/v2/serverless")]
    assert all(r.headers["Authorization"] == f"Bearer {API_KEY}" for r in api.requests)
    (template,) = api.templates.values()
    (endpoint,) = api.endpoints.values()
    assert result.stdout.strip() == endpoint["id"]

    # sized for the worker's longest speech (MAX_AUDIO_SECONDS, 300 s by default) on the slowest
    # pool: the 48 GB cards, which nothing measured, at the backend's conservative default
    speed = BACKENDS["wan-s2v"].deploy.speeds["quality"]
    at_default_size = speed.seconds_per_video_second * (832 * 480 / (speed.width * speed.height)) ** 1.5
    planned = math.ceil(BACKENDS["wan-s2v"].deploy.job_overhead_seconds + 300 * at_default_size)
    assert f"execution timeout {planned} s" in result.stderr
    assert template["name"] == "talking-head-template"
    assert template["image"] == "docker.io/acme/th:0123abcd"
    assert template["serverless"] is True and template["category"] == "NVIDIA"
    assert template["env"] == {
        "MODEL_BACKEND": "wan-s2v",
        "WAN_MEMORY_MODE": "fp8",
        "RUNPOD_INIT_TIMEOUT": "3600",
        "EXECUTION_TIMEOUT_SECONDS": str(planned),
        "BUCKET_NAME": "talking-head-out",
        "BUCKET_ENDPOINT_URL": "https://s3.example.invalid",
        "BUCKET_ACCESS_KEY_ID": "{{ RUNPOD_SECRET_bucket_key_id }}",
        "BUCKET_SECRET_ACCESS_KEY": "{{ RUNPOD_SECRET_bucket_secret }}",
        "HF_TOKEN": "{{ RUNPOD_SECRET_hf_token }}",
    }
    create = body_sent(api, "POST", "/v2/serverless")
    assert create["type"] == "QUEUE" and create["templateId"] == template["id"]
    assert create["gpu"] == {"pools": ["ADA_48_PRO", "AMPERE_48", "ADA_80_PRO"], "count": 1,
                             "allowedCudaVersions": [], "minCudaVersion": MIN_CUDA_VERSION}
    assert create["workers"] == {"min": 0, "max": 3, "idleTimeout": 60}
    assert create["scaling"] == {"type": "QUEUE_DELAY", "queueDelay": 4}
    assert create["flashboot"] == "FLASHBOOT"
    assert create["timeout"] == planned * 1000
    assert create["networkVolumes"] == ["vol42"]
    assert create["dataCenterIds"] == ["EU-RO-1", "US-KS-2"]
    assert "vol42 in EU-RO-1" in result.stderr
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
    endpoint_id = next(iter(api.endpoints))
    assert calls(api)[5:] == [("GET", "/v2/catalog/gpus"),
                              ("GET", "/v2/templates"), ("PATCH", f"/v2/templates/{next(iter(api.templates))}"),
                              ("GET", "/v2/serverless"), ("PATCH", f"/v2/serverless/{endpoint_id}"),
                              ("GET", f"/v2/serverless/{endpoint_id}/releases")]
    assert len(api.templates) == 1 and len(api.endpoints) == 1
    assert first.stdout == second.stdout
    (endpoint,) = api.endpoints.values()
    assert endpoint["image"] == "acme/th:bbbb2222"
    assert endpoint["workers"]["max"] == 5 and endpoint["workers"]["min"] == 1
    assert endpoint["flashboot"] == "OFF"
    assert "type" not in body_sent(api, "PATCH", f"/v2/serverless/{endpoint_id}")
    # the image changed: a new release rolls out as workers are replaced
    assert "rollout of release 2 (changed image): 0 of 2 workers run it (0 %)" in second.stderr
    assert "replaces the endpoint's environment" not in second.stderr  # nothing in it changed


def test_two_names_make_two_endpoints_for_an_ab_test(fake_api):
    api, base_url = fake_api
    for name, mode in (("th-a", "fp8"), ("th-b", "full")):
        result = run_tool(base_url, "--name", name, "--image", "acme/th:cafe", "--memory-mode", mode)
        assert result.returncode == 0, result.stderr
    assert sorted(e["name"] for e in api.endpoints.values()) == ["th-a", "th-b"]
    assert sorted(t["name"] for t in api.templates.values()) == ["th-a-template", "th-b-template"]
    pools = {e["name"]: e["gpu"]["pools"] for e in api.endpoints.values()}
    assert pools == {"th-a": ["ADA_48_PRO", "AMPERE_48", "ADA_80_PRO"],
                     "th-b": ["ADA_80_PRO", "AMPERE_80", "BLACKWELL_96"]}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("full", ("ADA_80_PRO", "AMPERE_80", "BLACKWELL_96")),
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
    assert "RUNPOD_INIT_TIMEOUT" not in template["env"]  # lite starts in seconds: RunPod's default fits
    assert ("GET", "/v2/catalog/gpus") not in calls(api)
    create = body_sent(api, "POST", "/v2/serverless")
    assert "gpu" not in create
    assert create["cpu"] == [{"id": "cpu5c", "vcpuCount": 4}, {"id": "cpu3c", "vcpuCount": 4}]
    assert create["timeout"] == int(template["env"]["EXECUTION_TIMEOUT_SECONDS"]) * 1000
    assert 300 < create["timeout"] / 1000 < 3600  # five minutes of speech on a CPU, not a GPU's hour


def test_flags_override_the_right_sizing_and_scaling(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", "--gpu-pools", "HOPPER_141,ADA_80_PRO",
                      "--gpu-count", "2", "--scaler", "request-count", "--scaler-value", "1",
                      "--execution-timeout", "900")
    assert result.returncode == 0, result.stderr
    assert api.violations == []
    create = body_sent(api, "POST", "/v2/serverless")
    assert create["gpu"]["pools"] == ["HOPPER_141", "ADA_80_PRO"] and create["gpu"]["count"] == 2
    assert create["scaling"] == {"type": "REQUEST_COUNT", "requestCount": 1}
    assert "idleTimeout" not in create["workers"]
    assert create["timeout"] == 900_000
    assert "HF_TOKEN" not in body_sent(api, "POST", "/v2/templates")["env"]


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
    assert writes(api) == []


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
        (["--image", "acme/th:cafe", "--exclude-gpu", "-NVIDIA L40"], "without the Hub's '-'"),
        (["--image", "acme/th:cafe", "--network-volume", "vol42,vol42"], "names a volume twice"),
        (["--image", "acme/th:cafe", "--backend", "lite", "--exclude-gpu", "NVIDIA L40"], "GPU endpoints"),
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
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", BUCKET_SECRET_ACCESS_KEY="")
    assert result.returncode == 2
    assert "half configured" in result.stderr and "BUCKET_SECRET_ACCESS_KEY" in result.stderr
    assert api.requests == []


@pytest.mark.skipif(not os.environ.get("RUNPOD_DOCS_DIR"), reason="set RUNPOD_DOCS_DIR to a runpod/docs checkout")
def test_requests_validate_against_the_published_openapi_schema(fake_api):
    api, base_url = fake_api
    for args in (["--name", "th"], ["--name", "th", "--workers-max", "6", "--exclude-gpu", "NVIDIA L40"],
                 ["--name", "th-cpu", "--backend", "lite", "--network-volume", "vol42,vol77"]):
        result = run_tool(base_url, *args, "--image", "acme/th:cafe")
        assert result.returncode == 0, result.stderr
    assert api.violations == []
    assert published_schema_violations("CreateEndpointRequest", {"name": "x", "type": "QUEUE", "bogus": 1})


# --- The endpoint's default mode and start timeout ----------------------------------------------


def test_default_mode_is_handed_on_and_a_mode_the_backend_lacks_is_refused(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", DEFAULT_MODE="fast")
    assert result.returncode == 0, result.stderr
    (template,) = api.templates.values()
    assert template["env"]["DEFAULT_MODE"] == "fast"
    # fast mode on the fp8 sizing's 48 GB first choices: warned, not refused (an estimate)
    assert "DEFAULT_MODE=fast needs about 80 GB" in result.stderr and "ADA_48_PRO, AMPERE_48" in result.stderr
    refused = run_tool(
        base_url, "--name", "th-lite", "--image", "acme/th:cafe", "--backend", "lite", DEFAULT_MODE="fast"
    )
    assert refused.returncode == 2
    assert "DEFAULT_MODE='fast' is not a mode of the lite backend; set it to one of quality" in refused.stderr
    assert len(api.templates) == 1


def test_every_backend_with_weights_outlasts_a_workers_wait_for_another_workers_download():
    from model.weights import LOCK_WAIT_SECONDS
    from scripts.endpoint_requests import worker_env

    for name, entry in BACKENDS.items():
        if not entry.weights:
            continue
        # RunPod's own default is 7 minutes; a cold start downloads the weights first
        timeout = int(worker_env(name, None, {}, None)["RUNPOD_INIT_TIMEOUT"])
        assert LOCK_WAIT_SECONDS + 5 * 60 <= timeout == entry.deploy.init_timeout_seconds, name


# --- Following the platform: catalog, excluded GPUs, volumes, 429, releases, environment ---------


def test_a_pool_the_catalog_lacks_is_refused_before_anything_changes(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", "--gpu-pools", "ADA_4090,ADA_24")
    assert result.returncode == 2
    assert "GPU pool ADA_4090 is not in RunPod's catalog" in result.stderr and "ADA_80_PRO" in result.stderr
    assert "fix --gpu-pools" in result.stderr and "Traceback" not in result.stderr
    assert calls(api) == [("GET", "/v2/catalog/gpus")]


def test_a_pool_only_the_catalog_knows_is_used_with_a_note(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", "--gpu-pools", "FUTURE_64,HOPPER_141")
    assert result.returncode == 0, result.stderr
    assert "FUTURE_64 is in RunPod's catalog but not in this tool's table" in result.stderr
    assert body_sent(api, "POST", "/v2/serverless")["gpu"]["pools"] == ["FUTURE_64", "HOPPER_141"]


def test_without_the_catalog_an_unknown_pool_is_only_warned_about(fake_api):
    api, base_url = fake_api
    api.failing_routes["/v2/catalog/gpus"] = 503
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", "--gpu-pools", "FUTURE_64")
    assert result.returncode == 0, result.stderr
    assert "warning: the GPU pools were not checked against RunPod's catalog" in result.stderr
    assert "FUTURE_64 is not a pool this tool knows" in result.stderr
    assert api.violations == [] and len(api.endpoints) == 1


def test_excluded_gpu_types_go_with_the_pools_on_create_and_update(fake_api):
    api, base_url = fake_api
    args = ["--name", "th", "--image", "acme/th:cafe", "--exclude-gpu", "NVIDIA L40, NVIDIA A40"]
    assert run_tool(base_url, *args).returncode == 0
    result = run_tool(base_url, *args, "--workers-max", "4")
    assert result.returncode == 0, result.stderr
    assert api.violations == []
    endpoint_id = next(iter(api.endpoints))
    for body in (body_sent(api, "POST", "/v2/serverless"), body_sent(api, "PATCH", f"/v2/serverless/{endpoint_id}")):
        assert body["gpu"]["pools"] == ["ADA_48_PRO", "AMPERE_48", "ADA_80_PRO"]
        assert body["gpu"]["excludedTypes"] == ["NVIDIA L40", "NVIDIA A40"]
    assert "except NVIDIA L40, NVIDIA A40" in result.stderr


def test_an_excluded_type_outside_the_pools_is_refused_before_anything_changes(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", "--exclude-gpu", "NVIDIA H200")
    assert result.returncode == 2
    assert ("--exclude-gpu 'NVIDIA H200' is not a GPU type of the pools ADA_48_PRO, AMPERE_48, ADA_80_PRO"
            in result.stderr)
    assert "NVIDIA L40S" in result.stderr and writes(api) == []


def test_one_network_volume_per_data_centre(fake_api):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", "--network-volume", "vol42,vol77")
    assert result.returncode == 0, result.stderr
    assert body_sent(api, "POST", "/v2/serverless")["networkVolumes"] == ["vol42", "vol77"]
    assert "vol42 in EU-RO-1, vol77 in US-KS-2" in result.stderr and api.violations == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--network-volume", "vol42,vol43"], "network volumes vol42 and vol43 are both in EU-RO-1"),
        (["--network-volume", "vol99"], "network volume vol99 is not one of this account's (vol42 (EU-RO-1)"),
        (["--network-volume", "vol77", "--data-centers", "EU-RO-1"],
         "leaves out US-KS-2, where network volume vol77 is"),
    ],
)
def test_network_volumes_the_platform_would_refuse_are_refused_first(fake_api, args, message):
    api, base_url = fake_api
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert writes(api) == []


def test_a_429_is_retried_after_the_wait_runpod_asks_for(fake_api):
    api, base_url = fake_api
    api.rate_limits = ["1"]
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe")
    assert result.returncode == 0, result.stderr
    first, second = api.requests[:2]
    assert (first.method, first.path) == (second.method, second.path) == ("GET", "/v2/catalog/gpus")
    assert second.at - first.at >= 1.0
    assert "rate-limiting this key (429)" in result.stderr and "again in 1 s (retry 1 of 5)" in result.stderr
    assert len(api.endpoints) == 1


def test_a_429_without_retry_after_backs_off_doubling(fake_api):
    api, base_url = fake_api
    api.rate_limits = [None, None]
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe")
    assert result.returncode == 0, result.stderr
    times = [request.at for request in api.requests[:3]]
    assert times[1] - times[0] >= 1.0 and times[2] - times[1] >= 2.0


def test_a_429_that_does_not_end_gives_up_with_a_clear_message(fake_api):
    api, base_url = fake_api
    api.rate_limits = ["0"] * 6 + ["0"] * 6  # the catalog check, then the first write's lookup
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe")
    assert result.returncode == 1
    assert "failed with 429" in result.stderr and "gave up after 6 tries" in result.stderr
    assert "rate limit exceeded for the minute window" in result.stderr
    assert writes(api) == [] and "Traceback" not in result.stderr


def test_a_redeploy_names_the_console_variables_it_removes_or_changes(fake_api):
    api, base_url = fake_api
    assert run_tool(base_url, "--name", "th", "--image", "acme/th:cafe").returncode == 0
    (endpoint,) = api.endpoints.values()
    endpoint["env"].update({"CONSOLE_ONLY_SECRET": "console-value-never-printed", "MAX_AUDIO_SECONDS": "60"})
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:cafe", MAX_AUDIO_SECONDS="120")
    assert result.returncode == 0, result.stderr
    assert "replaces the endpoint's environment variables, including any set in the console" in result.stderr
    # the timeout follows the longest speech
    assert "removes CONSOLE_ONLY_SECRET and changes EXECUTION_TIMEOUT_SECONDS, MAX_AUDIO_SECONDS" in result.stderr
    assert "console-value-never-printed" not in result.stderr
    assert "CONSOLE_ONLY_SECRET" not in endpoint["env"] and endpoint["env"]["MAX_AUDIO_SECONDS"] == "120"
    # the environment changed: a release that rolls out
    assert "rollout of release 2 (changed env)" in result.stderr


def test_an_unreadable_rollout_is_a_warning_after_a_successful_update(fake_api):
    api, base_url = fake_api
    assert run_tool(base_url, "--name", "th", "--image", "acme/th:aaaa").returncode == 0
    api.failing_routes[f"/v2/serverless/{next(iter(api.endpoints))}/releases"] = 500
    result = run_tool(base_url, "--name", "th", "--image", "acme/th:bbbb")
    assert result.returncode == 0, result.stderr
    assert "warning: the rollout could not be read" in result.stderr and "Releases tab" in result.stderr
    assert result.stdout.strip() == next(iter(api.endpoints))


def test_the_tools_gpu_classes_are_catalog_pools_of_their_memory_smallest_first():
    from scripts.endpoint_compute import GPU_CLASSES, KNOWN_GPU_POOLS

    memories = [gpu_class.memory_gb for gpu_class in GPU_CLASSES]
    assert memories == sorted(set(memories))
    for gpu_class in GPU_CLASSES:
        for pool in gpu_class.pools:
            assert {memory for _, p, memory in CATALOG_ROWS if p == pool} == {gpu_class.memory_gb}, pool
    assert {"ADA_32_PRO", "BLACKWELL_96", "BLACKWELL_180"} <= set(KNOWN_GPU_POOLS)
