"""Few-shot image classification data.

* ``ImageDataset``: images decoded once into a uint8 ``(N, C, H, W)`` tensor, labels, class names.
* ``EpisodicTasks``: N-way K-shot tasks following the indexed task-source protocol
  (``sample(draw, tasks) -> TaskBatch``); ``fixed_tasks`` for fixed evaluation sets; ``read_episodes``
  for a published list of episodes (an ``EpisodeList``).
* Loaders: ``omniglot``, ``mini_imagenet``, ``cifar_fs``, ``fc100``, ``image_folder``.
"""

from ._common import ChecksumError, data_root
from .cifar import cifar_fs, fc100, load_cifar100
from .dataset import ImageDataset
from .episode_files import EpisodeList, read_episodes
from .episodes import EVAL_DRAW, EpisodicTasks, FixedTasks, fixed_tasks
from .folders import image_folder
from .mini_imagenet import mini_imagenet
from .omniglot import download_omniglot, omniglot

__all__ = [
    "EVAL_DRAW",
    "ChecksumError",
    "EpisodeList",
    "EpisodicTasks",
    "FixedTasks",
    "ImageDataset",
    "cifar_fs",
    "data_root",
    "download_omniglot",
    "fc100",
    "fixed_tasks",
    "image_folder",
    "load_cifar100",
    "mini_imagenet",
    "omniglot",
    "read_episodes",
]
