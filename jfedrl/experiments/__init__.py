"""Work built on runs: sweeps (traced hyperparameters in one program), multi-seed
comparisons, evaluation on held-out clients, videos and policy export.
"""
