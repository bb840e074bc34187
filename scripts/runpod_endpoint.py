"""Create or update the RunPod template and serverless endpoint of the talking-head worker.

    python scripts/runpod_endpoint.py --name talking-head --image REGISTRY/REPO:TAG [options]

Running it again with the same --name updates the template and the endpoint in place; it never
makes a second one. The GPU pools follow from --backend and --memory-mode (the smallest GPU class
that fits first, larger ones as fallbacks) unless --gpu-pools is given; a CPU backend gets a CPU
endpoint. Compute, timeouts and disk are the backend's declared deploy profile (model/registry.py).
--dry-run prints every request instead of sending it and needs no API key.

Before it changes anything it checks the GPU pools and --exclude-gpu types against RunPod's
catalog (a pool the catalog lacks is refused; when the catalog cannot be read, a pool this tool
does not know only gets a warning) and the network volumes against the account's (at most one per
data centre). An update replaces the endpoint's whole environment, so the tool names the variables
(set in the console, say) that it removes or changes, and afterwards reports how far the new
release has rolled out. Requests refused with 429 are retried after the wait RunPod asks for.

Reads RUNPOD_API_KEY, RUNPOD_API_BASE (default https://api.runpod.io) and the worker settings it
hands on to the endpoint (BUCKET_*, URL_EXPIRY_SECONDS, MAX_AUDIO_SECONDS, MAX_INPUT_BYTES,
PRESET_AVATARS_DIR, DEFAULT_MODE). Progress goes to stderr; stdout gets only the endpoint id.
Exit status: 0 done, 1 the RunPod API refused or failed, 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from handler.settings import WORKER_SETTINGS
from model.declaration import GpuNeed, SettingValueError
from model.registry import DEFAULT_BACKEND, declaration_of
from scripts.endpoint_compute import (
    BACKENDS,
    GPU_CLASSES,
    GPU_NEEDS,
    KNOWN_GPU_POOLS,
    MEMORY_MODES,
    Compute,
    compute_for,
    parse_cpu_configs,
    parse_gpu_pools,
    parse_list,
    planned_execution_timeout,
)
from scripts.endpoint_requests import (
    FLASHBOOT_MODES,
    PASSED_THROUGH_ENV,
    SCALERS,
    DeploymentSpec,
    Scaling,
    endpoint_create_body,
    endpoint_update_body,
    template_body,
    worker_env,
)
from scripts.runpod_rest import (
    DEFAULT_API_BASE,
    RunPodApiError,
    RunPodRest,
    format_request,
    is_secret_name,
    is_secret_reference,
)

DRY_RUN_TEMPLATE_ID = "<template-id>"
DRY_RUN_ENDPOINT_ID = "<endpoint-id>"
# past a day, the deploy tool says what makes the execution timeout that long
LONG_EXECUTION_TIMEOUT_SECONDS = 24 * 3600
# the worker's own reading of MAX_AUDIO_SECONDS: the longest speech a job may send
MAX_AUDIO_SETTING = next(setting for setting in WORKER_SETTINGS if setting.env == "MAX_AUDIO_SECONDS")



def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser(exit_on_error: bool = True) -> argparse.ArgumentParser:
    """This tool's options; without exit_on_error a bad value raises argparse.ArgumentError (scripts/deploy.py)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        exit_on_error=exit_on_error,
    )
    parser.add_argument("--name", required=True, help="endpoint name; the template is NAME-template")
    parser.add_argument("--image", required=True, help="image reference with its commit tag")
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULT_BACKEND)
    defaults = ", ".join(f"{name} {need.default_memory_mode}" for name, need in GPU_NEEDS.items())
    parser.add_argument(
        "--memory-mode",
        choices=MEMORY_MODES,
        help=f"GPU backends only: GPU memory mode (default: {defaults})",
    )
    parser.add_argument("--gpu-pools", help="GPU pools in priority order, e.g. ADA_80_PRO,AMPERE_80")
    parser.add_argument("--cpu", help="CPU endpoint: FLAVOR:VCPUS in priority order, e.g. cpu5c:4")
    parser.add_argument("--gpu-count", type=int, default=1, help="GPUs per worker (default 1)")
    parser.add_argument("--workers-min", type=int, default=0, help="always-on workers (default 0)")
    parser.add_argument("--workers-max", type=int, default=3, help="most workers (default 3)")
    parser.add_argument("--idle-timeout", type=int, help="seconds an idle worker stays up")
    parser.add_argument("--scaler", choices=tuple(SCALERS), default="queue-delay")
    parser.add_argument(
        "--scaler-value",
        type=float,
        default=4,
        help="queue-delay: seconds a job may wait; request-count: jobs per worker (default 4)",
    )
    parser.add_argument("--flashboot", choices=tuple(FLASHBOOT_MODES), default="on")
    parser.add_argument("--execution-timeout", type=int, help="seconds one job may run")
    parser.add_argument("--container-disk", type=int, help="container disk in GB")
    parser.add_argument(
        "--network-volume",
        default="",
        help="network volume ids, at most one per data centre, e.g. vol1,vol2; each worker mounts the one "
        "of its data centre at /runpod-volume",
    )
    parser.add_argument("--data-centers", default="", help="data centre ids, e.g. EU-RO-1,US-KS-2")
    parser.add_argument(
        "--exclude-gpu",
        default="",
        help="GPU types to leave out of the pools, as RunPod's catalog names them, e.g. 'NVIDIA L40,NVIDIA A40'",
    )
    parser.add_argument("--registry-auth", help="RunPod registry credential id, for a private image")
    parser.add_argument(
        "--hf-token-secret",
        help="RunPod secret holding a Hugging Face token; the endpoint gets a reference to it",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    return parser


def spec_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> DeploymentSpec:
    """Raises ValueError naming the flag and the fix."""
    entry = declaration_of(args.backend)
    need = entry.deploy.compute
    if not isinstance(need, GpuNeed) and (args.memory_mode or args.gpu_pools):
        raise ValueError(f"--memory-mode and --gpu-pools are for GPU backends; {args.backend} runs on a CPU endpoint")
    if isinstance(need, GpuNeed) and args.cpu:
        raise ValueError(f"--cpu is for CPU backends; {args.backend} needs a GPU")
    if isinstance(need, GpuNeed) and args.memory_mode and args.memory_mode not in need.memory_gb:
        raise ValueError(
            f"--memory-mode {args.memory_mode} is not a memory mode of {args.backend}; "
            f"choose one of {', '.join(need.memory_gb)}"
        )
    memory_mode = (args.memory_mode or need.default_memory_mode) if isinstance(need, GpuNeed) else None
    compute = compute_for(args.backend, memory_mode)
    if args.gpu_pools:
        compute = Compute(gpu_pools=parse_gpu_pools(args.gpu_pools))
    if args.cpu:
        compute = Compute(cpu=parse_cpu_configs(args.cpu))
    # The execution timeout fits the longest speech the worker accepts in the endpoint's default
    # mode on its slowest GPU; the worker refuses, before rendering, a job that would not fit it.
    # (a DEFAULT_MODE the backend lacks is refused by worker_env, below)
    asked = environ.get("DEFAULT_MODE", "")
    mode = asked if asked in entry.modes else entry.modes[0]
    try:
        max_audio_seconds = MAX_AUDIO_SETTING.read(environ)
    except SettingValueError as error:
        raise ValueError(str(error)) from None
    planned = planned_execution_timeout(args.backend, compute, mode, max_audio_seconds)
    profile = entry.deploy
    if args.container_disk is not None:
        disk = args.container_disk
    elif parse_list(args.network_volume):
        disk = profile.disk_gb_with_volume
    else:
        disk = profile.disk_gb_without_volume
    return DeploymentSpec(
        name=args.name,
        image=args.image,
        compute=compute,
        env=worker_env(args.backend, memory_mode, environ, args.hf_token_secret or None,
                       _given_or(args.execution_timeout, planned)),
        gpu_count=args.gpu_count,
        workers_min=args.workers_min,
        workers_max=args.workers_max,
        idle_timeout_seconds=_given_or(args.idle_timeout, profile.idle_timeout_seconds),
        scaling=Scaling(SCALERS[args.scaler], args.scaler_value),
        flashboot=FLASHBOOT_MODES[args.flashboot],
        execution_timeout_seconds=_given_or(args.execution_timeout, planned),
        container_disk_gb=disk,
        network_volume_ids=parse_list(args.network_volume),
        data_center_ids=parse_list(args.data_centers),
        registry_auth_id=args.registry_auth or None,
        excluded_gpu_types=parse_list(args.exclude_gpu),
    )


def _given_or(value: int | None, default: int) -> int:
    return default if value is None else value


def print_plan(spec: DeploymentSpec, api_base: str) -> None:
    base = api_base.rstrip("/")
    steps: list[tuple[str, str, str, dict[str, Any] | None]] = []
    if not spec.compute.is_cpu:
        steps.append(
            ("Check the GPU pools and excluded types against RunPod's catalog", "GET", "/v2/catalog/gpus", None)
        )
    if spec.network_volume_ids:
        steps.append(
            ("Check the network volumes: this account's, one per data centre", "GET", "/v2/network-volumes", None)
        )
    steps += [
        (f"Find the template named {spec.template_name!r}", "GET", "/v2/templates", None),
        ("If there is none, create it", "POST", "/v2/templates", template_body(spec)),
        ("If there is one, update it", "PATCH", f"/v2/templates/{DRY_RUN_TEMPLATE_ID}", template_body(spec)),
        (f"Find the endpoint named {spec.name!r}", "GET", "/v2/serverless", None),
        ("If there is none, create it", "POST", "/v2/serverless", endpoint_create_body(spec, DRY_RUN_TEMPLATE_ID)),
        (
            "If there is one, update it (its environment becomes exactly the template's: variables set in "
            "the console and not here are removed)",
            "PATCH",
            f"/v2/serverless/{DRY_RUN_ENDPOINT_ID}",
            endpoint_update_body(spec, DRY_RUN_TEMPLATE_ID),
        ),
        ("After an update, report how far the new release has rolled out", "GET",
         f"/v2/serverless/{DRY_RUN_ENDPOINT_ID}/releases", None),
    ]
    log("Dry run: these are the requests, none is sent.")
    for title, method, path, body in steps:
        log(f"\n# {title}\n{format_request(method, base + path, body)}")


def deploy(api: RunPodRest, spec: DeploymentSpec) -> dict[str, Any]:
    """Check, then create or update the template, then the endpoint; returns the endpoint.

    Raises ValueError for settings RunPod's own data refutes, before anything is changed.
    """
    check_gpus(api, spec)
    check_network_volumes(api, spec)
    template = _find_one(api.get("/v2/templates").get("templates", []), spec.template_name, "template")
    if template is None:
        template = api.post("/v2/templates", template_body(spec))
        log(f"created template {spec.template_name} ({template['id']})")
    else:
        if not template.get("serverless", True):
            raise RunPodApiError(
                f"template {spec.template_name!r} ({template['id']}) is a Pod template; rename or "
                "delete it, or deploy under another --name."
            )
        template = api.patch(f"/v2/templates/{template['id']}", template_body(spec))
        log(f"updated template {spec.template_name} ({template['id']})")

    endpoint = _find_one(api.get("/v2/serverless").get("endpoints", []), spec.name, "endpoint")
    if endpoint is None:
        endpoint = api.post("/v2/serverless", endpoint_create_body(spec, template["id"]))
        log(f"created endpoint {spec.name} ({endpoint['id']})")
        return endpoint
    was_cpu = bool(endpoint.get("cpu")) and not endpoint.get("gpu")
    if was_cpu != spec.compute.is_cpu:
        kinds = ("a CPU", "a GPU") if was_cpu else ("a GPU", "a CPU")
        raise RunPodApiError(
            f"endpoint {spec.name!r} ({endpoint['id']}) is {kinds[0]} endpoint and RunPod cannot "
            f"turn it into {kinds[1]} one; deploy under another --name."
        )
    warn_about_replaced_env(endpoint.get("env") or {}, spec.env)
    endpoint = api.patch(f"/v2/serverless/{endpoint['id']}", endpoint_update_body(spec, template["id"]))
    log(f"updated endpoint {spec.name} ({endpoint['id']})")
    report_rollout(api, endpoint["id"])
    return endpoint


def check_gpus(api: RunPodRest, spec: DeploymentSpec) -> None:
    """The pools and excluded GPU types against RunPod's catalog; a warning when it cannot be read."""
    if spec.compute.is_cpu:
        return
    pools = spec.compute.gpu_pools
    try:
        catalog = api.get("/v2/catalog/gpus").get("gpus") or []
    except RunPodApiError as error:
        unknown = [pool for pool in pools if pool not in KNOWN_GPU_POOLS]
        log(f"warning: the GPU pools were not checked against RunPod's catalog ({error})"
            + (f"; {', '.join(unknown)} is not a pool this tool knows: check the spelling" if unknown else ""))
        return
    types_by_pool: dict[str, set[str]] = {}
    for gpu in catalog:
        if gpu.get("pool"):
            types_by_pool.setdefault(gpu["pool"], set()).add(str(gpu.get("id", "")).strip())
    absent = [pool for pool in pools if pool not in types_by_pool]
    if absent:
        raise ValueError(
            f"GPU pool {', '.join(absent)} is not in RunPod's catalog (GET /v2/catalog/gpus), whose serverless "
            f"pools are {', '.join(sorted(types_by_pool))}: fix --gpu-pools"
        )
    new = [pool for pool in pools if pool not in KNOWN_GPU_POOLS]
    if new:
        log(f"note: {', '.join(new)} is in RunPod's catalog but not in this tool's table "
            "(scripts/endpoint_compute.py), so its memory was not checked against the memory mode")
    offered = set().union(*(types_by_pool[pool] for pool in pools))
    strangers = [gpu_type for gpu_type in spec.excluded_gpu_types if gpu_type.strip() not in offered]
    if strangers:
        raise ValueError(
            f"--exclude-gpu {', '.join(map(repr, strangers))} is not a GPU type of the pools {', '.join(pools)}, "
            f"which hold {', '.join(sorted(offered))}"
        )


def check_network_volumes(api: RunPodRest, spec: DeploymentSpec) -> None:
    """Each volume is the account's, at most one per data centre, inside --data-centers if given."""
    if not spec.network_volume_ids:
        return
    try:
        listed = api.get("/v2/network-volumes").get("networkVolumes") or []
    except RunPodApiError as error:
        log(f"warning: the network volumes were not checked ({error}); RunPod accepts one per data centre")
        return
    volumes = {volume["id"]: volume for volume in listed}
    unknown = [volume_id for volume_id in spec.network_volume_ids if volume_id not in volumes]
    if unknown:
        known = ", ".join(f"{v['id']} ({v.get('dataCenter')})" for v in listed) or "none"
        raise ValueError(
            f"network volume {', '.join(unknown)} is not one of this account's ({known}): fix --network-volume"
        )
    by_data_center: dict[str, list[str]] = {}
    for volume_id in spec.network_volume_ids:
        by_data_center.setdefault(volumes[volume_id].get("dataCenter", "?"), []).append(volume_id)
    for data_center, ids in by_data_center.items():
        if len(ids) > 1:
            raise ValueError(
                f"network volumes {' and '.join(ids)} are both in {data_center}; an endpoint takes one network "
                "volume per data centre: keep one of them in --network-volume"
            )
    outside = [dc for dc in by_data_center if spec.data_center_ids and dc not in spec.data_center_ids]
    if outside:
        raise ValueError(
            f"--data-centers ({', '.join(spec.data_center_ids)}) leaves out {', '.join(outside)}, where "
            f"network volume {', '.join(by_data_center[dc][0] for dc in outside)} is: "
            "add the data centre or drop the volume"
        )
    log("network volumes: " + ", ".join(f"{ids[0]} in {dc}" for dc, ids in by_data_center.items())
        + " (workers run only there; volumes do not sync, so each one gets its own copy of the weights)")


def warn_about_replaced_env(current: Mapping[str, str], new: Mapping[str, str]) -> None:
    """An update makes the endpoint's environment exactly the template's: say what that removes or changes."""
    removed = sorted(name for name in current if name not in new)
    changed = sorted(name for name in current if name in new and current[name] != new[name])
    if not removed and not changed:
        return
    parts = []
    if removed:
        parts.append(f"removes {', '.join(removed)}")
    if changed:
        parts.append(f"changes {', '.join(changed)}")
    log(
        f"warning: this redeploy replaces the endpoint's environment variables, including any set in the "
        f"console: it {' and '.join(parts)}. To keep a value, put it in .env (this tool hands on "
        f"{', '.join(PASSED_THROUGH_ENV)}); any other variable must be set again in the console after each deploy."
    )


def report_rollout(api: RunPodRest, endpoint_id: str) -> None:
    """How many workers run the release this update made (GET /v2/serverless/{id}/releases)."""
    try:
        answer = api.get(f"/v2/serverless/{endpoint_id}/releases")
    except RunPodApiError as error:
        log(f"warning: the rollout could not be read ({error}); the console's Releases tab shows it")
        return
    rollout = answer.get("rollout") or {}
    releases = answer.get("releases") or [{}]
    version = answer.get("endpointVersion", releases[0].get("version"))
    changed = ", ".join(str(entry.get("field")) for entry in releases[0].get("diff") or [])
    on_latest, total = rollout.get("workersOnLatest", 0), rollout.get("workersTotal", 0)
    what = f"release {version}" + (f" (changed {changed})" if changed else "")
    if rollout.get("inProgress"):
        log(f"rollout of {what}: {on_latest} of {total} workers run it ({rollout.get('percentOnLatest', 0)} %); "
            "the others keep the previous release until they are replaced, a busy one after its job")
    elif total:
        log(f"{what} is live on all {total} workers")
    else:
        log(f"{what} is live; no worker is running, the next one to start runs it")


def _find_one(items: list[dict[str, Any]], name: str, kind: str) -> dict[str, Any] | None:
    matches = [item for item in items if item.get("name") == name]
    if len(matches) > 1:
        ids = ", ".join(str(item.get("id")) for item in matches)
        raise RunPodApiError(
            f"there are {len(matches)} {kind}s named {name!r} ({ids}); delete the extra ones in the "
            "console so that this tool knows which one to update."
        )
    return matches[0] if matches else None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe(spec: DeploymentSpec) -> str:
    if spec.compute.is_cpu:
        hardware = "CPU " + ", ".join(f"{cpu.flavor} x{cpu.vcpu_count} vCPU" for cpu in spec.compute.cpu)
    else:
        hardware = f"{spec.gpu_count} GPU from " + " > ".join(spec.compute.gpu_pools)
        if spec.excluded_gpu_types:
            hardware += " except " + ", ".join(spec.excluded_gpu_types)
    backend = spec.env["MODEL_BACKEND"]
    need = GPU_NEEDS.get(backend)
    if need is not None and need.memory_mode_setting in spec.env:
        backend += f" ({spec.env[need.memory_mode_setting]})"
    start = f", start timeout {spec.env['RUNPOD_INIT_TIMEOUT']} s" if "RUNPOD_INIT_TIMEOUT" in spec.env else ""
    hours = spec.execution_timeout_seconds / 3600
    return (
        f"endpoint {spec.name!r}: {spec.image}, {hardware}, "
        f"workers {spec.workers_min}..{spec.workers_max}, backend {backend}{start}, "
        f"execution timeout {spec.execution_timeout_seconds} s ({hours:.1f} h; the worker refuses longer jobs)"
    )


def advice(spec: DeploymentSpec) -> list[str]:
    """Warnings about settings that may work but probably not as meant (no request needed)."""
    warnings = []
    memory_of_pool = {pool: gpu_class.memory_gb for gpu_class in GPU_CLASSES for pool in gpu_class.pools}
    need = GPU_NEEDS.get(spec.env["MODEL_BACKEND"])
    mode = spec.env.get("DEFAULT_MODE")
    least = need.mode_min_memory_gb.get(mode, 0) if need is not None and mode else 0
    small = [pool for pool in spec.compute.gpu_pools if memory_of_pool.get(pool, 0) < least]
    if small:
        large = ",".join(pool for gpu_class in GPU_CLASSES if gpu_class.memory_gb >= least for pool in gpu_class.pools)
        warnings.append(
            f"DEFAULT_MODE={mode} needs about {least} GB of GPU memory (an estimate, not yet measured "
            f"on a GPU), more than {', '.join(small)} have: pass --gpu-pools {large}"
        )
    if spec.execution_timeout_seconds > LONG_EXECUTION_TIMEOUT_SECONDS:
        warnings.append(
            f"jobs may run {spec.execution_timeout_seconds / 3600:.0f} h: that is what the longest speech "
            "(MAX_AUDIO_SECONDS) needs on these GPUs by the figures in data/costs.toml, or a conservative "
            "default where none is measured; lower MAX_AUDIO_SECONDS, use the fast mode, or measure these "
            "GPUs (scripts/benchmark_gpu.py --json) to size it"
        )
    for name, value in spec.env.items():
        if is_secret_name(name) and not is_secret_reference(value):
            warnings.append(
                f"{name} goes into the endpoint's environment as plain text; store it as a "
                f"RunPod secret and set {name}={{{{ RUNPOD_SECRET_<name> }}}} in .env instead."
            )
    return warnings


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    status, endpoint_id = create_or_update(parse_args(argv), os.environ if environ is None else environ)
    if endpoint_id is not None:
        print(endpoint_id)
    return status


def create_or_update(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str | None]:
    """The exit status, and the endpoint's id (a placeholder in a dry run) unless it failed."""
    try:
        spec = spec_from_args(args, environ)
    except ValueError as error:
        log(f"error: {error}")
        return 2, None
    api_base = environ.get("RUNPOD_API_BASE") or DEFAULT_API_BASE
    log(describe(spec))
    for warning in advice(spec):
        log(f"warning: {warning}")
    if args.dry_run:
        unknown = [pool for pool in spec.compute.gpu_pools if pool not in KNOWN_GPU_POOLS]
        if unknown:
            log(f"warning: {', '.join(unknown)} is not a pool this tool knows; "
                "a real run checks it against RunPod's catalog")
        print_plan(spec, api_base)
        return 0, DRY_RUN_ENDPOINT_ID
    api_key = environ.get("RUNPOD_API_KEY")
    if not api_key:
        log("error: RUNPOD_API_KEY is not set; create a key in the RunPod console (Settings → API Keys).")
        return 2, None
    try:
        endpoint = deploy(RunPodRest(api_key, api_base), spec)
    except ValueError as error:
        log(f"error: {error}")
        return 2, None
    except RunPodApiError as error:
        log(f"error: {error}")
        return 1, None
    return 0, str(endpoint["id"])


if __name__ == "__main__":
    sys.exit(main())
