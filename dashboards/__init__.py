"""The workbench dashboard: a multi-page Dash app over a run store (``moe-workbench serve``).

``dashboards.app.create_app(db)`` builds it; ``data`` is the cached, read-only data layer;
``views`` hold the callback bodies as plain functions (unit-tested without a browser);
``pages`` register one Dash page each and wire its callbacks to a view; ``components`` are
the shared pieces (messages, tables, URL helpers).
"""
