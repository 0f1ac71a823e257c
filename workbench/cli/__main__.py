import sys

from workbench.cli import app

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
