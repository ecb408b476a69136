"""Agent doors: MCP, A2A, ACP, FIPA ACL, KQML, LangChain and an auto-detecting endpoint.

Every door is a thin translator over one action registry (``actions.py``), which calls the same
application services as REST. ``routes.route_handlers(doors)`` and ``AgentDoors.running``
(the lifespan) plug them into the HTTP app; ``docs/adr/0012-agents.md`` records the decisions.
"""
