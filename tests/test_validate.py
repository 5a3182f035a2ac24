"""Shared argument checks, split seeds and the divergence message: one copy each, used by every layer."""

import pytest
import torch

from innerloop import SinusoidTasks
from innerloop.errors import ConfigError, TrainingDiverged
from innerloop.tasks.fixed import FixedTasks
from innerloop.tasks.seeding import derive_seed, seeded_generator, split_seed, task_generator
from innerloop.validate import positive_int


@pytest.mark.parametrize("value", [0, -3, 1.0, True, "2", None])
def test_positive_int_names_the_argument_and_refuses_non_integers(value):
    with pytest.raises(ValueError, match=rf"^ways must be a positive integer, got {value!r}$"):
        positive_int("ways", value)


def test_positive_int_allow_zero_and_config_errors():
    assert positive_int("steps", 0, allow_zero=True) == 0 and positive_int("ways", 5) == 5
    with pytest.raises(ValueError, match=r"^steps must be a non-negative integer, got -1$"):
        positive_int("steps", -1, allow_zero=True)
    with pytest.raises(ConfigError, match=r"^rl\.episodes must be a positive integer, got 0$"):
        positive_int("rl.episodes", 0, error=ConfigError)


def test_every_caller_keeps_its_name_in_the_message():
    with pytest.raises(ValueError, match="sinusoid shots must be a positive integer, got True"):
        SinusoidTasks(shots=True)  # a bool is not a count (it was accepted as 1 before)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        FixedTasks(SinusoidTasks(), 4, 0)


def test_split_seeds():
    assert split_seed(7, 3, "train") == 7
    assert split_seed(7, 3, "val") == derive_seed(7, "val") != split_seed(8, 3, "val")
    assert (
        split_seed(7, 3, "test") == derive_seed(3, "test") == split_seed(8, 3, "test")
    )  # test tasks follow eval.seed only
    with pytest.raises(ValueError, match="split must be 'train', 'val' or 'test', got 'dev'"):
        split_seed(7, 3, "dev")
    same = torch.Generator().manual_seed(derive_seed(5, "nav2d", "test"))
    assert torch.equal(torch.rand(4, generator=seeded_generator(5, "nav2d", "test")), torch.rand(4, generator=same))
    assert torch.equal(
        torch.rand(3, generator=task_generator(1, 2, 3)), torch.rand(3, generator=seeded_generator(1, 2, 3))
    )


def test_divergence_message_names_the_iteration_the_checkpoint_and_the_fix():
    err = TrainingDiverged.at(4, "meta-loss inf", "run/checkpoints/step-00000003", "Lower train.meta_lr.")
    assert isinstance(err, TrainingDiverged) and err.exit_code == 1
    assert (
        str(err)
        == "training diverged at iteration 4: meta-loss inf; the last good checkpoint is run/checkpoints/step-00000003. Lower train.meta_lr."
    )
    assert "; no checkpoint was written yet. " in str(TrainingDiverged.at(1, "x", None, "fix"))
