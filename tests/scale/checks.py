"""What the scale run must show afterwards, read from the event store and the load's records.

Each check returns ``(ok, figures)``; ``figures`` go into the JSON result and the report.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from domain.instances import due_between
from tests.scale.load import LoadState, Rec


@dataclass
class Fault:
    name: str
    start: float  # monotonic
    back: float = 0.0  # the component is up again
    full: float = 0.0  # every door answers again (probes), 0: never seen
    front: float = 0.0  # the last probe through nginx that failed (0: none did)
    wall: float = field(default_factory=time.time)  # epoch seconds at ``start``
    caught_up: float = 0.0  # read models reached the head of the log as it was at ``full``


def all_events(container: Any) -> list[Any]:
    """Every stored event, decoded, in log order."""
    recorder = container.events.recorder
    mapper = container.app.mapper
    out: list[Any] = []
    start = 1
    while True:
        page = recorder.select_notifications(start=start, limit=1000)
        out.extend(mapper.to_domain_event(n) for n in page)
        if len(page) < 1000:
            return out
        start = page[-1].id + 1


def _name(event: Any) -> str:
    return type(event).__qualname__


def check_money(
    container: Any, state: LoadState, users: dict[str, str]
) -> tuple[bool, dict[str, Any]]:
    """Acknowledged grants exactly once, nothing else; balances add up; caps held."""
    events = all_events(container)
    per_account: dict[str, list[Any]] = defaultdict(list)
    for e in events:
        if _name(e).startswith("CreditAccount."):
            per_account[str(e.originator_id)].append(e)
    grant_keys: Counter[str] = Counter()
    grant_amounts: dict[str, int] = {}
    problems: list[str] = []
    accounts: dict[str, Any] = {}
    for user_id in users.values():
        view = container.ledger.account(user_id)
        history = per_account[str(view.account_id)]
        balance = low = 0
        cap = 0
        moves = Counter[str]()
        for e in history:
            name = _name(e).split(".")[-1]
            amount = int(getattr(e, "amount", 0) or 0)
            if name == "Granted":
                balance += amount
                key = str(e.key)
                if key.startswith("admin-grant:scale-"):
                    grant_keys[key.removeprefix("admin-grant:")] += 1
                    grant_amounts[key.removeprefix("admin-grant:")] = amount
            elif name in {"Charged", "HoldCaptured", "Debited"}:
                balance -= amount
            elif name == "CapSet":
                cap = int(e.cap)
            moves[name] += amount
            low = min(low, balance + cap) if name != "CapSet" else low
        if balance != view.balance:
            problems.append(
                f"{user_id}: events add up to {balance}, the account says {view.balance}"
            )
        if low < 0:
            problems.append(f"{user_id}: went {low} below minus its cap")
        accounts[user_id] = {"balance": balance, "cap": cap, "moves": dict(moves)}
    doubled = [k for k, n in grant_keys.items() if n > 1]
    missing = [k for k in state.grants_acked if grant_keys[k] != 1]
    unknown = [k for k in grant_keys if k not in state.grants_sent]
    wrong = [k for k, a in state.grants_acked.items() if grant_amounts.get(k) != a.amount]
    unacked = [k for k in grant_keys if k not in state.grants_acked]
    problems += [f"granted twice: {k}" for k in doubled]
    problems += [f"acknowledged, not stored once: {k}" for k in missing]
    problems += [f"stored, never sent: {k}" for k in unknown]
    problems += [f"wrong amount: {k}" for k in wrong]
    return not problems, {
        "grants_sent": len(state.grants_sent),
        "grants_acknowledged": len(state.grants_acked),
        "grants_stored": sum(grant_keys.values()),
        "stored_without_acknowledgement": len(unacked),
        "given_up": state.grants_given_up[:20],
        "accounts": accounts,
        "problems": problems[:50],
    }


def check_proxy_fees(
    container: Any, records: list[Rec], price: int, faults: list[Fault]
) -> tuple[bool, dict[str, Any]]:
    """Proxy fees captured from the replicas' credit leases: exactly the proxied requests
    answered 200 times the price. A SIGKILLed replica's fees are in Redis's fee tally and the
    elected hold sweep captures them (docs/adr/0029). The only slack: proxied requests in
    flight at the kill, whose fee the dead replica may have tallied without the answer
    reaching the client (or nginx retried them on another replica, which charged again)."""
    captured = 0
    for e in all_events(container):
        if _name(e) == "CreditAccount.HoldCaptured" and str(e.hold_id).startswith("lease:"):
            captured += int(e.amount)
    proxied = [r for r in records if r.kind == "proxy"]
    served = sum(1 for r in proxied if r.status == 200)
    kills = [f.start for f in faults if f.name.startswith("SIGKILL")]
    in_flight = sum(1 for r in proxied if any(r.overlaps(k, k) for k in kills))
    exact = served * price <= captured <= (served + in_flight) * price and captured % price == 0
    return exact, {
        "proxied_200": served,
        "fees_due": served * price,
        "fees_captured": captured,
        "uncaptured": served * price - captured,
        "in_flight_at_kill": in_flight,
        "over_captured_fees": max(0, captured - served * price) // max(price, 1),
    }


def check_metering(
    container: Any, interval: float, rentals: dict[str, str], faults: list[Fault]
) -> tuple[bool, dict[str, Any]]:
    """Every rental billed exactly up to its stop (no gap, no double in money), and one
    process metering: at most 1.5 rounds per interval on average (three unelected replicas
    give about three). Rounds less than half an interval apart are reported, not failed: a
    single leader whose round runs longer than the interval (a loaded machine) meters the
    last rental of one round and the first of the next close together, and a new leader
    may take over right after the old one's last round (within ``fault_walls``)."""
    fault_walls = [(f.wall, f.wall + (f.full or f.back) - f.start + 10.0) for f in faults]
    events = all_events(container)
    per_instance: dict[str, list[Any]] = defaultdict(list)
    captures: dict[str, int] = defaultdict(int)
    for e in events:
        name = _name(e)
        if name.startswith("GpuInstance."):
            per_instance[str(e.originator_id)].append(e)
        elif name == "CreditAccount.HoldCaptured":
            captures[str(e.hold_id)] += int(e.amount)
    problems: list[str] = []
    rows = []
    for instance_id in rentals:
        history = per_instance.get(instance_id, [])
        kinds = [_name(e).split(".")[-1] for e in history]
        requested = next((e for e in history if _name(e).endswith(".Requested")), None)
        running = next((e for e in history if _name(e).endswith(".Running")), None)
        stop = next((e for e in history if _name(e).endswith(".StopRequested")), None)
        metered = [e for e in history if _name(e).endswith(".Metered")]
        if requested is None or running is None:
            continue  # never ran: nothing to bill
        if stop is None:
            problems.append(f"{instance_id}: never stopped ({kinds})")
            continue
        price = int(requested.price_per_hour)
        due = due_between(price, running.at, stop.at)
        total = int(metered[-1].total) if metered else 0
        holds = {str(requested.hold_id)} | {str(m.hold_id) for m in metered}
        captured = sum(captures[h] for h in holds)
        totals = [int(m.total) for m in metered]
        if total != due:
            problems.append(f"{instance_id}: billed {total}, due {due}")
        if totals != sorted(totals):
            problems.append(f"{instance_id}: billed total went down")
        if captured != total:
            problems.append(f"{instance_id}: captured {captured} from its holds, billed {total}")
        untils = [running.at] + [m.until for m in metered]
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(untils)]
        # two metering rounds close together, neither the first after Running nor the stop's
        close = [
            b
            for a, b in itertools.pairwise([m.until for m in metered[:-1]])
            if (b - a).total_seconds() < interval / 2
        ]
        handover = [b for b in close if any(lo <= b.timestamp() <= hi for lo, hi in fault_walls)]
        seconds = (stop.at - running.at).total_seconds()
        rows.append(
            {
                "instance": instance_id,
                "seconds": round(seconds, 1),
                "metered_events": len(metered),
                "intervals": round(seconds / interval, 1),
                "max_gap_s": round(max(gaps, default=0.0), 2),
                "short_gaps": len(close) - len(handover),
                "handover_gaps": len(handover),
                "close_rounds_at": [b.isoformat() for b in close],
                "metered_until": [m.until.isoformat() for m in metered],
                "stopped_at": stop.at.isoformat(),
                "billed": total,
                "due": due,
            }
        )
    per_interval = [r["metered_events"] / max(1.0, r["intervals"]) for r in rows]
    doubled = sum(r["short_gaps"] for r in rows)
    mean = sum(per_interval) / max(1, len(per_interval))
    if mean > 1.5:  # several replicas metering each interval (no election)
        problems.append(f"{mean:.2f} metering rounds per interval: more than one process meters")
    handovers = sum(r["handover_gaps"] for r in rows)
    return not problems, {
        "instances_billed": len(rows),
        "metered_per_interval_mean": round(sum(per_interval) / max(1, len(per_interval)), 2),
        "metered_per_interval_max": round(max(per_interval, default=0.0), 2),
        "max_gap_s": max((r["max_gap_s"] for r in rows), default=0.0),
        "gaps_under_half_interval": doubled,
        "close_rounds_at_leader_handover": handovers,
        "problems": problems[:50],
        "rows": rows,
    }


def check_rate_limit(
    records: list[Rec], limit: int, redis_faults: list[Fault]
) -> tuple[bool, dict[str, Any]]:
    """Per one-minute window (X-RateLimit-Reset), across all doors: never more than ``limit``
    got through, and once one was refused the window's ``limit`` was used up: by the 200s,
    the other answers the limiter let through (e.g. a 503 while PostgreSQL restarted) and the
    requests whose answer was lost (a killed replica) sent in that minute."""
    windows: dict[str, list[Rec]] = defaultdict(list)
    for r in records:
        if r.kind == "rate" and r.reset:
            windows[r.reset].append(r)
    rows = []
    ok = True
    for reset, recs in sorted(windows.items()):
        passed = sum(1 for r in recs if r.status == 200)
        refused = sum(1 for r in recs if r.status == 429)
        other = len(recs) - passed - refused
        lost = sum(
            1
            for r in records
            if r.kind == "rate"
            and r.status == 0
            and r.error != "ConnectError"  # never reached a server: never counted
            and int(reset) - 60 <= r.wall < int(reset)
        )
        t_first, t_last = min(r.t for r in recs), max(r.t for r in recs)
        redis_down = any(f.start <= t_last and (f.full or t_last) >= t_first for f in redis_faults)
        held = passed <= limit
        exact = held and (refused == 0 or passed + other + lost >= limit)
        # Never over the limit, Redis restart or not (its append-only file keeps the counts);
        # "used up before refusing" is asked only of windows without a Redis restart.
        if not held or (not redis_down and not exact):
            ok = False
        rows.append(
            {
                "window_reset": int(reset),
                "passed": passed,
                "refused_429": refused,
                "other_answers": other,
                "answer_lost": lost,
                "by_door": dict(Counter(r.door for r in recs if r.status == 200)),
                "exact": exact,
                "at_most_limit": held,
                "redis_restarted_in_window": redis_down,
            }
        )
    return ok, {"limit_per_minute": limit, "windows": rows}


def classify(rec: Rec) -> str:
    if rec.status == 0:
        return f"no answer ({rec.error})"
    if rec.status == 503:
        return "503 with Retry-After" if rec.retry_after else "503 without Retry-After"
    return str(rec.status)


EXPECTED = {200, 201, 402, 429}


def check_errors(records: list[Rec], faults: list[Fault]) -> tuple[bool, dict[str, Any]]:
    """No 500 anywhere; per fault, what failed between its start and full service."""
    kills = [f for f in faults if f.name.startswith("SIGKILL")]

    def allowed(r: Rec) -> bool:  # a request in flight at the killed replica: nginx's 502
        if r.status == 503:
            return r.retry_after
        return r.status == 502 and any(r.overlaps(f.start, f.full or r.t) for f in kills)

    bad = [r for r in records if r.status >= 500 and not allowed(r)]
    fivehundreds = [r for r in records if r.status == 500]
    per_fault = []
    for f in faults:
        end = f.full or max((r.t for r in records), default=f.start)
        inside = [r for r in records if r.overlaps(f.start, end)]
        failed = [r for r in inside if r.status not in EXPECTED]
        per_fault.append(
            {
                "fault": f.name,
                "component_back_s": round(f.back - f.start, 2),
                "front_door_last_failed_s": round(f.front - f.start, 2) if f.front else None,
                "full_service_s": round(end - f.start, 2) if f.full else None,
                "read_models_caught_up_s": round(f.caught_up - f.start, 2) if f.caught_up else None,
                "requests": len(inside),
                "failed": len(failed),
                "failed_by_kind": dict(Counter(f"{r.kind}: {classify(r)}" for r in failed)),
            }
        )
    outside = [
        r
        for r in records
        if r.status not in EXPECTED and not any(r.overlaps(f.start, f.full or r.t) for f in faults)
    ]
    return not fivehundreds and not bad, {
        "requests": len(records),
        "by_status": dict(Counter(classify(r) for r in records)),
        "http_500": len(fivehundreds),
        "5xx_not_503_retry_after": dict(Counter(f"{r.kind}@{r.door}: {classify(r)}" for r in bad)),
        "faults": per_fault,
        "failed_outside_faults": dict(Counter(f"{r.kind}: {classify(r)}" for r in outside)),
        "samples": [
            f"{r.kind}@{r.door} {classify(r)} {r.error[:120]}"
            for r in records
            if (r.status >= 500 and r.status != 503) or (r.status == 0 and r.door == "nginx")
        ][:30],
    }
