"""jianmu: image classifiers for border inspection (wood, weed seeds, insect pests)."""

__version__ = "0.1.0"
