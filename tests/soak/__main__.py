"""python -m tests.soak [--minutes N] [--rate R] [--seed S] ...: see tests/soak/run.py."""

import sys

from tests.soak.run import main

sys.exit(main())
