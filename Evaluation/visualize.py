"""One picture of what MAA-ICM does: original, augmented, perturbation, anchor- and MAA-decoded.

    python Evaluation/visualize.py --config configs/toy.yaml --augmented_data runs/demo/augmented_data \\
        --anchor assets/toy/codec_q2.pth.tar --maa runs/demo/codecs/maa_q2/last.pth.tar

The code is ``icm/evaluation/visualize.py``.
"""

import sys

from icm.evaluation.visualize import main

if __name__ == "__main__":
    sys.exit(main())
