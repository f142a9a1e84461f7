"""Celery workers: embed-and-upsert, prune and re-embed tasks on Redis, thin wrappers over geoloc.jobs."""
