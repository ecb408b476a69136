"""The billing and guard-rail RPCs (a part of ``GpuProxyService``): payments, transactions,
credits, usage, the account stream, spending windows and the spending check."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date
from typing import TYPE_CHECKING, Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from domain.errors import InsufficientCreditsError, InvalidArgumentError, SpendingLimitExceededError
from domain.money import micros_to_usd
from domain.services.payments import PaymentRequest
from interfaces.grpc import convert
from interfaces.grpc.calls import Guard, current, read
from interfaces.grpc.convert import positive_usd_in, ranged, text, usd_out
from interfaces.grpc.errors import message_of
from interfaces.grpc.generated import gpuproxy as pb
from interfaces.payment_input import payment_method, processor_of

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

WATCH_POLL_SECONDS = 0.25


class BillingRpcs:
    """Mixed into ``GpuProxyService`` (which sets ``c`` and ``guard``)."""

    c: Container
    guard: Guard

    async def create_payment(
        self, create_payment_request: pb.CreatePaymentRequest
    ) -> pb.CreatePaymentResponse:
        """``POST /api/v1/billing/payment``: same checks; key from ``idempotency-key``."""
        request = create_payment_request
        call = current()
        settings = self.c.settings
        processor = processor_of(call.header("x-billing"), request.provider or None)
        self.c.payments.require(processor)
        if (request.currency or "USD").upper() != "USD":
            raise InvalidArgumentError("only USD is supported", field="currency")
        amount = positive_usd_in(request.amount, "amount")
        if amount % 10_000:
            raise InvalidArgumentError("amount must be whole cents", field="amount")
        if not settings.payments.minimum <= amount <= settings.payments.maximum:
            raise InvalidArgumentError(
                f"amount must be between {micros_to_usd(settings.payments.minimum)} and "
                f"{micros_to_usd(settings.payments.maximum)} USD",
                field="amount",
            )
        stripe = self.c.stripe
        method = payment_method(
            processor,
            request.payment_method,
            test_card=stripe.test_payment_method
            if stripe is not None and stripe.is_test_mode
            else None,
            networks=(settings.payments.crypto_network,)
            if settings.payments.crypto_enabled
            else (),
        )
        key = call.header("idempotency-key") or f"auto-{uuid.uuid4()}"
        if len(key) > 255 or "\x00" in key:
            raise InvalidArgumentError("idempotency-key is too long", field="idempotency-key")
        payment, new = await self.c.payments.create(
            PaymentRequest(
                owner=call.user.user_id,
                amount=amount,
                currency="USD",
                processor=processor,
                method=method,
                key=key,
            )
        )
        if payment.state == "failed":  # REST answers 402 with the payment
            raise GRPCError(
                Status.FAILED_PRECONDITION,
                f"payment {payment.id} failed: {payment.failure or 'declined'}",
            )
        answer = pb.CreatePaymentResponse(
            payment_id=str(payment.id),
            status=payment.state,
            amount=usd_out(payment.amount),
            currency=payment.currency,
            provider=payment.processor,
            credited=usd_out(payment.credited),
            failure=payment.failure or "",
            next_action_url=payment.next_action_url or "",
            replayed=not new,
            idempotency_key=key,
        )
        if payment.processor == "crypto":
            answer.crypto = pb.CryptoInstructions(
                network=payment.method.get("network", ""),
                token="USDC",  # noqa: S106 - the asset's name, not a secret
                token_contract=payment.method.get("contract", ""),
                pay_to=payment.method.get("to", ""),
                from_wallet=payment.method.get("wallet", ""),
                amount_units=payment.amount,
                expires_at=convert.when(payment.expires_at),
            )
        return answer

    async def get_transactions(
        self, get_transactions_request: pb.GetTransactionsRequest
    ) -> pb.GetTransactionsResponse:
        request = get_transactions_request
        user = current().user
        limit = ranged(request.limit, "limit", 1, 500) if request.limit else 50
        offset = ranged(request.offset, "offset", 0, 10_000)
        before = ranged(request.before_id, "before_id", 0, 2**63 - 1) or None

        def page() -> tuple[list[Any], int]:
            rows = self.c.queries.transactions(user.user_id, limit=limit + offset, before=before)
            return rows[offset:], self.c.queries.transaction_count(user.user_id)

        rows, total = await read(self.c, page)
        return pb.GetTransactionsResponse(
            transactions=[convert.transaction_message(r) for r in rows],
            total_count=total,
            next_before_id=rows[-1].position if len(rows) == limit else 0,
        )

    async def list_payments(
        self, list_payments_request: pb.ListPaymentsRequest
    ) -> pb.ListPaymentsResponse:
        user = current().user
        wanted = list_payments_request.limit
        limit = ranged(wanted, "limit", 1, 100) if wanted else 100
        rows = await read(self.c, self.c.payment_queries.for_user, user.user_id, limit=limit)
        return pb.ListPaymentsResponse(payments=[convert.payment_record(r) for r in rows])

    async def get_credits(self, get_credits_request: pb.GetCreditsRequest) -> pb.GetCreditsResponse:
        user = current().user
        return convert.credits_message(await read(self.c, self.c.queries.balance, user.user_id))

    async def get_usage(self, get_usage_request: pb.GetUsageRequest) -> pb.GetUsageResponse:
        request = get_usage_request
        user = current().user
        days: list[date | None] = []
        for name in ("since", "until"):
            raw = text(getattr(request, name), name, 10).strip()
            try:
                days.append(date.fromisoformat(raw) if raw else None)
            except ValueError:
                raise InvalidArgumentError(f"{name} must be YYYY-MM-DD", field=name) from None
        since, until = days
        if since and until and since > until:
            raise InvalidArgumentError("since must not be after until", field="since")
        rows = await read(
            self.c,
            self.c.queries.usage,
            user.user_id,
            since.isoformat() if since else None,
            until.isoformat() if until else None,
        )
        return pb.GetUsageResponse(
            days=[
                pb.UsageDay(
                    day=d.day,
                    spent=usd_out(d.spent),
                    requests=d.spend_count,
                    granted=usd_out(d.granted),
                    debited=usd_out(d.debited),
                )
                for d in rows
            ]
        )

    async def watch_account(
        self, watch_account_request: pb.WatchAccountRequest
    ) -> AsyncIterator[pb.Transaction]:
        """Money movements after ``after_id`` (0: from now on), then each new one."""
        user = current().user
        after = ranged(watch_account_request.after_id, "after_id", 0, 2**63 - 1)
        if after == 0:
            after = await read(self.c, self.c.queries.last_position, user.user_id)
        while not self.guard.draining:
            rows = await read(self.c, self.c.queries.transactions_after, user.user_id, after, 100)
            for row in rows:
                yield convert.transaction_message(row)
                after = row.position
            if len(rows) < 100:
                await asyncio.sleep(WATCH_POLL_SECONDS)

    # ------------------------------------------------------------ guard rails

    async def get_spending_info(
        self, get_spending_info_request: pb.GetSpendingInfoRequest
    ) -> pb.GetSpendingInfoResponse:
        user = current().user
        # An aggregate load (snapshot + newer events), not a short read: off the loop.
        report = await asyncio.to_thread(self.c.ledger.spending, user.user_id)
        return pb.GetSpendingInfoResponse(
            windows=convert.spending_windows(report),
            guard_rails_enabled=report.enabled,
            total_spent_24_h=usd_out(report.spent.get("1440MIN", 0)),
        )

    async def check_spending_limit(
        self, check_spending_limit_request: pb.CheckSpendingLimitRequest
    ) -> pb.CheckSpendingLimitResponse:
        """Would a charge of ``amount`` be allowed now? A refusal is an answer, not an error."""
        user = current().user
        amount = positive_usd_in(check_spending_limit_request.amount, "amount")
        try:
            await asyncio.to_thread(self.c.ledger.check_spend, user.user_id, amount)
        except SpendingLimitExceededError as exc:
            return pb.CheckSpendingLimitResponse(
                allowed=False,
                reason=message_of(exc),
                would_exceed=convert.violation_windows(exc.violations),
            )
        except InsufficientCreditsError as exc:
            return pb.CheckSpendingLimitResponse(allowed=False, reason=message_of(exc))
        return pb.CheckSpendingLimitResponse(allowed=True)
