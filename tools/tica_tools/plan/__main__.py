"""python -m tica_tools.plan: see tica_tools.plan.main."""

import sys

from . import main

sys.exit(main())
