"""Meta-training learned update rules over long inner runs (issue 21): task families for optimizers, inner runs
that persist across truncations, and interchangeable meta-gradient estimators (full and truncated backprop,
antithetic ES, Persistent ES), with a resumable meta-training loop."""

from .estimators import ESTIMATORS, AntitheticES, Estimator, FullBPTT, PersistentES, TruncatedBPTT
from .families import (
    ImageConvTasks,
    ImageMLPTasks,
    LinearRegressionTasks,
    QuadraticTasks,
    SinusoidMLPTasks,
    TaskFamily,
)
from .inner import OBJECTIVES, InnerStates, Unroll
from .learner import LearnedOptimizerLearner, OptimizerTasks
from .meta_train import MetaTraining, load_meta
from .split import meta_split
from .text import CharLMTasks

__all__ = [
    "ESTIMATORS",
    "OBJECTIVES",
    "AntitheticES",
    "CharLMTasks",
    "Estimator",
    "FullBPTT",
    "ImageConvTasks",
    "ImageMLPTasks",
    "InnerStates",
    "LearnedOptimizerLearner",
    "LinearRegressionTasks",
    "MetaTraining",
    "OptimizerTasks",
    "PersistentES",
    "QuadraticTasks",
    "SinusoidMLPTasks",
    "TaskFamily",
    "TruncatedBPTT",
    "Unroll",
    "load_meta",
    "meta_split",
]
