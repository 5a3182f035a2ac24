from .engine import functional_model, inner_loop, map_tasks, StrategyChooser
from .params import named_params, select_adapted, split
from .update_rules import (
    SGD, LearnedOptimizerLSTM, MetaCurvature, MetaLearnerLSTM, MetaSGDRates, PerLayerPerStepRates, UpdateRule,
)

__all__ = [
    "functional_model", "inner_loop", "map_tasks", "StrategyChooser", "named_params", "select_adapted",
    "split", "UpdateRule", "SGD", "MetaSGDRates", "PerLayerPerStepRates", "MetaCurvature", "LearnedOptimizerLSTM",
    "MetaLearnerLSTM",
]
