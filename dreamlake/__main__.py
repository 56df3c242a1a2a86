"""``python -m dreamlake``: the ``dreamlake`` command."""

import sys

from .cli import main

sys.exit(main())
