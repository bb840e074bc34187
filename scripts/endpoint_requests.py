"""The endpoint a deployment asks for, and the RunPod API v2 request bodies that make it so.

Field names and rules come from runpod/docs `api-reference-v2/openapi.json` (commit a900806e):
`CreateTemplateRequest`/`UpdateTemplateRequest` and `CreateEndpointRequest`/`UpdateEndpointRequest`.
The template holds the container (image, disk, environment); the endpoint holds the compute and
scaling and takes its container settings from the template on every create and update, because in
v2 an endpoint keeps no link to the template it was made from.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from handler.settings import MAX_EXECUTION_TIMEOUT_SECONDS, MIN_EXECUTION_TIMEOUT_SECONDS
from model.declaration import GpuNeed
from model.registry import BACKENDS
from scripts.endpoint_compute import Compute

# The worker's settings (CONTRACT.md) that the deployer's environment hands on to the endpoint.
PASSED_THROUGH_ENV = (
    "BUCKET_ENDPOINT_URL",
    "BUCKET_ACCESS_KEY_ID",
    "BUCKET_SECRET_ACCESS_KEY",
    "BUCKET_NAME",
    "URL_EXPIRY_SECONDS",
    "UPLOAD_TIMEOUT_SECONDS",
    "MAX_AUDIO_SECONDS",
    "MAX_INPUT_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_VIDEO_BYTES",
    "MAX_VIDEO_SECONDS",
    "MAX_VIDEO_PIXELS",
    "MAX_INLINE_RESULT_BYTES",
    "FETCH_TIMEOUT_SECONDS",
    "PRESET_AVATARS_DIR",
    "DEFAULT_MODE",
    "STREAM_RESULTS",
    "LIVE_MAX_SESSION_SECONDS",
    "LIVE_IDLE_TIMEOUT_SECONDS",
)
# The modes each backend offers (its declaration's `modes`): the worker refuses to start with a
# DEFAULT_MODE its backend lacks, so the tool refuses to deploy one.
BACKEND_MODES = {name: entry.modes for name, entry in BACKENDS.items()}
# The worker refuses to start with some but not all of these (handler/settings.py).
# (BUCKET_NAME may be left out when BUCKET_ENDPOINT_URL names the bucket in its host or path.)
BUCKET_REQUIRED_TOGETHER = ("BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
# The CUDA version of the image's torch: PyPI's Linux wheel of the torch that pyproject.toml pins
# declares NVIDIA's CUDA 13.0 wheels (tests/test_image_cuda.py reads that from PyPI). Hosts whose
# driver supports an older CUDA (NVIDIA drivers before 580) cannot run it.
MIN_CUDA_VERSION = "13.0"
FLASHBOOT_MODES = {"off": "OFF", "on": "FLASHBOOT", "priority": "PRIORITY_FLASHBOOT"}
SCALERS = {"queue-delay": "QUEUE_DELAY", "request-count": "REQUEST_COUNT"}
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def secret_reference(secret_name: str) -> str:
    """How a template's environment refers to a RunPod secret (pods/templates/secrets.mdx)."""
    return "{{ RUNPOD_SECRET_" + secret_name + " }}"


def worker_env(
    backend: str,
    memory_mode: str | None,
    deployer_env: Mapping[str, str],
    hf_token_secret: str | None,
    execution_timeout_seconds: int | None = None,
) -> dict[str, str]:
    """The endpoint's environment: the backend, the bucket and limits, and HF_TOKEN by reference.

    A literal HF_TOKEN in the deployer's environment is never sent: it is only for baking weights
    into the image. The worker gets the RunPod secret named `hf_token_secret` instead.
    """
    entry = BACKENDS[backend]
    env = {"MODEL_BACKEND": backend}
    if memory_mode and isinstance(entry.deploy.compute, GpuNeed):
        env[entry.deploy.compute.memory_mode_setting] = memory_mode
    # RunPod marks a worker unhealthy when its start takes longer than 7 minutes unless
    # RUNPOD_INIT_TIMEOUT (seconds) says otherwise (runpod/docs serverless/development/optimization.mdx)
    if entry.deploy.init_timeout_seconds is not None:
        env["RUNPOD_INIT_TIMEOUT"] = str(entry.deploy.init_timeout_seconds)
    env.update({name: deployer_env[name] for name in PASSED_THROUGH_ENV if deployer_env.get(name)})
    if execution_timeout_seconds is not None:  # what the worker sizes jobs against (model/speed.py)
        env["EXECUTION_TIMEOUT_SECONDS"] = str(execution_timeout_seconds)
    missing = [name for name in BUCKET_REQUIRED_TOGETHER if name not in env]
    if 0 < len(missing) < len(BUCKET_REQUIRED_TOGETHER):
        raise ValueError(f"the output bucket is half configured: set {', '.join(missing)} as well, or none of them")
    mode = env.get("DEFAULT_MODE")
    if mode is not None and mode not in BACKEND_MODES[backend]:
        raise ValueError(
            f"DEFAULT_MODE={mode!r} is not a mode of the {backend} backend; set it to one of "
            f"{', '.join(BACKEND_MODES[backend])}, or leave it empty for {BACKEND_MODES[backend][0]}"
        )
    if hf_token_secret:
        if not _SECRET_NAME.match(hf_token_secret):
            raise ValueError(
                f"RunPod secret name {hf_token_secret!r} may only hold letters, digits, '_', '.' and '-'"
            )
        env["HF_TOKEN"] = secret_reference(hf_token_secret)
    return env


@dataclasses.dataclass(frozen=True)
class Scaling:
    scaler: str  # QUEUE_DELAY: seconds a job may wait; REQUEST_COUNT: jobs per worker
    value: float


@dataclasses.dataclass(frozen=True)
class DeploymentSpec:
    name: str
    image: str
    compute: Compute
    env: dict[str, str]
    gpu_count: int = 1
    workers_min: int = 0
    workers_max: int = 3
    idle_timeout_seconds: int = 5
    scaling: Scaling = Scaling("QUEUE_DELAY", 4)
    flashboot: str = "FLASHBOOT"
    execution_timeout_seconds: int = 600
    container_disk_gb: int = 20
    network_volume_ids: tuple[str, ...] = ()
    data_center_ids: tuple[str, ...] = ()
    registry_auth_id: str | None = None
    # GPU type ids (the catalog's `id`, e.g. "NVIDIA L40") taken out of the pools
    excluded_gpu_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("the endpoint name is empty")
        if not self.image or self.image.endswith(":latest") or ":" not in self.image.rsplit("/", 1)[-1]:
            problems.append(f"image {self.image!r} needs an explicit tag other than latest (the git commit)")
        if not 0 <= self.workers_min <= self.workers_max:
            problems.append(f"workers must satisfy 0 <= min ({self.workers_min}) <= max ({self.workers_max})")
        if not 1 <= self.idle_timeout_seconds <= 3600:
            problems.append(f"idle timeout {self.idle_timeout_seconds} s is outside 1..3600 s")
        if self.scaling.scaler == "QUEUE_DELAY" and self.scaling.value < 0.5:
            problems.append(f"queue-delay scaler value {self.scaling.value} is below 0.5 s")
        if self.scaling.scaler == "REQUEST_COUNT" and (
            self.scaling.value < 1 or self.scaling.value != int(self.scaling.value)
        ):
            problems.append(f"request-count scaler value {self.scaling.value} is not a whole number >= 1")
        if self.gpu_count < 1:
            problems.append(f"GPU count {self.gpu_count} is below 1")
        if not MIN_EXECUTION_TIMEOUT_SECONDS <= self.execution_timeout_seconds <= MAX_EXECUTION_TIMEOUT_SECONDS:
            problems.append(f"execution timeout {self.execution_timeout_seconds} s is outside 5 s..7 days")
        if self.container_disk_gb < 1:
            problems.append(f"container disk {self.container_disk_gb} GB is below 1 GB")
        if len(set(self.network_volume_ids)) != len(self.network_volume_ids):
            problems.append(f"--network-volume names a volume twice: {', '.join(self.network_volume_ids)}")
        if self.excluded_gpu_types and self.compute.is_cpu:
            problems.append("--exclude-gpu is for GPU endpoints; this one runs on CPUs")
        for gpu_type in self.excluded_gpu_types:
            if gpu_type.startswith("-"):
                problems.append(
                    f"--exclude-gpu takes GPU type ids without the Hub's '-': {gpu_type[1:]!r}, not {gpu_type!r}"
                )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def template_name(self) -> str:
        return f"{self.name}-template"


def template_body(spec: DeploymentSpec) -> dict[str, Any]:
    """Create and update alike: every field is stated, so an update leaves nothing stale."""
    body: dict[str, Any] = {
        "name": spec.template_name,
        "image": spec.image,
        "serverless": True,
        "category": "CPU" if spec.compute.is_cpu else "NVIDIA",
        "disk": spec.container_disk_gb,
        "env": dict(spec.env),
        "ports": [],
        # Both default to true; a serverless worker has no use for sshd or Jupyter.
        "startSsh": False,
        "startJupyter": False,
    }
    if spec.registry_auth_id:
        body["registry"] = spec.registry_auth_id
    return body


def endpoint_create_body(spec: DeploymentSpec, template_id: str) -> dict[str, Any]:
    return {"type": "QUEUE", **_endpoint_settings(spec, template_id)}


def endpoint_update_body(spec: DeploymentSpec, template_id: str) -> dict[str, Any]:
    # The routing type cannot be changed, so the update schema has no `type`.
    return _endpoint_settings(spec, template_id)


def _endpoint_settings(spec: DeploymentSpec, template_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"name": spec.name, "templateId": template_id}
    if spec.compute.is_cpu:
        body["cpu"] = [{"id": cpu.flavor, "vcpuCount": cpu.vcpu_count} for cpu in spec.compute.cpu]
    else:
        body["gpu"] = {
            "pools": list(spec.compute.gpu_pools),
            "count": spec.gpu_count,
            # An explicit empty set beside the floor: it clears any exact set, which RunPod
            # would otherwise refuse next to a floor, and stops the template seeding one.
            "allowedCudaVersions": [],
            "minCudaVersion": MIN_CUDA_VERSION,
        }
        # Stated with the pools on every update: a PATCH that sends pools without them clears them.
        if spec.excluded_gpu_types:
            body["gpu"]["excludedTypes"] = list(spec.excluded_gpu_types)
    workers: dict[str, Any] = {"min": spec.workers_min, "max": spec.workers_max}
    # RunPod rejects an idle timeout on a queue endpoint that scales on request count.
    if spec.scaling.scaler != "REQUEST_COUNT":
        workers["idleTimeout"] = spec.idle_timeout_seconds
    body["workers"] = workers
    if spec.scaling.scaler == "REQUEST_COUNT":
        body["scaling"] = {"type": "REQUEST_COUNT", "requestCount": int(spec.scaling.value)}
    else:
        body["scaling"] = {"type": "QUEUE_DELAY", "queueDelay": spec.scaling.value}
    body["flashboot"] = spec.flashboot
    body["timeout"] = spec.execution_timeout_seconds * 1000
    # Always stated, empty included: the command line describes the whole endpoint, so a
    # data centre or volume dropped from it is dropped from the endpoint too.
    body["networkVolumes"] = list(spec.network_volume_ids)
    body["dataCenterIds"] = list(spec.data_center_ids)
    return body
