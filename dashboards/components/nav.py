"""The navigation bar, built from Dash's page registry (``dash.page_registry``).

A page declares its place in the navigation once, in its own ``dash.register_page`` call: ``path``,
``name`` (the link's text) and ``order`` (its position; Dash keeps the registry sorted by it). So a
module added under ``dashboards/pages/`` gets its link with no other edit. Each link's id is
``nav-<module>`` (the page module's own name, e.g. ``nav-health``), so the app's callback that keeps
the chosen run in every link's address (:func:`nav_hrefs`) can address it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dash
from dash import dcc, html

from dashboards.components.common import query_string

__all__ = ["NavPage", "nav_hrefs", "nav_pages", "navbar"]


@dataclass(frozen=True)
class NavPage:
    """One page's navigation entry: its module's own name (``key``), address and link text."""

    key: str
    path: str
    name: str

    @property
    def link_id(self) -> str:
        """The id of the page's link in the navigation bar."""
        return f"nav-{self.key}"


def nav_pages(registry: Mapping[str, Mapping[str, Any]] | None = None) -> list[NavPage]:
    """Every page of ``registry`` (default: ``dash.page_registry``), in its order (the pages' ``order``)."""
    pages = dash.page_registry if registry is None else registry
    return [NavPage(module.rsplit(".", 1)[-1], page["path"], page["name"]) for module, page in pages.items()]


def navbar(pages: Sequence[NavPage]) -> html.Nav:
    """The navigation bar: the brand, then one link per page."""
    links = [dcc.Link(p.name, href=p.path, id=p.link_id, className="wb-nav-link") for p in pages]
    return html.Nav([html.Span("moe-workbench", className="wb-brand"), *links], className="wb-nav")


def nav_hrefs(pages: Sequence[NavPage], run: str | None) -> list[str]:
    """Every page's link, carrying ``run`` in its query string when one is chosen."""
    return [p.path + query_string(run=run) for p in pages]
