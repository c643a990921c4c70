"""Tables, BD-rates with bootstrap intervals and plots from evaluation results.

    cd Evaluation && python make_tables.py ../results/*.json --out ../tables

The code is ``icm/evaluation/make_tables.py``.
"""

import sys

from icm.evaluation.make_tables import main

if __name__ == "__main__":
    sys.exit(main())
