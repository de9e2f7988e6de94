"""`python -m jfedrl.cli`: the `jfedrl` command."""

import sys

from jfedrl.cli import main

sys.exit(main())
