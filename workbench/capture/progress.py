"""A rich progress bar that shows prompts done and tokens/s."""

from __future__ import annotations

import time
from types import TracebackType

from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


class TokenProgress:
    """Counts prompts and tokens; renders ``N prompts · T tokens · X tok/s`` while capture runs."""

    def __init__(self, enabled: bool = True, total_prompts: int | None = None) -> None:
        self.enabled = enabled
        self.tokens = 0
        self.prompts = 0
        self._start = time.perf_counter()
        self._progress = (
            Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=False)
            if enabled
            else None
        )
        self._task: TaskID | None = None
        self._total = total_prompts

    def __enter__(self) -> TokenProgress:
        self._start = time.perf_counter()
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("capturing", total=self._total)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(time.perf_counter() - self._start, 1e-9)

    def advance(self, tokens: int, prompts: int) -> None:
        self.tokens += tokens
        self.prompts += prompts
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                advance=prompts,
                description=f"capturing: {self.prompts} prompts · {self.tokens} tokens · "
                f"{self.tokens_per_second:,.0f} tok/s",
            )
