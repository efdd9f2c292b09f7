"""Turn image parts into base64 data for providers that need the bytes (Anthropic tool results, Gemini).

Remote images are fetched with httpx2 under a byte limit and a timeout. Every failure raises
`ImageFetchError` with a sentence that can be shown to the model as a tool error.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from dataclasses import dataclass

import httpx2

from config.netguard import NonPublicAddress, refuse_non_public
from steps.values import Base64ImageSource, ImageContent, UrlImageSource

DEFAULT_MAX_IMAGE_BYTES = 5 * 1024 * 1024  # Anthropic's per-image limit; Gemini inline data allows more.
DEFAULT_FETCH_TIMEOUT = 10.0
SUPPORTED_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class ImageFetchError(Exception):
    """An image could not be turned into bytes; the message is fit to show to the model."""


@dataclass(frozen=True, slots=True)
class ImageData:
    media_type: str
    data: str  # base64

    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{self.data}"

    def raw(self) -> bytes:
        return base64.b64decode(self.data)


def sniff_media_type(data: bytes) -> str | None:
    """The image type from the first bytes, or None when it is not a supported image."""
    for magic, media_type in _MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _parse_data_url(url: str) -> ImageData:
    header, _, payload = url.partition(",")
    media_type = header[5:].split(";")[0] or "application/octet-stream"
    if ";base64" not in header:
        raise ImageFetchError("Image data URL is not base64 encoded.")
    if media_type not in SUPPORTED_MEDIA_TYPES:
        raise ImageFetchError(f"Unsupported image type {media_type!r} (supported: {', '.join(SUPPORTED_MEDIA_TYPES)}).")
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageFetchError("Image data URL holds invalid base64.") from exc
    return ImageData(media_type=media_type, data=payload)


def _check_public(request: httpx2.Request) -> None:
    """Refuse URLs that resolve to private, loopback or link-local addresses (redirects included).

    A tool return is data from outside; without this a URL like http://169.254.169.254/ would make
    Steplens fetch from its own network. STEPLENS_IMAGE_FETCH_ALLOW_PRIVATE=true lifts it (a lab setup).
    """
    if os.environ.get("STEPLENS_IMAGE_FETCH_ALLOW_PRIVATE", "").lower() == "true":
        return
    host = request.url.host
    try:
        refuse_non_public(host, request.url.port or 443)
    except NonPublicAddress as exc:
        if exc.reason == "unresolved":
            raise ImageFetchError(f"Could not resolve the image host {host!r}.") from exc
        raise ImageFetchError(f"Refusing to fetch an image from a non-public address ({host}).") from exc


class ImageFetcher:
    """Fetches image URLs into base64 (`max_bytes` limit, `timeout` seconds for the whole download).

    One instance is shared by an adapter; `transport` lets tests serve images from memory.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        timeout: float = DEFAULT_FETCH_TIMEOUT,
        transport: httpx2.BaseTransport | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._transport = transport
        self._client: httpx2.Client | None = None
        self._lock = threading.Lock()

    def _http(self) -> httpx2.Client:
        with self._lock:
            if self._client is None:
                # An injected transport (tests, the scripted provider) serves from memory: nothing to guard.
                hooks = {"request": [_check_public]} if self._transport is None else {}
                self._client = httpx2.Client(
                    transport=self._transport,
                    timeout=self.timeout,
                    follow_redirects=True,
                    max_redirects=3,
                    event_hooks=hooks,
                )
            return self._client

    def resolve(self, image: ImageContent) -> ImageData:
        """The image as base64 with its media type; raises ImageFetchError with a readable reason."""
        source = image.source
        if isinstance(source, Base64ImageSource):
            return ImageData(media_type=source.media_type, data=source.data)
        assert isinstance(source, UrlImageSource)
        if source.url.startswith("data:"):
            return _parse_data_url(source.url)
        return self.fetch(source.url)

    def fetch(self, url: str) -> ImageData:
        """Download `url` within the byte limit and timeout and return it as base64."""
        import time

        deadline = time.monotonic() + self.timeout
        try:
            with self._http().stream("GET", url, headers={"accept": "image/*"}) as response:
                if response.status_code >= 400:
                    raise ImageFetchError(f"Could not load image {url}: HTTP {response.status_code}.")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ImageFetchError(f"Image {url} is too large ({int(declared)} bytes, limit {self.max_bytes}).")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ImageFetchError(f"Image {url} is too large (more than {self.max_bytes} bytes).")
                    if time.monotonic() > deadline:
                        raise ImageFetchError(f"Image {url} took longer than {self.timeout:g}s to download.")
                    chunks.append(chunk)
                content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        except ImageFetchError:
            raise
        except httpx2.TimeoutException as exc:
            raise ImageFetchError(f"Image {url} took longer than {self.timeout:g}s to download.") from exc
        except httpx2.HTTPError as exc:
            raise ImageFetchError(f"Could not load image {url}: {type(exc).__name__}.") from exc
        except httpx2.InvalidURL as exc:  # not an HTTPError: a host that is no valid IDNA name, say
            raise ImageFetchError(f"Could not load image {url}: not a valid URL.") from exc
        data = b"".join(chunks)
        media_type = sniff_media_type(data) or (content_type if content_type in SUPPORTED_MEDIA_TYPES else None)
        if media_type is None:
            shown = content_type or "unknown type"
            raise ImageFetchError(f"{url} is not a supported image ({shown}; supported: png, jpeg, gif, webp).")
        return ImageData(media_type=media_type, data=base64.b64encode(data).decode("ascii"))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
