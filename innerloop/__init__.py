"""innerloop: meta-learning on PyTorch, built on torch.func."""

from .algorithms import (
    ANIL, CNP, FOMAML, MAML, SNAIL, GradientLearner, MetaLearner, MetaSGD, Pretrained, ProtoNets, Reptile,
)
from .core import (
    SGD, LearnedOptimizerLSTM, MetaCurvature, MetaLearnerLSTM, MetaSGDRates, PerLayerPerStepRates, UpdateRule, inner_loop,
)
from .tasks import SinusoidTasks, TaskBatch
from .tasks.checks import set_checks  # the boundary checks of every learner entry point, on by default
from .algorithms.handle import TaskHandle, TaskList  # your own training loop: learner.clone(), lists of tasks

__version__ = "0.1.0"

__all__ = [
    "MAML", "FOMAML", "MetaSGD", "ANIL", "Reptile", "Pretrained", "ProtoNets", "CNP", "SNAIL", "MetaLearner",
    "GradientLearner",
    "UpdateRule", "SGD", "MetaSGDRates", "PerLayerPerStepRates", "MetaCurvature", "LearnedOptimizerLSTM",
    "MetaLearnerLSTM", "inner_loop", "TaskBatch", "SinusoidTasks", "TaskHandle", "TaskList",
    "set_checks",
]
