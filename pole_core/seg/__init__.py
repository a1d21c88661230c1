"""Stage E: segmentation network (network.py), training (train.py), inference and scoring (infer.py)."""
