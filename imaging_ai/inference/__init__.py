"""Model-side inference library: network, sliding-window predictor, findings, training, evaluation.

Only the modules that need them import torch/MONAI (`network`, `predictor`, `training`,
`evaluation`); `grid` and `findings` are numpy/scipy only, so Lambdas may use them.
"""
