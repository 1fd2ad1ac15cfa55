"""`python -m connector` is the same as the `building-twin-connector` console script."""

import sys

from connector.cli import main

sys.exit(main())
