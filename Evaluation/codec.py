"""Encode one image into a real bitstream file and decode it back.

    python Evaluation/codec.py compress IMG -o FILE.bin --checkpoint CK.pth.tar
    python Evaluation/codec.py decompress FILE.bin -o IMG.png --checkpoint CK.pth.tar

The code (and the file layout) is ``icm/evaluation/codec_file.py``.
"""

import sys

from icm.evaluation.codec_file import main

if __name__ == "__main__":
    sys.exit(main())
