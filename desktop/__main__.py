"""`python -m desktop`: the same as the `loopchat` command."""

import sys

from desktop.app import main

sys.exit(main())
