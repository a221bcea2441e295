"""cog-training-operator: run the training interface of Cog models on Kubernetes."""

__version__ = "0.1.0"
