"""`python -m geoloc.cli`: the same command line as `geoloc`."""

import sys

from geoloc.cli import main

sys.exit(main())
