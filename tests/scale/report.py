"""Markdown tables from scale-test results: ``python -m tests.scale.report RESULT.json ...``
(the figures in docs/scale-results.md come from here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _s(value: Any) -> str:
    return "—" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def _never(value: Any) -> str:
    return "never" if value is None else _s(value)


def render(result: dict[str, Any], name: str) -> str:
    lines = [
        f"### {name}: {result['date']}",
        "",
        f"Machine: {result['machine']}; 1-minute load average during the run "
        f"{result['load_average_1min']['min']:.1f}-{result['load_average_1min']['max']:.1f} "
        f"(mean {result['load_average_1min']['mean']}); PgBouncer: {result['pgbouncer']}; "
        f"{result['load_seconds']} s of load, {result['errors']['requests']} requests, "
        f"{result['rentals']} rentals, {result['ws_connects']} WebSocket connections "
        f"({result['ws_messages']} messages).",
        "",
        "Checks: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in result["ok"].items()),
        "",
        "| fault | component back (s) | nginx probe last failed (s) | every door OK (s) "
        "| read models caught up (s) | requests in window | failed | how they failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in result["errors"]["faults"]:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(f["failed_by_kind"].items()))
        lines.append(
            f"| {f['fault']} | {_s(f['component_back_s'])} "
            f"| {_never(f.get('front_door_last_failed_s'))} "
            f"| {_s(f['full_service_s'])} | {_s(f['read_models_caught_up_s'])} "
            f"| {f['requests']} | {f['failed']} | {kinds or '—'} |"
        )
    money, fees, meter = result["money"], result["proxy_fees"], result["metering"]
    lines += [
        "",
        f"- Answers: {json.dumps(result['errors']['by_status'])}; HTTP 500: "
        f"{result['errors']['http_500']}; 5xx other than 503 + Retry-After (and nginx's 502 "
        f"for a request in flight at the killed replica): "
        f"{json.dumps(result['errors']['5xx_not_503_retry_after'])}.",
        f"- Grants: {money['grants_sent']} sent (every fourth twice, to two doors; failures "
        f"retried with the same key at another door), {money['grants_acknowledged']} "
        f"acknowledged, {money['grants_stored']} stored, "
        f"{money['stored_without_acknowledgement']} stored without an acknowledgement; "
        f"problems: {money['problems'] or 'none'}.",
        f"- Proxy fees: {fees['proxied_200']} proxied requests answered 200, "
        f"{fees['fees_due']} µUSD due, {fees['fees_captured']} µUSD captured from the "
        f"replicas' leases ({fees['uncaptured']} µUSD not captured; "
        f"{fees.get('in_flight_at_kill', '-')} proxied requests in flight at the kill, "
        f"{fees.get('over_captured_fees', '-')} fees captured beyond the 200s; a dead "
        f"replica's leases recovered {fees.get('dead_leases_recovered_after_s', '-')} s "
        f"after the load).",
        f"- Metering: {meter['instances_billed']} rentals billed exactly up to their stop "
        f"(problems: {meter['problems'] or 'none'}); Metered events per metering interval "
        f"mean {meter['metered_per_interval_mean']}, max {meter['metered_per_interval_max']}; "
        f"{meter['gaps_under_half_interval']} metering rounds less than half an interval "
        f"after the previous one outside faults "
        f"({meter.get('close_rounds_at_leader_handover', '-')} within a fault, a new leader "
        f"taking over); longest time between two Metered events {meter['max_gap_s']} s.",
        f"- verify-projections exit status: {result['projections']['verify_projections_exit']}.",
        "",
        f"Rate limit ({result['rate_limit']['limit_per_minute']}/min per user):",
        "",
        "| window ends | 200 | 429 | other answers | answer lost | exact | Redis restarted |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in result["rate_limit"]["windows"]:
        lines.append(
            f"| {w['window_reset']} | {w['passed']} | {w['refused_429']} "
            f"| {w.get('other_answers', w.get('other'))} | {w.get('answer_lost', 0)} "
            f"| {w['exact']} | {w['redis_restarted_in_window']} |"
        )
    return "\n".join(lines)


def main(paths: list[str]) -> int:
    for n, path in enumerate(paths, 1):
        print(render(json.loads(Path(path).read_text()), f"Run {n}"))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
