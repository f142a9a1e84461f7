"""The reference gallery: located photo embeddings in Qdrant, behind one small interface."""
