from .anil import ANIL
from .base import MetaLearner
from .baseline import BaseClassTasks, Baseline, BaselinePlusPlus
from .cnp import CNP
from .forward_pass import ForwardPassLearner
from .gradient import GradientLearner
from .imaml import IMAML
from .maml import FOMAML, MAML
from .mamlpp import MAMLPlusPlus
from .matching import MatchingNets
from .metaoptnet import R2D2, MetaOptNetSVM
from .metasgd import MetaSGD
from .metric import EmbeddingHeadLearner, Head
from .pretrained import Pretrained
from .protonets import ProtoNets, PrototypeHead
from .reptile import Reptile
from .snail import SNAIL

__all__ = [
    "ANIL",
    "CNP",
    "FOMAML",
    "IMAML",
    "MAML",
    "R2D2",
    "SNAIL",
    "BaseClassTasks",
    "Baseline",
    "BaselinePlusPlus",
    "EmbeddingHeadLearner",
    "ForwardPassLearner",
    "GradientLearner",
    "Head",
    "MAMLPlusPlus",
    "MatchingNets",
    "MetaLearner",
    "MetaOptNetSVM",
    "MetaSGD",
    "Pretrained",
    "ProtoNets",
    "PrototypeHead",
    "Reptile",
]
