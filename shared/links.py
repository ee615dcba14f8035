"""Output links: what clients get to open the objects of the private output bucket.

The bucket is private (shared/storage.py): the database and the archived output
CSV keep each object's canonical, unsigned URL
(:meth:`CommonSettings.public_object_url`), which identifies it but does not
open it. Wherever a link is handed out (the status API's products and live
output CSV) it is mapped by :meth:`OutputLinks.link`: a URL of our bucket
becomes a presigned GET URL (SigV4), minted then, valid for
``output_link_seconds`` and signed for the endpoint clients reach
(``s3_public_endpoint``); any other URL (an external service's, from its
callback) is handed out unchanged.

Presigning is local: the client is given the region, so minio makes no request
(no bucket-location lookup) to sign a link.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from urllib.parse import unquote, urlsplit

from minio import Minio

from shared.settings import CommonSettings


class OutputLinks:
    """Maps stored output URLs to the links handed out (presigned for ours)."""

    def __init__(self, settings: CommonSettings, *, lifetime_seconds: int | None = None) -> None:
        scheme = "https" if settings.s3_secure else "http"
        service = f"{scheme}://{settings.s3_endpoint}"
        public = urlsplit(settings.s3_public_endpoint or service)
        self.bucket = settings.output_bucket
        seconds = settings.output_link_seconds if lifetime_seconds is None else lifetime_seconds
        self.lifetime = timedelta(seconds=seconds)
        # region given: presigning never asks the server for the bucket's location
        self._signer = Minio(public.netloc, access_key=settings.s3_access_key or None,
                             secret_key=settings.s3_secret_key or None,
                             secure=public.scheme == "https", region=settings.s3_region)
        # The URL prefixes of our objects: the canonical base, and the bucket
        # on either endpoint (URLs stored before public_base_url was set).
        bases = (settings.public_object_url(""), f"{service}/{self.bucket}/",
                 f"{public.scheme}://{public.netloc}/{self.bucket}/")
        self._prefixes = tuple(dict.fromkeys(bases))

    def key_of(self, url: str) -> str | None:
        """The object key of a URL of our bucket; None for any other URL."""
        if "?" in url or "#" in url:
            return None  # canonical URLs have neither: not one of ours
        for prefix in self._prefixes:
            if url.startswith(prefix) and len(url) > len(prefix):
                return unquote(url[len(prefix):])
        return None

    def link(self, url: str | None) -> str | None:
        """The link to hand out for a stored URL: ours presigned, others as they are."""
        if url is None:
            return None
        key = self.key_of(url)
        if key is None:
            return url
        return self._signer.presigned_get_object(self.bucket, key, expires=self.lifetime)

    def links(self, urls: Iterable[str | None]) -> list[str | None]:
        return [self.link(u) for u in urls]


def output_csv_link(settings: CommonSettings, request_id: str,
                    stored: str | None) -> str | None:
    """The output CSV link handed out (status document, webhook): the status
    API's ``output.csv`` (fresh links on every download), once the notifier has
    archived the CSV (``stored``, the DB field, says it has); None before."""
    if not stored:
        return None
    return f"{settings.status_url(request_id)}/output.csv"
