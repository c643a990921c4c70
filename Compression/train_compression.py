"""Stage two: fine-tune a CompressAI codec on stage one's images (the paper's command).

    cd Compression && python train_compression.py --backbone bmshj2018 --quality 3 --lr 1e-4 --dataset ./augmented_data

The command line and training loop are ``icm/compression/train.py``.
"""

import sys

from icm.compression.train import main

if __name__ == "__main__":
    sys.exit(main())
