"""``python -m nlinit ...`` (and ``torchrun -m nlinit train ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
