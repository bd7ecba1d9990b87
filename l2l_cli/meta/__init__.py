"""Meta-training: truncated BPTT over optimizee runs, validation and checkpoints."""
