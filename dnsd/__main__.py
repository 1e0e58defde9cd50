"""`python -m dnsd` runs the dnsd command line."""
import sys

from dnsd.cli import main

sys.exit(main())
