"""Stage two: fine-tune a CompressAI codec with stage one's augmented images as targets.

``datasets`` pairs originals with augmented images, ``losses`` holds the rate-distortion
loss on the pseudo ground truth, ``engine`` the train/validation steps, optimisers, RNG
and distributed helpers, and ``train_compression`` the command line.
"""
