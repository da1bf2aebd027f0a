"""python -m tica.plan: see tica.plan.main."""

import sys

from . import main

sys.exit(main())
