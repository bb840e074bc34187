"""Sampler: timesteps, sigmas and whole denoising runs vs the reference's flow solvers."""

from __future__ import annotations

import pytest
import torch

from model.wan_common.scheduler import make_scheduler
from tests.wan_reference import reference_module


def _run(scheduler, timesteps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Denoise random latents with random "model outputs" (seeded, so both runs see the same)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, 3, 6, 6, generator=generator)
    for t in timesteps:
        model_output = torch.randn(latents.shape, generator=generator)
        latents = scheduler.step(model_output, t, latents, return_dict=False)[0]
    return latents


@pytest.mark.parametrize("solver", ["unipc", "dpm++"])
def test_schedule_runs_from_noise_to_zero_sigma(solver: str) -> None:
    scheduler, timesteps = make_scheduler(solver, num_steps=40, shift=3.0)
    assert timesteps.dtype == torch.int64 and len(timesteps) == 40
    assert bool((timesteps[1:] < timesteps[:-1]).all())
    assert 990 <= int(timesteps[0]) <= 1000 and scheduler.sigmas[-1] == 0
    assert torch.isfinite(_run(scheduler, timesteps)).all()


def test_unknown_solver_is_refused() -> None:
    with pytest.raises(ValueError, match="euler"):
        make_scheduler("euler", 40, 3.0)


@pytest.mark.parametrize("num_steps,shift", [(40, 3.0), (20, 5.0), (7, 1.0)])
def test_unipc_matches_the_reference(num_steps: int, shift: float) -> None:
    fm_solvers_unipc = reference_module("utils.fm_solvers_unipc")
    reference = fm_solvers_unipc.FlowUniPCMultistepScheduler(
        num_train_timesteps=1000, shift=1, use_dynamic_shifting=False
    )
    reference.set_timesteps(num_steps, device="cpu", shift=shift)

    ours, timesteps = make_scheduler("unipc", num_steps, shift, device="cpu")
    assert torch.equal(timesteps, reference.timesteps)
    assert torch.equal(ours.sigmas, reference.sigmas)
    expected = _run(reference, reference.timesteps)
    assert (_run(ours, timesteps) - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("num_steps,shift", [(40, 3.0), (20, 5.0), (7, 1.0)])
def test_dpm_solver_matches_the_reference(num_steps: int, shift: float) -> None:
    fm_solvers = reference_module("utils.fm_solvers")
    reference = fm_solvers.FlowDPMSolverMultistepScheduler(
        num_train_timesteps=1000, shift=1, use_dynamic_shifting=False
    )
    reference_timesteps, _ = fm_solvers.retrieve_timesteps(
        reference, device="cpu", sigmas=fm_solvers.get_sampling_sigmas(num_steps, shift)
    )

    ours, timesteps = make_scheduler("dpm++", num_steps, shift, device="cpu")
    assert torch.equal(timesteps, reference_timesteps)
    assert torch.equal(ours.sigmas, reference.sigmas)
    expected = _run(reference, reference_timesteps)
    assert (_run(ours, timesteps) - expected).abs().max() <= 1e-4 * expected.abs().max()
