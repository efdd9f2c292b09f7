"""Image URLs from tool returns are never fetched from the server's own network."""

import pytest

from runner.providers.images import ImageFetcher, ImageFetchError


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/chart.png",
        "http://localhost/chart.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/a.png",
        "http://192.168.0.10/a.png",
        "http://[::1]/a.png",
    ],
)
def test_private_and_loopback_addresses_are_refused(url):
    with pytest.raises(ImageFetchError, match="non-public address"):
        ImageFetcher(timeout=2).fetch(url)


def test_the_guard_can_be_lifted_for_a_lab_setup(monkeypatch):
    monkeypatch.setenv("STEPLENS_IMAGE_FETCH_ALLOW_PRIVATE", "true")
    with pytest.raises(ImageFetchError) as info:  # nothing listens there: a connection error, not a refusal
        ImageFetcher(timeout=2).fetch("http://127.0.0.1:9/a.png")
    assert "non-public" not in str(info.value)


def test_an_url_whose_host_is_no_valid_name_is_an_image_fetch_error():
    """Found by schemathesis: an IDNA-invalid host made httpx raise InvalidURL, which no caller expected."""
    with pytest.raises(ImageFetchError, match="not a valid URL"):
        ImageFetcher(timeout=2).fetch("http://gzi\u00b3\U000ada7fw%\u00f1\u0100s/a.png")
