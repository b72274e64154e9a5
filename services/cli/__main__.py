"""``python -m services.cli`` is ``nudge``."""

import sys

from services.cli import main

sys.exit(main())
