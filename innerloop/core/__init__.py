from .engine import StrategyChooser, functional_model, inner_loop, map_tasks
from .params import named_params, select_adapted, split
from .update_rules import (
    SGD,
    LearnedOptimizerLSTM,
    MetaCurvature,
    MetaLearnerLSTM,
    MetaSGDRates,
    PerLayerPerStepRates,
    UpdateRule,
)

__all__ = [
    "SGD",
    "LearnedOptimizerLSTM",
    "MetaCurvature",
    "MetaLearnerLSTM",
    "MetaSGDRates",
    "PerLayerPerStepRates",
    "StrategyChooser",
    "UpdateRule",
    "functional_model",
    "inner_loop",
    "map_tasks",
    "named_params",
    "select_adapted",
    "split",
]
