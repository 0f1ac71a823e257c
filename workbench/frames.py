"""`AnalysisFrame`: the polars DataFrame an analysis returns in the notebook API, plus ``.plot()``.

A notebook user wants ``run.specialisation(by="label")`` to *be* a DataFrame (filter it, join
it, write it) and ``.plot()`` on it to give the analysis' own figure. So the result is a real
``polars.DataFrame`` subclass that remembers which analysis produced it and with which
options; ``.plot(**options)`` hands the frame to :func:`workbench.catalog.figure_for`.

Polars' own ``DataFrame.plot`` is an Altair plotting namespace; here it is replaced by the
analysis figure (plotly, which renders in Jupyter and in the HTML reports). Anything derived
from the frame (``filter``, ``select`` ...) is a plain ``polars.DataFrame`` again, with polars'
``.plot`` namespace; ``pl.DataFrame(result).plot`` reaches it directly.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["AnalysisFrame", "frame_class"]


class AnalysisFrame(pl.DataFrame):
    """A tidy analysis table that knows its analysis name: ``.plot()`` draws its figure.

    The name lives on a per-analysis subclass (``frame_class("load")``), not on the instance:
    polars builds some derived frames (``head``, ``sort`` ...) as ``type(self)``, and those
    keep plotting; ``options`` (what the analysis was run with) stays on the original only.
    """

    analysis: ClassVar[str] = ""
    _options: dict[str, Any]

    @property
    def options(self) -> dict[str, Any]:
        """The options the analysis was run with (empty on derived frames)."""
        return dict(getattr(self, "_options", {}))

    @classmethod
    def wrap(cls, frame: pl.DataFrame, analysis: str, options: dict[str, Any] | None = None) -> AnalysisFrame:
        """Wrap ``frame`` (zero-copy) as the result of ``analysis`` run with ``options``."""
        result = frame_class(analysis)(frame)
        result._options = dict(options or {})
        return result

    def plot(self, **options: Any) -> go.Figure:  # type: ignore[override]  # plotly, not polars' Altair
        """The analysis' figure (``workbench.catalog.figure_for``); ``options`` e.g. ``label="code"``."""
        from workbench.catalog import figure_for

        return figure_for(self.analysis, pl.DataFrame(self), **options)

    def __repr__(self) -> str:
        return f"{self.analysis} ({self.height} rows; .plot() draws it)\n{pl.DataFrame.__repr__(self)}"


@cache
def frame_class(analysis: str) -> type[AnalysisFrame]:
    """The :class:`AnalysisFrame` subclass for ``analysis`` (one per name, created once)."""
    name = "".join(part.title() for part in analysis.replace("_", "-").split("-")) + "Frame"
    return type(name, (AnalysisFrame,), {"analysis": analysis, "__module__": __name__})
