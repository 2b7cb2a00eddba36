"""`python -m vitops ...`: the same as the `vitops` command."""

import sys

from .app.cli import main

sys.exit(main())
