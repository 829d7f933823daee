"""fastpnr: fast continual self-supervised learning with Pseudo-Negative Regularization."""
__version__ = "0.1.0"
