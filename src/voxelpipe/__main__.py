"""``python -m voxelpipe``."""
import sys

from voxelpipe.cli import main

if __name__ == "__main__":
    sys.exit(main())
