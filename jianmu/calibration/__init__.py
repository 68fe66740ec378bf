"""Calibration: the temperature that makes probabilities honest, the unknown-species rule (feature
statistics, a score per image, a threshold per number of test-time views) and the rank rule (an
answer at the deepest rank the model is sure of).

- :mod:`jianmu.calibration.scores`, :mod:`jianmu.calibration.ranks` and
  :mod:`jianmu.calibration.apply`: what a model needs at predict time, numpy only (an ONNX bundle
  uses them without torch, scipy or scikit-learn);
- :mod:`jianmu.calibration.fit`: fitting all of it on a model's own outputs, through the same
  runner and preprocessing that later apply it; after training, and again for an int8 export.
"""
