from .batch import TaskBatch
from .checks import set_checks
from .sinusoid import SinusoidTasks

__all__ = ["TaskBatch", "SinusoidTasks", "set_checks"]
