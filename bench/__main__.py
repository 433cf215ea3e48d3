"""`python -m bench` from the repository root: the same as `modelreg bench`."""

import sys

from bench.run import main

sys.exit(main())
