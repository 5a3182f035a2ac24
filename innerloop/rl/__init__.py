"""Meta-reinforcement learning: task families, policies, MAML-TRPO, ProMP, RL² and PEARL, the MAML paper's protocol."""

from .envs import FAMILIES, TaskFamily, make_family
from .learner import MetaPolicyLearner
from .maml_trpo import MAMLTRPO
from .pearl import PEARL
from .pearl_agent import PEARLAgent
from .policies import CategoricalMLPPolicy, GaussianMLPPolicy, make_policy
from .promp import ProMP
from .recurrent import RecurrentPolicy
from .rl2 import RL2
from .sampler import Episodes, rollout

__all__ = [
    "FAMILIES",
    "MAMLTRPO",
    "PEARL",
    "RL2",
    "CategoricalMLPPolicy",
    "Episodes",
    "GaussianMLPPolicy",
    "MetaPolicyLearner",
    "PEARLAgent",
    "ProMP",
    "RecurrentPolicy",
    "TaskFamily",
    "make_family",
    "make_policy",
    "rollout",
]
