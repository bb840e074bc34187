"""What every torch backend shares (model/torch_backend.py): load failures that belong to this
machine make the worker leave the pool, and a real-size model is refused on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.base import HostUnfitError
from model.torch_backend import CPU_MAX_TRANSFORMER_WIDTH, check_cpu_can_run, load_failures_as_host_unfit


def test_running_out_of_gpu_memory_while_loading_says_the_given_sentence():
    with pytest.raises(HostUnfitError, match="^the models do not fit; use a smaller mode$") as refused:
        with load_failures_as_host_unfit("Tiny", Path("/models/tiny"), "the models do not fit; use a smaller mode"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    assert refused.value.__cause__ is None


@pytest.mark.parametrize("error", [OSError("short read"), KeyError("blocks.0"), ValueError("shape"), RuntimeError("x")])
def test_unreadable_weights_name_the_folder_and_the_fix(error):
    with pytest.raises(HostUnfitError, match=r"the Tiny weights in /models/tiny could not be loaded \(\w+Error\); "
                                             "the files may be incomplete or corrupt: delete them") as refused:
        with load_failures_as_host_unfit("Tiny", Path("/models/tiny"), "too big"):
            raise error
    assert refused.value.__cause__ is error


def test_other_errors_pass_through_unchanged():
    with pytest.raises(TypeError):
        with load_failures_as_host_unfit("Tiny", Path("/models/tiny"), "too big"):
            raise TypeError("a bug, not the machine")


def test_only_tiny_models_may_run_on_a_cpu():
    check_cpu_can_run("Tiny", CPU_MAX_TRANSFORMER_WIDTH)
    with pytest.raises(HostUnfitError, match="no usable CUDA GPU, and Tiny needs one.*MODEL_BACKEND=lite"):
        check_cpu_can_run("Tiny", CPU_MAX_TRANSFORMER_WIDTH + 1)
