"""PyInstaller's entry script: the same `main()` the `loopchat` command runs."""

import sys

from desktop.app import main

if __name__ == "__main__":
    sys.exit(main())
