"""Inner-loop update rules as composable values (optax's way): ``(grads, state, params, step, loss) -> (updates,
state)``, applied by the engine as ``params + updates``. ``RULES`` names the built-in ones for the config."""

from .adam import Adam, AdamCorrection
from .base import State, UpdateRule, apply_updates, stop_gradient
from .combine import Chain, FirstOrder, Partition, chain, first_order, partition
from .factored import FactoredMLPOptimizer
from .lopt import MLPOptimizer, PerParameterMLP
from .lstm import CoordinateLSTMCell, LearnedOptimizerLSTM, MetaLearnerLSTM, coordinate_zeros, preprocess
from .rates import SGD, MetaCurvature, MetaSGDRates, PerLayerPerStepRates, Scale, scale

RULES = {
    "sgd": SGD,
    "metasgd": MetaSGDRates,
    "lslr": PerLayerPerStepRates,
    "metacurvature": MetaCurvature,
    "lstm-optimizer": LearnedOptimizerLSTM,
    "meta-lstm": MetaLearnerLSTM,
    "adam": Adam,
    "adam-correction": AdamCorrection,
    "lopt-mlp": MLPOptimizer,
    "lopt-adafactor": FactoredMLPOptimizer,
}

__all__ = [
    "RULES",
    "SGD",
    "Adam",
    "AdamCorrection",
    "Chain",
    "CoordinateLSTMCell",
    "FactoredMLPOptimizer",
    "FirstOrder",
    "LearnedOptimizerLSTM",
    "MLPOptimizer",
    "MetaCurvature",
    "MetaLearnerLSTM",
    "MetaSGDRates",
    "Partition",
    "PerLayerPerStepRates",
    "PerParameterMLP",
    "Scale",
    "State",
    "UpdateRule",
    "apply_updates",
    "chain",
    "coordinate_zeros",
    "first_order",
    "partition",
    "preprocess",
    "scale",
    "stop_gradient",
]
