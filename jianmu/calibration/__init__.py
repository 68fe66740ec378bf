"""Calibration: the temperature that makes probabilities honest and the unknown-species rule
(feature statistics, a score per image, a threshold per number of test-time views).

- :mod:`jianmu.calibration.apply`: what a model needs at predict time, numpy only (an ONNX
  bundle uses it without torch, scipy or scikit-learn);
- :mod:`jianmu.calibration.fit`: fitting all of it on a model's own outputs, through the same
  runner and preprocessing that later applies it; after training, and again for an int8 export.
"""
