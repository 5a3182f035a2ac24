"""``python benchmarks/speed ...`` or ``python -m benchmarks.speed ...``: the speed suite's command line."""

import sys
from pathlib import Path

if __package__:  # python -m benchmarks.speed
    from .cli import main
else:  # python benchmarks/speed: this folder is sys.path[0]; import the package from its parent instead
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    from speed.cli import main

if __name__ == "__main__":
    main()
