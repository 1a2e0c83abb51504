"""Entry point of ``python -m bundle``."""

import sys

from .cli import main

sys.exit(main())
