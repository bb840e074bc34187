"""Build the worker once, before the RunPod loop: settings, the model, the preset avatars."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping

from handler.errors import ErrorCode, JobError, from_model_error
from handler.job import Worker
from handler.presets import PresetAvatars
from handler.scratch import remove_leftovers
from handler.settings import SettingsError, WorkerSettings
from model.base import HostUnfitError, ModelUnavailableError
from model.registry import load_backend

log = logging.getLogger(__name__)


def start_worker(env: Mapping[str, str] | None = None) -> Worker:
    """Load everything a job needs. Never raises.

    A worker that cannot start fails its jobs clearly: with INTERNAL for a setting that cannot
    work, MODEL_UNAVAILABLE for a model that cannot load. When the fault is this machine's (see
    HostUnfitError), `host_fault` says so, and on RunPod the worker leaves the pool instead.
    """
    started = time.monotonic()
    remove_leftovers()
    try:
        settings = WorkerSettings.from_env(env)
    except SettingsError as error:
        return Worker(settings=WorkerSettings.from_env({}), backend=None, presets=None,
                      startup_error=_misconfigured(str(error)))
    try:
        backend = load_backend(settings.model_backend, settings.model_dir, settings.backend_settings)
    except HostUnfitError as error:
        return _unfit(settings, str(error))
    except ModelUnavailableError as error:
        log.error("model unavailable: %s", error)
        return Worker(settings=settings, backend=None, presets=None, startup_error=from_model_error(error))
    except Exception as error:  # noqa: BLE001 - a CUDA or I/O fault the backend did not foresee
        log.error("loading the model failed:\n%s", traceback.format_exc())
        return _unfit(settings, f"the model could not be loaded on this machine ({type(error).__name__}; "
                                "the worker's log has the details).")
    if settings.default_mode is not None and settings.default_mode not in backend.modes:
        return Worker(settings=settings, backend=backend, presets=None, startup_error=_misconfigured(
            f"DEFAULT_MODE={settings.default_mode!r} is not a mode the {backend.name} backend offers "
            f"(it offers {', '.join(backend.modes)}); set DEFAULT_MODE to {' or '.join(backend.modes)}, "
            "or leave it empty."
        ))
    loaded = time.monotonic()
    presets = PresetAvatars(settings.preset_avatars_dir, backend, settings.max_image_pixels)
    presets.warm(backend.default_max_area(settings.default_mode or backend.modes[0]))
    log.info(
        "worker ready in %.2f s (model %s: %.2f s, %d preset avatars: %.2f s)",
        time.monotonic() - started, backend.name, loaded - started, len(presets.ids), time.monotonic() - loaded,
    )
    return Worker(settings=settings, backend=backend, presets=presets)


def _unfit(settings: WorkerSettings, problem: str) -> Worker:
    """A worker on a machine that cannot run the model: every job would fail, on any other it may not."""
    log.error("this machine cannot run the model: %s", problem)
    return Worker(settings=settings, backend=None, presets=None,
                  startup_error=JobError(ErrorCode.MODEL_UNAVAILABLE, problem), host_fault=problem)


def _misconfigured(problem: str) -> JobError:
    """The error every job of a worker whose environment cannot work fails with."""
    log.error("the endpoint's environment is invalid: %s", problem)
    return JobError(
        ErrorCode.INTERNAL, f"the endpoint is misconfigured: {problem} Fix the endpoint's environment variables."
    )
