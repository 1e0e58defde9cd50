"""`python -m probes` runs the probes command line."""
import sys

from probes.cli import main

sys.exit(main())
