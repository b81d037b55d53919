"""icdistill: Instance-Conditional Knowledge Distillation for torchvision detectors."""

__version__ = "0.1.0"
