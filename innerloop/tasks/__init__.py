from .batch import TaskBatch
from .sinusoid import SinusoidTasks

__all__ = ["TaskBatch", "SinusoidTasks"]
