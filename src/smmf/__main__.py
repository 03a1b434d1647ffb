"""``python -m smmf``: the same as the ``smmf`` command."""

import sys

from .cli import main

sys.exit(main())
