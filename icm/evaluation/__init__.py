"""Evaluation (stage three): real-bitstream rate, PSNR, MS-SSIM and detection accuracy of decoded images,
result JSON in CompressAI's schema, BD-rate tables and rate-accuracy plots."""
