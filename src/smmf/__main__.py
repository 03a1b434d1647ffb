"""``python -m smmf``: the same as the ``smmf`` command."""

import sys

from .commands.main import main

sys.exit(main())
