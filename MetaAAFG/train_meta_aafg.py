"""Stage one, Meta-AAFG: write the augmented images (the paper's command).

    cd MetaAAFG && python train_meta_aafg.py --dataset VOC --epsilon 8/255 --meta_steps 10 --save_path ./augmented_data

The command line is ``icm/aafg/train.py``; the algorithm, top to bottom, ``icm/aafg/meta_aafg.py``.
"""

import sys

from icm.aafg.train import main

if __name__ == "__main__":
    sys.exit(main())
