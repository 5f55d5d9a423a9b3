"""animexpr: an anime facial-expression dataset from Danbooru, and the expression GAN trained on it."""

__version__ = "0.1.0"
