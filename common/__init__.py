"""Code the four tasks share: tiling, metrics, image/mask/RLE I/O, sharding, demo-data rules.

Imports numpy, Pillow, scipy and scikit-learn, never a deep-learning framework (common/tests/test_demo.py checks it),
so it loads in both the PyTorch and the TensorFlow environment.
"""
