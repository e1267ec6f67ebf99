"""`python -m recipes RECIPE ...`: the same as the console script `msam RECIPE ...` (see `recipes.cli`)."""

import sys

from recipes import cli

sys.exit(cli.main())
