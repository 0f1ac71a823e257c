"""Callback bodies as plain functions: ``f(db, choices...) -> Dash children``.

Pages wire them to their controls; tests call them directly on a store file. Each function
reads through :mod:`dashboards.data` (read-only, cached) and lets errors rise; the page wraps
the call in :func:`dashboards.components.guarded`, which turns them into a message.
"""
