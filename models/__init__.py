"""Image backbones that turn photos into embedding vectors."""
