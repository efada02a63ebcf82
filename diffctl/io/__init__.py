"""All file IO: checkpoints, run folders, images."""
