"""What ./deploy_runpod.sh runs: build, push and deploy the worker as a RunPod serverless endpoint.

    python -m scripts.deploy [options]        (./deploy_runpod.sh --help lists them)

It owns deploy_runpod.sh's one option list (OPTIONS): each flag with the .env variable it stands
for and the scripts/runpod_endpoint.py option that gets the value. It reads .env as data, checks
docker, builds and pushes in one step with `scripts/build_image.sh --push`, creates or updates
the endpoint through scripts/runpod_endpoint.py, and prints the calls to paste. The endpoint tool
stays a tool of its own (an existing image, stdout only the endpoint id); this module adds what a
deploy from a checkout needs around it.

Exit status: 0 done; 1 a bad flag or .env line, a missing prerequisite, a failed build or push,
or the RunPod API refused or failed; 2 endpoint settings that cannot work (found before the build).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # python scripts/deploy.py
    sys.path.insert(0, str(ROOT))

from model.declaration import GpuNeed  # noqa: E402
from model.registry import ALL_MODES, BACKENDS, DEFAULT_BACKEND  # noqa: E402
from scripts.endpoint_compute import GPU_NEEDS, MEMORY_MODES  # noqa: E402

DEFAULT_ENV_FILE = ROOT / ".env"
SAMPLE_JOB = ROOT / "test_input.json"
# What a dry run without IMAGE_REPOSITORY shows in the plan.
EXAMPLE_REPOSITORY = "registry.example.com/you/talking-head"
# A tag of the length build_image.sh gives, for checking the endpoint settings before the build.
PLACEHOLDER_TAG = "0" * 12


# The GPU backend whose memory modes --help describes (a deploy's default when it is a GPU one),
# and the .env variable --memory-mode stands for (each GPU backend declares the one it reads).
DEFAULT_GPU_BACKEND = DEFAULT_BACKEND if DEFAULT_BACKEND in GPU_NEEDS else next(iter(GPU_NEEDS))
MEMORY_MODE_VARIABLE = GPU_NEEDS[DEFAULT_GPU_BACKEND].memory_mode_setting
# Modes that need more GPU memory than a memory mode alone picks, as their backends declare it.
LARGE_MODES = "; ".join(f"{mode} needs ~{gb} GB GPUs (an estimate), so pair it with --gpu-pools"
                        for need in GPU_NEEDS.values() for mode, gb in need.mode_min_memory_gb.items())


@dataclasses.dataclass(frozen=True)
class Option:
    flag: str | None  # None: a .env variable without a flag
    metavar: str | None  # None: a switch
    help: str  # as --help shows it, "\n" where it wraps
    variable: str | None = None  # the .env variable the flag stands for; a given flag beats it
    endpoint_option: str | None = None  # the scripts/runpod_endpoint.py option that gets the value


OPTIONS = (
    Option("--name", "NAME", "endpoint name (ENDPOINT_NAME, default talking-head); another name makes\n"
           "a second endpoint beside the first, e.g. for an A/B test", "ENDPOINT_NAME", "--name"),
    Option("--backend", "B", f"{' or '.join(BACKENDS)} (MODEL_BACKEND, default {DEFAULT_BACKEND}); a CPU backend\n"
           "gets a CPU endpoint", "MODEL_BACKEND", "--backend"),
    # The endpoint tool hands DEFAULT_MODE on to the worker's environment itself.
    Option("--default-mode", "M", f"{' or '.join(ALL_MODES)} (DEFAULT_MODE): the `mode` of a job that names none;\n"
           + LARGE_MODES, "DEFAULT_MODE"),
    Option("--stream-results", None, "STREAM_RESULTS=1: jobs with \"stream\": true send segments through\n"
           "/stream/{id}; every job's /runsync and /status output becomes a list (docs/CONTRACT.md)",
           "STREAM_RESULTS"),
    Option("--memory-mode", "M", f"{', '.join(MEMORY_MODES)} ({MEMORY_MODE_VARIABLE}, default "
           f"{GPU_NEEDS[DEFAULT_GPU_BACKEND].default_memory_mode}); picks the GPUs", MEMORY_MODE_VARIABLE,
           "--memory-mode"),
    Option("--gpu-pools", "P1,P2", "GPU pools in priority order, instead of the ones the memory mode picks",
           "RUNPOD_GPU_POOLS", "--gpu-pools"),
    Option("--exclude-gpu", "T1,T2", "GPU types to leave out of those pools, e.g. 'NVIDIA L40' (RUNPOD_EXCLUDE_GPUS)",
           "RUNPOD_EXCLUDE_GPUS", "--exclude-gpu"),
    Option("--gpu-count", "N", "GPUs per worker (RUNPOD_GPU_COUNT, default 1)", "RUNPOD_GPU_COUNT", "--gpu-count"),
    Option("--data-centers", "D1,D2", "data centres, e.g. EU-RO-1,US-KS-2 (RUNPOD_DATA_CENTERS, default any)",
           "RUNPOD_DATA_CENTERS", "--data-centers"),
    Option("--network-volume", "V1,V2", "network volumes for the weights, at most one per data centre\n"
           "(RUNPOD_NETWORK_VOLUME_ID)", "RUNPOD_NETWORK_VOLUME_ID", "--network-volume"),
    Option("--workers-min", "N", "always-on workers (RUNPOD_WORKERS_MIN, default 0)",
           "RUNPOD_WORKERS_MIN", "--workers-min"),
    Option("--workers-max", "N", "most workers (RUNPOD_WORKERS_MAX, default 3)", "RUNPOD_WORKERS_MAX", "--workers-max"),
    Option("--idle-timeout", "S", "seconds an idle worker stays up (RUNPOD_IDLE_TIMEOUT)",
           "RUNPOD_IDLE_TIMEOUT", "--idle-timeout"),
    Option("--scaler", "S", "queue-delay or request-count (RUNPOD_SCALER, default queue-delay)",
           "RUNPOD_SCALER", "--scaler"),
    Option("--scaler-value", "V", "its threshold (RUNPOD_SCALER_VALUE, default 4)",
           "RUNPOD_SCALER_VALUE", "--scaler-value"),
    Option("--flashboot", "F", "on, off or priority (RUNPOD_FLASHBOOT, default on)", "RUNPOD_FLASHBOOT", "--flashboot"),
    Option("--execution-timeout", "S", "seconds one job may run (RUNPOD_EXECUTION_TIMEOUT)",
           "RUNPOD_EXECUTION_TIMEOUT", "--execution-timeout"),
    Option(None, None, "RunPod registry credential id, for a private image",
           "RUNPOD_REGISTRY_AUTH_ID", "--registry-auth"),
    Option(None, None, "RunPod secret holding a Hugging Face token", "RUNPOD_HF_TOKEN_SECRET", "--hf-token-secret"),
    Option("--bake-weights", None, "bake the weights into the image (BAKE_WEIGHTS=1); HF_TOKEN as a build secret",
           "BAKE_WEIGHTS"),
    Option("--image", "REF", "deploy this already pushed image; no build, no push"),
    Option("--env-file", "FILE", "read FILE instead of .env"),
    Option("--dry-run", None, "print the plan (commands and API requests); needs neither docker nor a key"),
)

HELP_INTRO = """\
Build, push and deploy the talking-head worker as a RunPod serverless endpoint; run it again to
update the same endpoint.

  ./deploy_runpod.sh [options]

Settings come from .env (copy .env.example) and the environment; a flag beats both.
"""
HELP_OUTRO = """
A redeploy replaces the endpoint's environment variables: one set only in the console is
removed (the tool names it). Put the worker's settings in .env instead.
"""

HELP_COLUMN = 26

CALLS = """
Send the sample job and wait for the video (the first job also waits for a cold start):
  curl -sS -X POST "https://api.runpod.ai/v2/{id}/runsync" \\
    -H "Authorization: Bearer $RUNPOD_API_KEY" -H "Content-Type: application/json" \\
    -d "@{sample}"

Queue it instead, then ask for the result with the id it returns:
  curl -sS -X POST "https://api.runpod.ai/v2/{id}/run" \\
    -H "Authorization: Bearer $RUNPOD_API_KEY" -H "Content-Type: application/json" -d "@{sample}"
  curl -sS "https://api.runpod.ai/v2/{id}/status/JOB_ID" -H "Authorization: Bearer $RUNPOD_API_KEY"

Python (pip install runpod):
  import base64, json, os, runpod
  runpod.api_key = os.environ["RUNPOD_API_KEY"]
  job = json.load(open("{sample}"))
  result = runpod.Endpoint("{id}").run_sync(job, timeout=3600)
  if result and "video_base64" in result:
      open("out.mp4", "wb").write(base64.b64decode(result.pop("video_base64")))
  print(result)
"""

_ENV_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")
_ENV_SKIPPED = re.compile(r"\s*(?:#.*)?")
_QUOTED = re.compile(r'"(.*)"|\'(.*)\'')


class DeployError(Exception):
    """Stops the deploy: each message becomes an `error:` line, and `status` the exit status."""

    def __init__(self, *messages: str, status: int = 1) -> None:
        super().__init__(*messages)
        self.messages = messages
        self.status = status


def help_text() -> str:
    lines = []
    for option in OPTIONS:
        if option.flag is None:
            continue
        name = f"  {option.flag}" + (f" {option.metavar}" if option.metavar else "")
        first, *rest = option.help.split("\n")
        lines.append(f"{name.ljust(HELP_COLUMN - 2)}  {first}")
        lines += [" " * HELP_COLUMN + line for line in rest]
    hints = "".join(f"\n{entry.deploy.weights_hint}\n" for entry in BACKENDS.values() if entry.deploy.weights_hint)
    return HELP_INTRO + "\n".join(lines) + "\n" + HELP_OUTRO + hints


def parse_flags(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; raises DeployError naming a flag without its value or an unknown argument."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("-h", "--help", action="store_true")
    for option in OPTIONS:
        if option.flag is not None:
            parser.add_argument(option.flag, action="store" if option.metavar else "store_true")
    try:
        args, unknown = parser.parse_known_args(_values_attached(argv))
    except argparse.ArgumentError as error:
        if "expected one argument" in error.message:
            raise DeployError(f"{error.argument_name} needs a value") from None
        raise DeployError(str(error)) from None
    if unknown and not args.help:
        print(help_text(), end="", file=sys.stderr)
        raise DeployError(f"unknown argument: {unknown[0]}")
    return args


def _values_attached(argv: Sequence[str]) -> list[str]:
    """`--flag VALUE` as `--flag=VALUE`: a value is the word after its flag even when it starts with
    '-' (argparse would take that for a flag; a GPU type copied with the Hub's '-' then gets the
    endpoint tool's explanation)."""
    value_flags = {option.flag for option in OPTIONS if option.flag and option.metavar}
    words, attached = list(argv), []
    while words:
        word = words.pop(0)
        attached.append(f"{word}={words.pop(0)}" if word in value_flags and words else word)
    return attached


def read_env_file(path: Path) -> list[tuple[str, str]]:
    """KEY=VALUE lines, read as data (never executed): `export ` and one pair of quotes are dropped,
    comments and blank lines skipped. Raises DeployError naming a line that is none of these."""
    pairs = []
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as file:
        text = file.read()  # newline="": a line ends at "\n" only, as for bash's `read`
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if _ENV_SKIPPED.fullmatch(line):
            continue
        assignment = _ENV_ASSIGNMENT.fullmatch(line)
        if assignment is None:
            raise DeployError(f"{path} line {number} is not KEY=VALUE")
        key, value = assignment.groups()
        quoted = _QUOTED.fullmatch(value)
        if quoted:
            value = next(group for group in quoted.groups() if group is not None)
        pairs.append((key, value))
    return pairs


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[dict[str, str], set[str]]:
    """The environment the deploy sees: a given flag beats the environment, which beats the .env
    file; the variables the flags set."""
    settings = dict(environ)
    from_flags = set()
    for option in OPTIONS:
        value = getattr(args, _dest(option)) if option.flag else None
        if option.variable and value not in (None, False):
            settings[option.variable] = "1" if value is True else value
            from_flags.add(option.variable)
    env_file = Path(args.env_file) if args.env_file is not None else DEFAULT_ENV_FILE
    if env_file.is_file():
        for key, value in read_env_file(env_file):
            settings.setdefault(key, value)  # the first line of a key wins
    elif args.env_file is not None:
        raise DeployError(f"{args.env_file} does not exist")
    return settings, from_flags


def _dest(option: Option) -> str:
    assert option.flag is not None
    return option.flag.removeprefix("--").replace("-", "_")


def endpoint_argv(settings: Mapping[str, str], image: str, dry_run: bool) -> list[str]:
    """scripts/runpod_endpoint.py's arguments: each setting that is set (the tool has the defaults)."""
    backend = settings.get("MODEL_BACKEND") or DEFAULT_BACKEND
    argv = [f"--name={settings.get('ENDPOINT_NAME') or 'talking-head'}", f"--image={image}"]
    for option in OPTIONS:
        if option.variable is None or option.endpoint_option in (None, "--name"):
            continue
        variable = option.variable
        if option.endpoint_option == "--memory-mode":
            need = BACKENDS[backend].deploy.compute if backend in BACKENDS else None
            if not isinstance(need, GpuNeed):
                continue  # .env.example sets it; a CPU backend's deploy leaves it out
            variable = need.memory_mode_setting
        if settings.get(variable):
            argv.append(f"{option.endpoint_option}={settings[variable]}")
    return argv + (["--dry-run"] if dry_run else [])


def checked_endpoint_args(argv: list[str], settings: Mapping[str, str], from_flags: set[str],
                          env_file: str) -> argparse.Namespace:
    """The endpoint tool's arguments, checked with the settings before anything is built (an image
    that is yet to be built is checked with a placeholder tag).

    Raises DeployError (status 2) naming the flag or the variable that holds a bad value.
    """
    from scripts.runpod_endpoint import build_parser, spec_from_args

    try:
        args = build_parser(exit_on_error=False).parse_args(argv)
    except argparse.ArgumentError as error:
        option = next((o for o in OPTIONS if o.endpoint_option == error.argument_name and o.variable), None)
        if option is None:
            raise DeployError(str(error), status=2) from None
        given = option.variable in from_flags
        where = option.flag if given else f"{option.variable} (in the environment or {env_file})"
        raise DeployError(f"{where}: {error.message}", status=2) from None
    try:
        spec_from_args(args, settings)
    except ValueError as error:
        raise DeployError(str(error), status=2) from None
    return args


def registry_of(repository: str) -> str:
    """Docker's rule: the first path component names a registry only if it looks like a host."""
    first = repository.split("/", 1)[0]
    if "/" in repository and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def logged_in_to(registry: str, settings: Mapping[str, str]) -> bool:
    """`docker login` records every registry under "auths" in the Docker config, also when a
    credential store keeps the secret itself."""
    config_dir = settings.get("DOCKER_CONFIG") or os.path.join(settings.get("HOME") or str(Path.home()), ".docker")
    names = {registry, "https://" + registry}
    if registry == "docker.io":
        names |= {"https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"}
    try:
        config = json.loads(Path(config_dir, "config.json").read_text())
        known = set(config.get("auths", {})) | set(config.get("credHelpers", {}))
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return bool(names & known)


def docker_problem(repository: str, settings: Mapping[str, str]) -> str | None:
    docker = shutil.which("docker", path=settings.get("PATH"))
    if docker is None:
        return ("docker is not installed or not on PATH: install Docker with the buildx plugin "
                "(or see the plan with --dry-run)")
    if not _succeeds([docker, "info"], settings):
        return "the Docker daemon is not running or not reachable: start Docker and run again"
    if not _succeeds([docker, "buildx", "version"], settings):
        return "docker buildx is missing: install the Docker buildx plugin"
    registry = registry_of(repository)
    if repository and not logged_in_to(registry, settings):
        return f"docker is not logged in to {registry}: run 'docker login {registry}'"
    return None


def _succeeds(command: list[str], settings: Mapping[str, str]) -> bool:
    return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=settings).returncode == 0


def check_prerequisites(settings: Mapping[str, str], image: str | None, dry_run: bool) -> str:
    """The image repository to build into; raises DeployError with every missing prerequisite at once."""
    problems = []
    repository = settings.get("IMAGE_REPOSITORY") or ""
    if not image and not repository:
        if dry_run:
            repository = EXAMPLE_REPOSITORY
            log(f"note: IMAGE_REPOSITORY is not set; the plan shows {repository}")
        else:
            problems.append("IMAGE_REPOSITORY is not set: put your registry's repository in .env, "
                            "e.g. IMAGE_REPOSITORY=docker.io/you/talking-head")
    backend = settings.get("MODEL_BACKEND") or DEFAULT_BACKEND
    if settings.get("BAKE_WEIGHTS") == "1" and backend in BACKENDS and not BACKENDS[backend].deploy.bakes_into_image:
        bakeable = ", ".join(name for name, entry in BACKENDS.items() if entry.deploy.bakes_into_image)
        problems.append(f"--bake-weights: the Dockerfile bakes the weights of {bakeable} only, not "
                        f"{backend}'s; leave it out and use --network-volume, or RunPod's cached models")
    if importlib.util.find_spec("requests") is None:
        problems.append(f"{sys.executable} cannot import requests: run 'make install' (or pip install requests)")
    if not dry_run:
        if not settings.get("RUNPOD_API_KEY"):
            problems.append("RUNPOD_API_KEY is not set: create a key in the RunPod console (Settings > API Keys) "
                            "and put it in .env")
        problem = None if image else docker_problem(repository, settings)
        if problem:
            problems.append(problem)
    if problems:
        raise DeployError(*problems)
    return repository


def build_and_push(repository: str, settings: Mapping[str, str], dry_run: bool) -> str:
    """The pushed image's reference; raises DeployError with the script's exit status (it said why)."""
    dry = ["--dry-run"] if dry_run else []
    backend = settings.get("MODEL_BACKEND") or DEFAULT_BACKEND
    bake = ["--bake-weights", "--backend", backend] if settings.get("BAKE_WEIGHTS") == "1" else []
    built = _run_script(["build_image.sh", "--push", *dry, *bake, repository], settings, capture=True)
    return built.stdout.rstrip("\n")


def _run_script(command: list[str], settings: Mapping[str, str], capture: bool) -> subprocess.CompletedProcess[str]:
    sys.stdout.flush()
    sys.stderr.flush()
    result = subprocess.run([str(ROOT / "scripts" / command[0]), *command[1:]], env=settings, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode:
        raise DeployError(status=result.returncode)
    return result


def ready_to_paste(endpoint_id: str, image: str, settings: Mapping[str, str]) -> str:
    text = (f"\nEndpoint: {endpoint_id}   (image {image})\n"
            f"Console:  https://console.runpod.io/serverless/user/endpoint/{endpoint_id}\n")
    weightless = not settings.get("RUNPOD_NETWORK_VOLUME_ID") and not image.endswith("-baked")
    entry = BACKENDS.get(settings.get("MODEL_BACKEND") or DEFAULT_BACKEND)
    if entry is not None and entry.deploy.cold_start_hint and weightless:
        text += "\n" + entry.deploy.cold_start_hint + "\n"
    return text + CALLS.format(id=endpoint_id, sample=SAMPLE_JOB)


def deploy(argv: Sequence[str], environ: Mapping[str, str]) -> None:
    args = parse_flags(argv)
    if args.help:
        print(help_text(), end="")
        return
    settings, from_flags = settings_from(args, environ)
    repository = check_prerequisites(settings, args.image, args.dry_run)
    planned_image = args.image or f"{repository}:{PLACEHOLDER_TAG}"
    env_file = args.env_file if args.env_file is not None else str(DEFAULT_ENV_FILE)
    endpoint = checked_endpoint_args(endpoint_argv(settings, planned_image, args.dry_run), settings, from_flags,
                                     env_file)
    if args.dry_run:
        log("Plan (dry run: nothing is built, pushed or sent):")
    endpoint.image = args.image or build_and_push(repository, settings, args.dry_run)

    from scripts.runpod_endpoint import create_or_update

    status, endpoint_id = create_or_update(endpoint, settings)
    if endpoint_id is None:
        raise DeployError(status=status)
    print(ready_to_paste(endpoint_id, endpoint.image, settings), end="")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        deploy(sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ)
    except DeployError as error:
        for message in error.messages:
            log(f"error: {message}")
        return error.status
    return 0


if __name__ == "__main__":
    sys.exit(main())
