"""`python -m runtime` and the PyInstaller binary's entry script."""

import sys

from runtime.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
