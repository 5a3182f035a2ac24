"""innerloop: meta-learning on PyTorch, built on torch.func."""

from ._version import __version__ as __version__  # one place: _version.py (the CLI reads it there)
from .algorithms import (
    ANIL,
    CNP,
    FOMAML,
    MAML,
    SNAIL,
    GradientLearner,
    MetaLearner,
    MetaSGD,
    Pretrained,
    ProtoNets,
    Reptile,
)
from .algorithms.handle import TaskHandle, TaskList  # your own training loop: learner.clone(), lists of tasks
from .core import (
    SGD,
    LearnedOptimizerLSTM,
    MetaCurvature,
    MetaLearnerLSTM,
    MetaSGDRates,
    PerLayerPerStepRates,
    UpdateRule,
    inner_loop,
)
from .tasks import SinusoidTasks, TaskBatch
from .tasks.checks import set_checks  # the boundary checks of every learner entry point, on by default

__all__ = [
    "ANIL",
    "CNP",
    "FOMAML",
    "MAML",
    "SGD",
    "SNAIL",
    "GradientLearner",
    "LearnedOptimizerLSTM",
    "MetaCurvature",
    "MetaLearner",
    "MetaLearnerLSTM",
    "MetaSGD",
    "MetaSGDRates",
    "PerLayerPerStepRates",
    "Pretrained",
    "ProtoNets",
    "Reptile",
    "SinusoidTasks",
    "TaskBatch",
    "TaskHandle",
    "TaskList",
    "UpdateRule",
    "inner_loop",
    "set_checks",
]
