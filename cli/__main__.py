"""``python -m fedrec.cli``."""

import sys

from fedrec.cli import main

sys.exit(main())
