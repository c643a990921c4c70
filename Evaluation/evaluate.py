"""Evaluation: rate, PSNR, MS-SSIM and mAP of codecs from real bitstreams.

    cd Evaluation && python evaluate.py --dataset toy --codecs none jpeg webp

The command line is ``icm/evaluation/evaluate.py``, the work ``icm/evaluation/engine.py``.
"""

import sys

from icm.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
