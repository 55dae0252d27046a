"""Input and output between compiled segments: checkpoints, atomic files, metrics."""
