"""Model files: checkpoints and PLY export."""
