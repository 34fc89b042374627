"""``python -m simulator``: see simulator.service."""

import sys

from .service import main

sys.exit(main())
