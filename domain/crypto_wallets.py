"""NamedWallet: the crypto requests that name one sending wallet on one network.

A transfer of a request's exact amount pays that request (``domain.crypto_amounts``). Any other
amount (a part payment, a rounded one) names only the wallet it came from, and anyone can name
any wallet in a request. So such a transfer pays a request only when every request that can
still be paid and names that wallet is one user's (``payer``); requests from several users
make it ambiguous, for an admin. Each request is recorded here in the same save as the
request itself, and kept while it can be paid (its deadline + the late window, ``until``).

The id is derived from the network and the wallet (lower-case), so every replica finds the
same aggregate; two requests naming one wallet at once conflict on its version, and the
later one is retried on fresh state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

NAMED_WALLET_NAMESPACE = UUID("2b7c5e1a-8d4f-4c3b-a6e9-5f0d1c2b3a47")


def named_wallet_id(network: str, wallet: str) -> UUID:
    return uuid5(NAMED_WALLET_NAMESPACE, f"{network}\n{wallet.lower()}")


class NamedWallet(Aggregate):
    @staticmethod
    def create_id(network: str, wallet: str, **_: Any) -> UUID:
        return named_wallet_id(network, wallet)

    @event("Opened")
    def __init__(self, network: str, wallet: str) -> None:
        self.network = network
        self.wallet = wallet.lower()
        self.requests: dict[str, dict[str, Any]] = {}  # payment id -> owner, at, until

    def name(self, payment_id: str, owner: str, *, until: datetime, now: datetime) -> None:
        """Record a request naming this wallet, payable until ``until``."""
        self._named(payment_id=payment_id, owner=owner, until=until, at=now)

    @event("Named")
    def _named(self, payment_id: str, owner: str, until: datetime, at: datetime) -> None:
        # requests that can no longer be paid are forgotten: the state stays bounded
        self.requests = {k: v for k, v in self.requests.items() if v["until"] > at}
        self.requests[payment_id] = {"owner": owner, "at": at, "until": until}

    def payable(self, now: datetime) -> list[tuple[str, str]]:
        """(payment id, owner) of the requests that can still be paid, oldest first."""
        live = [(r["at"], pid, r["owner"]) for pid, r in self.requests.items() if r["until"] > now]
        return [(pid, owner) for _, pid, owner in sorted(live)]

    def payer(self, now: datetime) -> str | None:
        """The one user whose requests name this wallet now, or ``None`` (none, or several)."""
        owners = {owner for _, owner in self.payable(now)}
        return owners.pop() if len(owners) == 1 else None

    def claim(self, now: datetime, is_open: Callable[[str], bool]) -> tuple[str, str]:
        """The request a transfer from this wallet pays: (payment id, "claimed"), or ("",
        "ambiguous") when several users' requests name it, or ("", "unmatched") when none
        does. Of one user's requests: the oldest still open (``is_open``, asked of the
        payment), else the newest (a late or extra payment)."""
        payable = [payment_id for payment_id, _ in self.payable(now)]
        if not payable:
            return "", "unmatched"
        if self.payer(now) is None:
            return "", "ambiguous"
        return next((p for p in payable if is_open(p)), payable[-1]), "claimed"
