from .anil import ANIL
from .base import GradientLearner, MetaLearner
from .cnp import CNP
from .maml import FOMAML, MAML
from .metasgd import MetaSGD
from .pretrained import Pretrained
from .protonets import ProtoNets
from .reptile import Reptile
from .snail import SNAIL

__all__ = [
    "ANIL",
    "CNP",
    "FOMAML",
    "MAML",
    "SNAIL",
    "GradientLearner",
    "MetaLearner",
    "MetaSGD",
    "Pretrained",
    "ProtoNets",
    "Reptile",
]
