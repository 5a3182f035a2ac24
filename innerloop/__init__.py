"""innerloop: meta-learning on PyTorch, built on torch.func."""

from .algorithms import ANIL, FOMAML, MAML, GradientLearner, MetaLearner, MetaSGD, Pretrained, Reptile
from .core import SGD, MetaSGDRates, PerLayerPerStepRates, UpdateRule, inner_loop
from .tasks import SinusoidTasks, TaskBatch

__version__ = "0.1.0"

__all__ = [
    "MAML", "FOMAML", "MetaSGD", "ANIL", "Reptile", "Pretrained", "MetaLearner", "GradientLearner",
    "UpdateRule", "SGD", "MetaSGDRates", "PerLayerPerStepRates", "inner_loop", "TaskBatch", "SinusoidTasks",
]
