from .batch import TaskBatch
from .checks import set_checks
from .sinusoid import SinusoidTasks

__all__ = ["SinusoidTasks", "TaskBatch", "set_checks"]
