"""Meta-reinforcement learning: task families, policies, MAML-TRPO and ProMP, the MAML paper's protocol."""

from .envs import FAMILIES, TaskFamily, make_family
from .learner import MetaPolicyLearner
from .maml_trpo import MAMLTRPO
from .policies import CategoricalMLPPolicy, GaussianMLPPolicy, make_policy
from .promp import ProMP
from .sampler import Episodes, rollout

__all__ = [
    "FAMILIES",
    "MAMLTRPO",
    "CategoricalMLPPolicy",
    "Episodes",
    "GaussianMLPPolicy",
    "MetaPolicyLearner",
    "ProMP",
    "TaskFamily",
    "make_family",
    "make_policy",
    "rollout",
]
