"""``python -m vqgan_flax.cli``: the ``vqgan-flax`` command."""

import sys

from . import main

sys.exit(main())
