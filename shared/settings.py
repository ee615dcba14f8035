"""Settings shared by every service, read from ``IMGPIPE_*`` environment variables.

Each service subclasses :class:`CommonSettings` in its own ``settings.py`` with the
few knobs only it needs. Defaults are safe for the local stack (``make run``);
credentials have no default in the repository: the local stack generates them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.netguard import NetPolicy


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGPIPE_", extra="ignore")

    # Kafka API
    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "imgpipe"
    # Topics are created with these (docs/deploy.md); an existing topic is kept.
    # Partitions bound how many processors share the work: size for the most.
    topic_partitions: int = 8
    topic_replication_factor: int = 1  # production: 3
    topic_min_insync_replicas: int = 1  # production: 2
    topic_retention_hours: float = 168.0  # how far back a replay can reach
    dead_letter_retention_hours: float = 720.0
    # Idempotent producers (Apache Kafka). Tansu has none: its local stack sets false.
    kafka_idempotence: bool = True

    # MongoDB API
    mongo_uri: str = "mongodb://127.0.0.1:27017"
    mongo_db: str = "imgpipe"
    mongo_max_idle_seconds: float = 60.0  # below any server or firewall idle timeout

    # S3 API
    s3_endpoint: str = "127.0.0.1:8333"
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    output_bucket: str = "imgpipe-output"
    # Base of the canonical object URLs stored in the database and in the
    # archived output CSV (<base>/<key>). They identify an object; they do not
    # open it (the bucket is private): clients get presigned links
    # (shared/links.py). Empty: derived from the S3 endpoint
    # (http(s)://endpoint/bucket). Keep it stable: stored URLs depend on it.
    public_base_url: str = ""
    # Where clients reach the S3 API (http(s)://host[:port]): output links are
    # signed for this endpoint. Empty: the services' own (s3_endpoint).
    s3_public_endpoint: str = ""
    # Lifetime of each output link, minted when it is handed out
    # (1 s to 7 days, the SigV4 maximum).
    output_link_seconds: int = Field(default=86400, ge=1, le=604800)

    # Outbound HTTP policy (image fetches and webhooks).
    fetch_allow_networks: str = ""
    fetch_allowed_ports: str = "80,443"

    # Where clients reach the status API (status_url in responses and webhooks).
    status_base_url: str = "http://127.0.0.1:8001"
    # Where browsers reach the upload page (its origin may read the status API).
    ingest_base_url: str = "http://127.0.0.1:8000"

    # A checked API key is trusted this long (a revoked one works this much longer).
    api_key_cache_seconds: float = 5.0

    log_level: str = "INFO"

    @field_validator("s3_public_endpoint")
    @classmethod
    def _endpoint_without_path(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value:
            return ""
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.netloc or url.path or url.query:
            raise ValueError("IMGPIPE_S3_PUBLIC_ENDPOINT must be http(s)://host[:port], "
                             f"without a path: {value!r}")
        return value

    def status_url(self, request_id: str) -> str:
        return f"{self.status_base_url.rstrip('/')}/api/v1/requests/{request_id}"

    def net_policy(self) -> NetPolicy:
        return NetPolicy.from_strings(self.fetch_allow_networks, self.fetch_allowed_ports)

    def public_object_url(self, key: str) -> str:
        base = self.public_base_url.rstrip("/")
        if not base:
            scheme = "https" if self.s3_secure else "http"
            base = f"{scheme}://{self.s3_endpoint}/{self.output_bucket}"
        return f"{base}/{key}"
