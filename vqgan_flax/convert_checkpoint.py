"""Kept for existing imports and ``python -m vqgan_flax.convert_checkpoint``: the taming mapping
lives in ``vqgan_flax.conversion``, the command line in ``vqgan_flax.cli.convert``."""

import sys

from .cli.convert import DESCRIPTION, add_arguments, build_parser, main, run  # noqa: F401
from .conversion import *  # noqa: F403
from .conversion import __all__  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
