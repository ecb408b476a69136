"""This process's subscribers: fan-out of live events, and resuming from an event id.

No gap, no duplicate: the feed hands events over in log order and advances its cursor only
after each batch was offered to every live session (both on the event loop, with no await in
between). A (re)subscribing session replays the log from ``since`` (else from the log's head) up to
the feed's cursor, and turns live only when it has caught up with that cursor, checked and
switched in one step; a live session is never offered an event at or below its position
(a ``since`` or head ahead of this process's cursor: those events are before its start).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from infrastructure.feed.feed import EventFeed
from interfaces.ws.session import Session
from interfaces.ws.state import StatePreparer
from interfaces.ws.topics import Prepared, Subscription, dumps, render, visible
from projections.base import Recorded

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

log = logging.getLogger(__name__)
PAGE = 500


class ReplayTooLongError(Exception):
    pass


class StreamHub:
    def __init__(self, container: Container, feed: EventFeed) -> None:
        self.c = container
        self.feed = feed
        self.settings = container.settings
        self.preparer = StatePreparer(container)
        self.sessions: set[Session] = set()
        feed.sink = self.dispatch

    # ------------------------------------------------------------ live fan-out

    async def dispatch(self, events: Sequence[Recorded]) -> None:
        """Offer one batch to every live session (called by the feed, in log order)."""
        subs = [s.sub for s in self.sessions if s.sub is not None]
        prepared: list[Prepared] = []
        if subs:
            prepared = await asyncio.to_thread(self.preparer.prepare, events, subs)
        last = events[-1].position
        rendered: dict[tuple[int, frozenset[str], str | None], str] = {}
        for session in list(self.sessions):
            sub = session.sub
            if sub is None or not session.live:
                continue
            for item in prepared:
                if item.event.position <= session.position:
                    continue  # replayed already, or before the point it subscribed from
                topics = visible(item, sub)
                if not topics:
                    continue
                key = (item.event.position, topics, sub.user_id)
                text = rendered.get(key)
                if text is None:
                    text = rendered[key] = render(item, topics, sub.user_id)
                if not session.offer(text):
                    break
            session.position = max(session.position, last)

    # ------------------------------------------------------------ subscriptions

    def subscribe(self, session: Session, sub: Subscription, ref: str | None) -> None:
        self.unsubscribe(session)
        session.sub = sub
        session.replay = asyncio.create_task(self._catch_up(session, sub, ref))

    def unsubscribe(self, session: Session) -> None:
        if session.replay is not None:
            session.replay.cancel()
            session.replay = None
        session.sub, session.live = None, False

    async def _catch_up(self, session: Session, sub: Subscription, ref: str | None) -> None:
        try:
            await asyncio.wait_for(self.feed.started.wait(), 30)
            replayed = await self._replay(session, sub, ref)
        except ReplayTooLongError as exc:
            session.sub = None
            await session.send(
                {"type": "error", "code": "replay_too_long", "error": str(exc), "id": ref}
            )
            return
        except TimeoutError:
            session.sub = None
            await session.send(
                {"type": "error", "code": "unavailable", "error": "streams are starting; retry"}
            )
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replay for %s failed", session.user_id)
            session.sub = None
            await session.send(
                {"type": "error", "code": "internal", "error": "replay failed; subscribe again"}
            )
            return
        finally:
            if session.replay is asyncio.current_task():
                session.replay = None
        log.debug("session of %s live after %d replayed", session.user_id, replayed)

    async def _replay(self, session: Session, sub: Subscription, ref: str | None) -> int:
        """Send the events after ``sub.since`` up to the feed's cursor, then go live.

        Without ``since`` the session starts at the log's head as read now, not at this
        process's feed cursor, which may still lag writes answered before the subscription
        (another replica's, or this one's a moment ago): those are not sent to it.
        """
        if sub.since is None:
            position = await asyncio.to_thread(self.feed.events.head)
        else:
            position = sub.since
        if self.feed.cursor - position > self.settings.streams.max_replay:
            raise ReplayTooLongError(
                f"since is {self.feed.cursor - position} events behind (at most "
                f"{self.settings.streams.max_replay}); reload through the REST API and subscribe "
                "without since"
            )
        sent = 0
        while True:
            await session.wait_room()
            target = self.feed.cursor
            if position >= target:  # caught up: switch to live in this same step
                session.position = max(position, target)
                session.live = session.offer(self._subscribed(sub, session.position, sent, ref))
                return sent
            events = await asyncio.to_thread(self.feed.events.read, position, PAGE, target)
            if not events:
                position = target
                continue
            prepared = await asyncio.to_thread(self.preparer.prepare, events, [sub])
            for item in prepared:
                topics = visible(item, sub)
                if topics:
                    await session.put(render(item, topics, sub.user_id))
                    sent += 1
            position = events[-1].position

    @staticmethod
    def _subscribed(sub: Subscription, position: int, replayed: int, ref: str | None) -> str:
        return dumps(
            {
                "type": "subscribed",
                "topics": sorted(sub.topics),
                "user_id": sub.user_id,
                "scope": "all" if sub.user_id is None else "user",
                "position": position,
                "replayed": replayed,
                "id": ref,
            }
        )

    # ------------------------------------------------------------ sessions

    def add(self, session: Session) -> None:
        self.sessions.add(session)

    def remove(self, session: Session) -> None:
        self.sessions.discard(session)

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions):
            session.close(code, reason)
