"""The torch layer: data, models, the focal loss, metrics, calibration, training one trial or K
fused trials, and checkpoints. It knows nothing of Optuna or storage: a trainer reports each epoch
through a callback and is told to stop by it."""
