"""`python -m alignlib ...` (also what `deepspeed --module alignlib ...` and `torchrun -m alignlib ...` run)."""

import sys

from alignlib.cli import main

if __name__ == "__main__":
    sys.exit(main())
