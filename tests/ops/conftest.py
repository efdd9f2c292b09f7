"""Fixtures for the operability tests: scrapes of /metrics parsed into samples."""

import pytest
from django.core.cache import cache
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "test-metrics-token"


@pytest.fixture
def metrics_token(settings) -> str:
    settings.STEPLENS_METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture(autouse=True)
def _fresh_cache():
    """The banner and the recent-errors ring live in the cache: each test starts without them."""
    cache.clear()
    yield
    cache.clear()


def scrape(client, token: str = TOKEN) -> dict[tuple[str, tuple], float]:
    """GET /metrics -> {(sample name, sorted labels): value}."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples
