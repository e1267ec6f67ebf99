"""`python -m keras_msam.tune_cli RECIPE ...`: the tuning command line (console script `msam-tune`).

The command lives with the recipes (`recipes/tune.py`), whose models and data it searches over; this
module only gives it a name inside the library. See `python -m keras_msam.tune_cli --help`.
"""

import sys

from recipes.tune import main

if __name__ == "__main__":
    sys.exit(main())
