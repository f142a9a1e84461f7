"""geoloc: where was this photo taken? Search-within-Cell over a Qdrant gallery."""

__version__ = "0.1.0"
