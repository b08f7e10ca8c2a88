"""ptq-mia: membership inference on post-training-quantized networks."""
