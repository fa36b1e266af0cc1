"""Cut a token-id stream into independent, non-overlapping language-model windows.

Details: docs/modules.md, section ``oe_text.lm.windows``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["IGNORE_INDEX", "make_windows", "windows_dataset", "num_windows"]

IGNORE_INDEX = -100


def num_windows(n_ids: int, seq_len: int, drop_last: bool = False) -> int:
    """How many windows :func:`make_windows` makes from ``n_ids`` ids."""
    width = _check_seq_len(seq_len) + 1
    full, rem = divmod(max(int(n_ids), 0), width)
    return full + (1 if rem >= 2 and not drop_last else 0)


def _check_seq_len(seq_len: int) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int (predicted tokens per window), got {seq_len!r}")
    return int(seq_len)


def make_windows(
    ids: np.ndarray,
    seq_len: int,
    *,
    pad_id: int = 0,
    drop_last: bool = False,
    offset: int = 0,
) -> dict[str, np.ndarray]:
    """Windows of a 1-D id stream as arrays of shape ``(num_windows, seq_len + 1)`` (see docs/modules.md).

    Args:
        ids: 1-D integer stream.
        seq_len: predicted tokens per full window (window width ``seq_len + 1``).
        pad_id: id written at padded positions (masked out; any valid id, e.g. ``vocab.eos_id``).
        drop_last: drop the final partial window instead of padding it.
        offset: skip the first ``offset`` ids (e.g. a random offset per training epoch).
    """
    width = _check_seq_len(seq_len) + 1
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be integers, got {ids.dtype}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    ids = ids[offset:].astype(np.int32, copy=False)
    full, rem = divmod(ids.size, width)
    input_ids = ids[: full * width].reshape(full, width)
    mask = np.ones((full, width), dtype=np.int8)
    if rem >= 2 and not drop_last:
        last = np.full((1, width), pad_id, dtype=np.int32)
        last[0, :rem] = ids[full * width :]
        last_mask = np.zeros((1, width), dtype=np.int8)
        last_mask[0, :rem] = 1
        input_ids = np.concatenate([input_ids, last])
        mask = np.concatenate([mask, last_mask])
    labels = np.where(mask == 1, input_ids, IGNORE_INDEX).astype(np.int32)
    return {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int32), "labels": labels, "attention_mask": mask}


def windows_dataset(
    ids: np.ndarray,
    seq_len: int,
    *,
    pad_id: int = 0,
    drop_last: bool = False,
    offset: int = 0,
):
    """:func:`make_windows` as a ``datasets.Dataset`` with columns ``input_ids``, ``labels``, ``attention_mask``."""
    import pyarrow as pa
    from datasets import Dataset

    arrays = make_windows(ids, seq_len, pad_id=pad_id, drop_last=drop_last, offset=offset)
    width = int(seq_len) + 1
    columns = {name: pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), width) for name, arr in arrays.items()}
    return Dataset.from_dict(columns)
