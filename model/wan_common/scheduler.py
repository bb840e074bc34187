"""The flow-matching samplers of the Wan models, on diffusers' multistep solvers.

The reference (Wan2.1's and Wan2.2's alike) ships its own flow variants of UniPC and
DPM-Solver++; diffusers' solvers with flow sigmas compute the same steps, but pick a different
sigma grid by default. Both grids are set here explicitly so that timesteps and sigmas are the
reference's, value for value.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .config import NUM_TRAIN_TIMESTEPS, SOLVERS


def make_scheduler(
    solver: str, num_steps: int, shift: float, device: torch.device | str | None = None
) -> tuple[SchedulerMixin, torch.Tensor]:
    """A fresh scheduler (it is stateful: one per clip) and its timesteps, on `device`, for the
    model's or the job's `solver`, `num_steps` and `shift`.

    `scheduler.step(model_output, t, latents, return_dict=False)[0]` gives the next latents.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if solver == "unipc":
        return _unipc(num_steps, shift, device)
    if solver == "dpm++":
        return _dpm_solver(num_steps, shift, device)
    raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")


def _unipc(num_steps: int, shift: float, device) -> tuple[SchedulerMixin, torch.Tensor]:
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
    )
    # The reference spaces the unshifted sigmas from its largest training sigma (1 - 1/1000, held
    # in float32) down to 0, end excluded; diffusers shifts them by `flow_shift`.
    largest_sigma = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
    unshifted = np.linspace(largest_sigma, 0.0, num_steps + 1)[:-1]
    scheduler.set_timesteps(sigmas=unshifted, device=device)
    return scheduler, scheduler.timesteps


def _dpm_solver(num_steps: int, shift: float, device) -> tuple[SchedulerMixin, torch.Tensor]:
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
    )
    scheduler.set_timesteps(num_steps, device=device)
    # The reference's dpm++ grid starts at sigma = 1 exactly, where diffusers' starts at 0.999 and
    # takes no custom sigmas: keep the state `set_timesteps` reset and replace the grid only.
    sigmas = np.linspace(1.0, 0.0, num_steps + 1)[:num_steps]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    scheduler.sigmas = torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))
    scheduler.timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(
        device=device, dtype=torch.int64
    )
    return scheduler, scheduler.timesteps
