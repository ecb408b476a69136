"""HEAD on every GET route (RFC 9110 §9.3.2): the GET is served, its body is not sent.

Litestar answers HEAD only where a handler declares it, so the app's outer layer
(``front.Front``, after the fast lane, which answers HEAD on its credits route itself and
passes HEAD to the proxy's upstream) asks ``HeadRoutes`` and runs a HEAD whose path has no
HEAD handler of its own but has a GET one as that GET, with authentication, rate limits,
metrics, compression and conditional requests applied as for the GET, so the status and every
header (``Content-Length``, ``ETag``, ``Content-Encoding``…) are the GET's. Only the body is
dropped (``Observer.around``). Routes that declare
HEAD themselves (the proxy, which forwards it upstream) are left alone, as are paths no route
takes (the router answers 404 as for any method).
"""

from __future__ import annotations

from litestar.exceptions import MethodNotAllowedException, NotFoundException
from litestar.types import Scope
from litestar.utils import normalize_path


class HeadRoutes:
    """Which HEAD requests are served as their path's GET (``Litestar.asgi_router``'s routes)."""

    def __init__(self, router: object) -> None:
        self._routing = router.handle_routing  # type: ignore[attr-defined]

    def served_as_get(self, scope: Scope) -> bool:
        """A HEAD whose path has no HEAD handler of its own but has a GET one."""
        if scope["method"] != "HEAD":  # type: ignore[typeddict-item]
            return False
        path = normalize_path(scope["path"])
        try:
            self._routing(path=path, method="HEAD")
        except MethodNotAllowedException:
            pass
        except NotFoundException:
            return False
        else:
            return False  # the route has a HEAD handler of its own
        try:
            self._routing(path=path, method="GET")
        except (MethodNotAllowedException, NotFoundException):
            return False
        return True
