"""The HTTP API (FastAPI, versioned under /v1): a thin layer over the core, with keys, limits and audit."""
