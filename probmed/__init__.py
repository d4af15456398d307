"""ProbMed: probabilistic multimodal medical binding with PyTorch Lightning."""
from probmed.embedding import GaussianEmbedding

__version__ = "0.1.0"
__all__ = ["GaussianEmbedding", "__version__"]
