"""Small helpers shared by the algorithm modules: id encoding and masked means.

Batches arrive with trajectory and group ids as strings (from the store) or integers; every
algorithm needs them as dense integer codes to use ``index_add_``/``bincount``. Keeping the
conversion in one place means every module agrees on what "the same group" means.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

IdsLike = Sequence[Hashable] | torch.Tensor


def as_codes(ids: IdsLike, device: torch.device | None = None) -> tuple[torch.Tensor, int]:
    """Map arbitrary hashable ids to dense codes ``0..n-1`` in order of first appearance.

    Returns ``(codes [N] long, n_distinct)``.
    """
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    index: dict[Hashable, int] = {}
    codes = [index.setdefault(i, len(index)) for i in ids]
    return torch.tensor(codes, dtype=torch.long, device=device), len(index)


def check_contiguous(codes: torch.Tensor) -> None:
    """Raise if the rows of one trajectory are not contiguous (the batch convention)."""
    seen: set[int] = set()
    previous = None
    for code in codes.tolist():
        if code != previous:
            if code in seen:
                raise ValueError(
                    f"steps of trajectory #{code} are not contiguous: the batch must hold each "
                    "trajectory's steps together and in turn order"
                )
            seen.add(code)
            previous = code


def row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean of each row over its unmasked tokens: ``[S, L] -> [S]`` (0 for an empty row)."""
    mask = mask.to(torch.bool)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(-1)
    count = mask.sum(-1).clamp(min=1)
    return total / count


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over all unmasked entries (0 when nothing is unmasked)."""
    mask = mask.to(torch.bool)
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1)
