"""The main bft-ray job (``make demo``, ``ray job submit``): see :mod:`bft_ray.demo`.

Runs on a local embedded Ray, or on a cluster::

    ray job submit --working-dir . -- python jobs/demo.py --gpus-per-executor 0
"""

from __future__ import annotations

import sys

from bft_ray.demo import main

if __name__ == "__main__":
    sys.exit(main())
