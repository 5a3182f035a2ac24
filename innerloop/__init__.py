"""innerloop: meta-learning on PyTorch, built on torch.func."""

from ._version import __version__ as __version__  # one place: _version.py (the CLI reads it there)
from .algorithms import (
    ANIL,
    CNP,
    FOMAML,
    IMAML,
    MAML,
    R2D2,
    SNAIL,
    Baseline,
    BaselinePlusPlus,
    GradientLearner,
    MAMLPlusPlus,
    MatchingNets,
    MetaLearner,
    MetaOptNetSVM,
    MetaSGD,
    Pretrained,
    ProtoNets,
    Reptile,
)
from .algorithms.handle import TaskHandle, TaskList  # your own training loop: learner.clone(), lists of tasks
from .core import (
    SGD,
    LearnedOptimizer,
    LearnedOptimizerLSTM,
    MetaCurvature,
    MetaLearnerLSTM,
    MetaSGDRates,
    PerLayerPerStepRates,
    UpdateRule,
    inner_loop,
)
from .core.rules import Adam, AdamCorrection, FactoredMLPOptimizer, MLPOptimizer  # learned optimizers (issue 21)
from .tasks import SinusoidTasks, TaskBatch
from .tasks.checks import set_checks  # the boundary checks of every learner entry point, on by default
from .unroll.learner import LearnedOptimizerLearner  # meta-trains a learned optimizer (innerloop train: lopt)

__all__ = [
    "ANIL",
    "CNP",
    "FOMAML",
    "IMAML",
    "MAML",
    "R2D2",
    "SGD",
    "SNAIL",
    "Adam",
    "AdamCorrection",
    "Baseline",
    "BaselinePlusPlus",
    "FactoredMLPOptimizer",
    "GradientLearner",
    "LearnedOptimizer",
    "LearnedOptimizerLSTM",
    "LearnedOptimizerLearner",
    "MAMLPlusPlus",
    "MLPOptimizer",
    "MatchingNets",
    "MetaCurvature",
    "MetaLearner",
    "MetaLearnerLSTM",
    "MetaOptNetSVM",
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
