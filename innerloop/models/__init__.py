from .conv import Conv4
from .mlp import MLP
from .resnet12 import ResNet12

__all__ = ["MLP", "Conv4", "ResNet12"]
