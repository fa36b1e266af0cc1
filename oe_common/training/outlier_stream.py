"""An endless, seeded, per-process stream of outlier batches for Outlier Exposure.

Details: docs/modules.md, section ``oe_common.training.outlier_stream``.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterator, Mapping

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, Subset
from transformers.utils import logging

__all__ = ["OutlierStream", "EmptyOutlierDatasetError", "is_streaming", "OUTLIER_STREAM_STATE_NAME", "stream_position",
           "resume_position"]

logger = logging.get_logger(__name__)

#: File in every checkpoint folder that records where the outlier stream stood (read when resuming).
OUTLIER_STREAM_STATE_NAME = "oe_outlier_stream.json"


class EmptyOutlierDatasetError(ValueError):
    """The outlier dataset (or this process's shard of it) yields no example."""


def is_streaming(dataset: Any) -> bool:
    """True for datasets without a length (``datasets.IterableDataset``, torch ``IterableDataset``)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return True
    try:
        len(dataset)
    except TypeError:
        return True
    return False


class _EndlessShuffledBatchSampler:
    """Batches of indices into ``range(n)``: epoch ``e`` is ``randperm(n, seed + e)``, batches cross epoch ends.

    ``start`` skips that many indices of the endless sequence (epoch ``start // n``, offset ``start % n``).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self._offset = divmod(start, n)

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        while True:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
            offset, self._offset = self._offset, 0
            for index in order[offset:]:
                batch.append(index)
                if len(batch) == self.batch_size:
                    yield batch
                    batch = []
            self.epoch += 1


class OutlierStream:
    """Endless iterator of collated outlier batches for one process (see docs/modules.md).

    Args:
        dataset: a ``datasets.Dataset``, a ``datasets.IterableDataset`` or a torch ``Dataset`` / ``IterableDataset``.
        batch_size: examples per batch (every batch is full).
        collate_fn: turns a list of examples into a batch (e.g. a ``transformers`` data collator).
        seed: shuffling seed; epoch ``e`` uses ``seed + e``. Must be the same on every process.
        rank, world_size: this process and the number of processes; each gets a disjoint shard.
        shuffle_buffer_size: buffer of the streaming shuffle (iterable datasets only).
        num_workers, pin_memory: ``DataLoader`` settings for map-style datasets (iterable datasets are read in
            the main process).
        skip_examples: start after this many examples of this process's endless sequence (to resume a run; see
            docs/modules.md).

    Raises:
        EmptyOutlierDatasetError: the dataset, or this process's shard, has no example (map-style: at once;
            iterable: when a whole pass yields nothing).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any],
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer_size: int = 1000,
        num_workers: int = 0,
        pin_memory: bool = False,
        skip_examples: int = 0,
    ):
        if skip_examples < 0:
            raise ValueError(f"skip_examples must be >= 0, got {skip_examples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if shuffle_buffer_size < 1:
            raise ValueError(f"shuffle_buffer_size must be >= 1, got {shuffle_buffer_size}")
        self.batch_size, self.collate_fn, self.seed = batch_size, collate_fn, seed
        self.rank, self.world_size = rank, world_size
        self.examples_drawn = skip_examples
        self.streaming = is_streaming(dataset)
        self._where = f"process {rank} of {world_size}" if world_size > 1 else "the only process"
        if not self.streaming:
            if isinstance(dataset, datasets.Dataset):
                shard = split_dataset_by_node(dataset, rank=rank, world_size=world_size) if world_size > 1 else dataset
            else:
                shard = Subset(dataset, range(rank, len(dataset), world_size)) if world_size > 1 else dataset
            if len(shard) == 0:
                raise EmptyOutlierDatasetError(
                    f"the outlier dataset has {len(dataset)} example(s): none for {self._where}; "
                    "give at least one outlier example per process"
                )
            self.shard = shard
            self._sampler = _EndlessShuffledBatchSampler(len(shard), batch_size, seed, start=skip_examples)
            self._loader = DataLoader(
                shard,
                batch_sampler=self._sampler,
                collate_fn=collate_fn,
                num_workers=num_workers,
                pin_memory=pin_memory,
                # its own generator: creating the iterator draws the workers' base seed from it, not from torch's
                # global RNG, which would shift the dropout masks of a run resumed from a checkpoint
                generator=torch.Generator().manual_seed(seed),
            )
            self._iterator: Iterator[Any] = iter(self._loader)
        else:
            if isinstance(dataset, datasets.IterableDataset):
                shard = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
                if world_size > 1:
                    shard = split_dataset_by_node(shard, rank=rank, world_size=world_size)
                self._hf_iterable = True
            else:
                shard = dataset
                self._hf_iterable = False
            self.shard = shard
            self._shuffle_buffer_size = shuffle_buffer_size
            self._epoch = 0
            self._iterator = self._iterable_batches(skip_examples)

    @property
    def epoch(self) -> int:
        """Passes started over this process's shard (0 during the first). Map-style with ``num_workers > 0``:
        the sampler's epoch, which prefetching may put slightly ahead of the batches consumed."""
        return self._sampler.epoch if not self.streaming else self._epoch

    def __iter__(self) -> "OutlierStream":
        return self

    def __next__(self) -> Any:
        batch = next(self._iterator)
        self.examples_drawn += self.batch_size
        return batch

    # ---- iterable datasets ------------------------------------------------------------------------
    def _examples_of_epoch(self, epoch: int) -> Iterator[Any]:
        if hasattr(self.shard, "set_epoch"):
            self.shard.set_epoch(epoch)
        if self._hf_iterable:  # shuffled and split by `datasets`
            yield from self.shard
            return
        rng = random.Random(self.seed + epoch)
        buffer: list[Any] = []
        for position, example in enumerate(self.shard):
            if position % self.world_size != self.rank:
                continue
            if len(buffer) < self._shuffle_buffer_size:
                buffer.append(example)
                continue
            slot = rng.randrange(len(buffer))
            yield buffer[slot]
            buffer[slot] = example
        rng.shuffle(buffer)
        yield from buffer

    def _iterable_batches(self, skip: int) -> Iterator[Any]:
        batch: list[Any] = []
        while True:
            produced = False
            for example in self._examples_of_epoch(self._epoch):
                produced = True
                if skip:
                    skip -= 1
                    continue
                batch.append(example)
                if len(batch) == self.batch_size:
                    yield self.collate_fn(batch)
                    batch = []
            if not produced:
                raise EmptyOutlierDatasetError(
                    f"the streaming outlier dataset yielded no example for {self._where} (pass {self._epoch}); "
                    "check its files / generator, and that it has at least as many examples (or shards) as processes"
                )
            self._epoch += 1


# ---- resuming ------------------------------------------------------------------------------------------------
def stream_position(examples_drawn: int, seed: int, world_size: int) -> dict[str, Any]:
    """What a checkpoint records (as :data:`OUTLIER_STREAM_STATE_NAME`) of the outlier stream of every process:
    the examples each has drawn so far, and the seed and process count that make that position meaningful."""
    return {"examples_drawn_per_process": examples_drawn, "oe_seed": seed, "world_size": world_size}


def resume_position(saved: Mapping[str, Any] | None, seed: int, world_size: int, checkpoint: str) -> int:
    """``skip_examples`` of a stream resumed from ``checkpoint``, whose :func:`stream_position` is ``saved``
    (``None``: the checkpoint has none). 0, with a warning, when there is none or it had another seed or number of
    processes: the stream then starts from its first batch."""
    if saved is None:
        logger.warning(
            f"OETrainer: {checkpoint} has no {OUTLIER_STREAM_STATE_NAME} (saved without outliers, or by another "
            "trainer): the outlier stream starts from its first batch"
        )
        return 0
    if (saved.get("oe_seed"), saved.get("world_size")) != (seed, world_size):
        logger.warning(
            f"OETrainer: the checkpoint's outlier stream had oe_seed={saved.get('oe_seed')}, "
            f"world_size={saved.get('world_size')}; this run has oe_seed={seed}, world_size={world_size}, so its "
            "position does not carry over: the outlier stream starts from its first batch"
        )
        return 0
    return int(saved["examples_drawn_per_process"])
