"""Named queries about a run's prompts and tokens: labels, pairs, contrast sets, per-token NLL and text.

Part of :mod:`workbench.store.queries` (its docstring gives the rules every query keeps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars is imported lazily: the capture path does not need it
    import polars as pl

    from workbench.store.backend import Store


# -- prompts and tokens ----------------------------------------------------------------------
def prompt_labels(store: Store, run_id: str, *, labelled_only: bool = False) -> pl.DataFrame:
    """``prompt_id, label`` of the run's prompts (only labelled ones with ``labelled_only``), by prompt_id."""
    where = " AND label IS NOT NULL" if labelled_only else ""
    return store.sql(
        f"SELECT prompt_id, label FROM prompts WHERE run_id = ?{where} ORDER BY prompt_id", [run_id]
    )


def distinct_labels(store: Store, run_id: str) -> list[str | None]:
    """The run's distinct prompt labels, sorted (a NULL label, if any, last as ``None``)."""
    df = store.sql("SELECT DISTINCT label FROM prompts WHERE run_id = ? ORDER BY label", [run_id])
    return list(df["label"].to_list())


def paired_labels(store: Store, run_id: str) -> list[str]:
    """The distinct non-NULL labels of the run's paired prompts (``pair_id`` set), in no particular order."""
    df = store.sql(
        "SELECT DISTINCT label FROM prompts WHERE run_id = ? AND pair_id IS NOT NULL AND label IS NOT NULL",
        [run_id],
    )
    return list(df["label"].to_list())


def pair_first_labels(store: Store, run_id: str) -> pl.DataFrame:
    """``label, n``: how many pairs have each label on their first member (lowest prompt_id), most first."""
    return store.sql(
        "SELECT label, count(*) AS n FROM ("
        "  SELECT pair_id, arg_min(label, prompt_id) AS label FROM prompts"
        "  WHERE run_id = ? AND pair_id IS NOT NULL GROUP BY pair_id"
        ") GROUP BY label ORDER BY n DESC",
        [run_id],
    )


def contrast_prompts(store: Store, run_id: str, target: str, control: str) -> pl.DataFrame:
    """``prompt_id, is_target, pair_id`` of the prompts labelled ``target`` or ``control``, by prompt_id."""
    return store.sql(
        "SELECT prompt_id, label = ? AS is_target, pair_id FROM prompts "
        "WHERE run_id = ? AND label IN (?, ?) ORDER BY prompt_id",
        [target, run_id, target, control],
    )


def token_nll(store: Store, run_id: str) -> pl.DataFrame:
    """``prompt_id, position, nll`` of every token of the run."""
    return store.sql("SELECT prompt_id, position, nll FROM tokens WHERE run_id = ?", [run_id])


def prompt_token_counts(store: Store, run_id: str) -> pl.DataFrame:
    """``prompt_id, n_tokens``: the tokens table's rows per prompt, by prompt id."""
    return store.sql(
        "SELECT prompt_id, count(*) AS n_tokens FROM tokens WHERE run_id = ? GROUP BY prompt_id ORDER BY prompt_id",
        [run_id],
    )


def token_strings(store: Store, run_id: str) -> pl.DataFrame:
    """``token_id, token``: one string per token id seen in the run."""
    return store.sql(
        "SELECT token_id, any_value(token) AS token FROM tokens WHERE run_id = ? GROUP BY token_id", [run_id]
    )
