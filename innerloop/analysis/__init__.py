"""What adaptation does and what was meta-learned: tools on any learner and task source (issue 23; docs/analysis.md).

Layer: above ``training`` (``innerloop analyze`` reads checkpoints through its builders), beside ``plots``.
"""

from .adaptation import (
    activations,
    adaptation_path,
    default_layers,
    finetune,
    held_out_tasks,
    parameter_change,
    policy_paths,
    representation_similarity,
)
from .blackbox import attention_weights, cnp_probe, linear_probe, snail_attention
from .embedding import embedding_finetune, embedding_similarity
from .report import analyze, write_report
from .rules import has_state, response_curves, rule_readout
from .similarity import canonical_correlations, linear_cka, pwcca, similarity, svcca

__all__ = [
    "activations",
    "adaptation_path",
    "analyze",
    "attention_weights",
    "canonical_correlations",
    "cnp_probe",
    "default_layers",
    "embedding_finetune",
    "embedding_similarity",
    "finetune",
    "has_state",
    "held_out_tasks",
    "linear_cka",
    "linear_probe",
    "parameter_change",
    "policy_paths",
    "pwcca",
    "representation_similarity",
    "response_curves",
    "rule_readout",
    "similarity",
    "snail_attention",
    "svcca",
    "write_report",
]
