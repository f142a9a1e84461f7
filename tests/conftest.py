"""Shared fixtures: the real service processes live in tests/services.py; one real backbone per session."""

import pytest

pytest_plugins = ["tests.services", "tests.api_helpers", "tests.gallery_helpers", "tests.page_helpers"]


@pytest.fixture(scope="session")
def embedder():
    """The default embedder (EfficientNet-Lite0, ImageNet weights), loaded once for the whole session."""
    from geoloc.embedding import Embedder
    from geoloc.models.backbone import Backbone

    return Embedder(Backbone(batch_size=16))
