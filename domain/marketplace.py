"""The GPU marketplace port: what every provider adapter (vast.ai, io.net, sandbox) offers.

Adapters live in ``infrastructure/providers/``; tests drive the real adapters against local
fake servers that follow the real APIs. Money here is integer micro-USD per hour for the
whole offer (all its GPUs), before our markup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

INSTANCE_STATES = ("provisioning", "running", "stopping", "terminated", "failed", "unknown")


@dataclass(frozen=True)
class Offer:
    """A rentable machine, normalised across providers."""

    provider: str  # "vast.ai" | "io.net" | "sandbox"
    offer_id: str
    gpu_model: str  # e.g. "RTX 4090", "A100 SXM4 80GB"
    num_gpus: int
    vram_gb: float  # per GPU
    price_per_hour: int  # micro-USD per hour for the whole offer
    location: str  # e.g. "US", "Norway, NO"
    reliability: float  # 0..1 (1 if the provider gives none)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OfferQuery:
    """Filters; each adapter applies what its API can and re-checks all of them locally."""

    min_vram_gb: float | None = None
    max_price_per_hour: int | None = None  # micro-USD for the whole offer
    gpu_model: str | None = None  # case-insensitive substring match
    region: str | None = None  # case-insensitive substring of the location
    num_gpus: int | None = None  # exact count
    limit: int = 64

    def accepts(self, offer: Offer) -> bool:
        return (
            (self.min_vram_gb is None or offer.vram_gb >= self.min_vram_gb)
            and (self.max_price_per_hour is None or offer.price_per_hour <= self.max_price_per_hour)
            and (self.gpu_model is None or self.gpu_model.lower() in offer.gpu_model.lower())
            and (self.region is None or self.region.lower() in offer.location.lower())
            and (self.num_gpus is None or offer.num_gpus == self.num_gpus)
        )


@dataclass(frozen=True)
class RentRequest:
    """What to run on a rented machine; ``label`` is our instance id (for reconciliation)."""

    label: str
    image: str = "nvidia/cuda:12.4.1-base-ubuntu22.04"
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = (8000,)
    disk_gb: int = 20
    onstart: str = ""


@dataclass(frozen=True)
class ProviderInstance:
    """An instance as the provider reports it."""

    provider: str
    instance_id: str
    status: str  # one of INSTANCE_STATES
    raw_status: str = ""  # the provider's own word, for logs and audit
    label: str | None = None
    host: str | None = None
    port: int | None = None  # the mapped port for the first requested container port
    price_per_hour: int | None = None  # micro-USD per hour, when the provider reports it
    started_at: float | None = None  # epoch seconds, when the provider reports it


class ProviderError(Exception):
    """A provider call failed. ``retryable``: trying again later may work."""

    retryable = False

    def __init__(self, provider: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.status = status


class ProviderAuthError(ProviderError):
    """The API key is missing, wrong or lacks permission (never retried)."""


class ProviderRateLimitedError(ProviderError):
    retryable = True


class ProviderUnavailableError(ProviderError):
    """Network error, timeout or 5xx after bounded retries."""

    retryable = True


class OfferUnavailableError(ProviderError):
    """The offer is gone or was taken (vast.ai ``no_such_ask``, io.net sold out)."""


class InsufficientProviderCreditError(ProviderError):
    """Our account at the provider cannot pay for this rental."""


class InstanceNotFoundError(ProviderError):
    """The provider does not know this instance (any more)."""


class InvalidProviderRequestError(ProviderError):
    """The provider refused the request as malformed (e.g. io.net 422)."""


class GpuProvider(Protocol):
    """One marketplace. All methods are async (httpx) and raise ``ProviderError`` subclasses."""

    @property
    def name(self) -> str: ...

    async def search(self, query: OfferQuery) -> list[Offer]: ...

    async def rent(self, offer_id: str, request: RentRequest) -> ProviderInstance: ...

    async def status(self, instance_id: str) -> ProviderInstance: ...

    async def list_instances(self) -> list[ProviderInstance]: ...

    async def destroy(self, instance_id: str) -> None:
        """Idempotent: an instance that is already gone is not an error."""
        ...

    async def aclose(self) -> None: ...
