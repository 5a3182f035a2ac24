"""innerloop: meta-learning on PyTorch, built on torch.func."""

from .algorithms import ANIL, CNP, FOMAML, MAML, GradientLearner, MetaLearner, MetaSGD, Pretrained, ProtoNets, Reptile
from .core import (
    SGD, LearnedOptimizerLSTM, MetaCurvature, MetaLearnerLSTM, MetaSGDRates, PerLayerPerStepRates, UpdateRule, inner_loop,
)
from .tasks import SinusoidTasks, TaskBatch

__version__ = "0.1.0"

__all__ = [
    "MAML", "FOMAML", "MetaSGD", "ANIL", "Reptile", "Pretrained", "ProtoNets", "CNP", "MetaLearner", "GradientLearner",
    "UpdateRule", "SGD", "MetaSGDRates", "PerLayerPerStepRates", "MetaCurvature", "LearnedOptimizerLSTM",
    "MetaLearnerLSTM", "inner_loop", "TaskBatch", "SinusoidTasks",
]
