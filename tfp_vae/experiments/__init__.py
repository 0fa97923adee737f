"""The lecture's experiments, built on the library: PCA and plain-AE baselines,
the PCA / AE / VAE comparison, and encoder transfer to a classifier.

    python scripts/train.py --model=pca|ae     # experiments.baselines
    python scripts/compare.py                  # experiments.compare (uses transfer)
"""
