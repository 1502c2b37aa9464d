"""Data-parallel training over every device JAX sees, on one host or several.

With one device nothing here changes what the trainer does: every method returns its
input. With several, a 1-D :class:`jax.sharding.Mesh` (axis ``"data"``) spans
``jax.devices()``; the parameters, the optimiser state and the fixed preprocessing are
replicated on every device, and each training batch is split along its cells. LayerNorm
normalises each cell on its own, so no statistics cross devices; XLA sums the gradients
of the batch's shards (an all-reduce) and every device applies the same update.

With several processes (:func:`init_distributed`), every process streams a disjoint
share of the store's blocks and contributes ``batch_size / n_processes`` cells to each
global batch; each process evaluates the holdout on its own copy of the parameters.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._errors import InputError
from ..data import block_share

DATA_AXIS = "data"


def init_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
    initialization_timeout: int = 300,
) -> dict[str, Any]:
    """Join a multi-host training run (``jax.distributed.initialize``).

    Call it once per process, before anything in the process uses JAX (training,
    classification, ``jax.devices()``). Under Slurm (``srun``) or Open MPI
    (``mpirun``) every argument is detected from the environment; elsewhere give the
    coordinator's address, the number of processes and this process's id (or set
    ``JAX_COORDINATOR_ADDRESS``). Afterwards :class:`~ginseng.train.GinsengClassifierTrainer`
    trains on the devices of all processes: each process streams a disjoint share of the
    store's blocks, and every process ends with the same parameters.

    Parameters
    ----------
    coordinator_address
        ``"host:port"`` of process 0, which runs the coordinator; every process gives
        the same address.
    num_processes
        Number of processes in the run.
    process_id
        This process's id, ``0`` to ``num_processes - 1``.
    local_device_ids
        Restrict this process to these local devices (e.g. one GPU per process).
    initialization_timeout
        Seconds to wait for the other processes.

    Returns
    -------
    ``{"process_index", "process_count", "device_count", "local_device_count",
    "platform"}`` of the run as JAX sees it.

    Raises
    ------
    InputError
        JAX was already in use in this process, or the arguments are incomplete and
        could not be detected (not under Slurm or Open MPI).

    Examples
    --------
    Two processes on one machine (or replace ``localhost`` by the first node's name):

    >>> import ginseng as gs  # doctest: +SKIP
    >>> gs.train.init_distributed(  # doctest: +SKIP
    ...     coordinator_address="localhost:12355", num_processes=2, process_id=rank
    ... )
    {'process_index': 0, 'process_count': 2, 'device_count': 2, ...}
    """
    if not jax.distributed.is_initialized():
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            raise InputError(
                "init_distributed() must run before anything in this process uses JAX "
                f"({len(jax.devices())} device(s) already initialised); call it first, "
                "right after the imports."
            )
        try:
            jax.distributed.initialize(
                coordinator_address=coordinator_address,
                num_processes=num_processes,
                process_id=process_id,
                local_device_ids=local_device_ids,
                initialization_timeout=initialization_timeout,
            )
        except ValueError as err:  # incomplete arguments and nothing detected
            raise InputError(
                f"init_distributed(coordinator_address={coordinator_address!r}, "
                f"num_processes={num_processes!r}, process_id={process_id!r}): {err} "
                "Outside Slurm and Open MPI give all three."
            ) from err
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "platform": jax.devices()[0].platform,
    }


@dataclass(frozen=True)
class DataParallel:
    """The devices of a run and how state and batches are placed on them."""

    platform: str
    count: int  # devices of all processes
    processes: int
    process_index: int
    mesh: Mesh | None  # None with a single device: nothing is placed explicitly

    @classmethod
    def detect(cls) -> DataParallel:
        """Every device JAX sees (of every process after :func:`init_distributed`)."""
        devices = jax.devices()
        mesh = Mesh(np.asarray(devices), (DATA_AXIS,)) if len(devices) > 1 else None
        return cls(
            platform=str(devices[0].platform),
            count=len(devices),
            processes=jax.process_count(),
            process_index=jax.process_index(),
            mesh=mesh,
        )

    @property
    def provenance(self) -> dict[str, Any]:
        """What the model card records: ``{"platform", "count", "processes"}``."""
        return {"platform": self.platform, "count": self.count, "processes": self.processes}

    def batch_size(self, batch: int, n_train: int) -> int:
        """``batch`` rounded down to a multiple of the device count (unchanged on one)."""
        if self.count == 1:
            return batch
        if n_train < self.count:
            raise InputError(
                f"The training split has {n_train} cells, fewer than the {self.count} "
                "devices training shares each batch between; add cells or use fewer devices."
            )
        return max(self.count, batch // self.count * self.count)

    def stream_share(self, rows: np.ndarray, batch: int, block_rows: int) -> tuple[np.ndarray, int]:
        """The training ``rows`` this process streams and the steps of one pass over them.

        One process streams every row: ``rows.size // batch`` steps. With several, each
        streams its :func:`block_share` in batches of ``batch / processes`` cells, and a
        pass takes as many steps as the smallest share allows, so that every process
        takes the same steps (each one is a collective).
        """
        if self.processes == 1:
            return rows, rows.size // batch
        shares = [block_share(rows, block_rows, i, self.processes) for i in range(self.processes)]
        steps = min(share.size for share in shares) // (batch // self.processes)
        if steps == 0:
            raise InputError(
                f"The training split ({rows.size} cells in blocks of {block_rows} rows) is "
                f"too small to give each of {self.processes} processes a batch of "
                f"{batch // self.processes} cells; train on fewer processes."
            )
        return shares[self.process_index], steps

    def train_stream(
        self,
        dataset: Any,
        batch: int,
        steps: int,
        *,
        seed: int,
        balance_labels: bool,
        block_size: int,
        buffer_size: int,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One pass of training batches (this process's part of each, as numpy arrays).

        One process: :meth:`~ginseng.data.GinsengDataset.stream` over the training split.
        Several: the stream of this process's share of the blocks (the ``shard`` of
        :meth:`~ginseng.data.GinsengDataset.stream`, :meth:`stream_share`), in batches of
        ``batch / processes`` cells, cut to the ``steps`` every process takes.
        """
        if self.processes == 1:
            return dataset.stream(
                batch, "train", shuffle=True, balance_labels=balance_labels, seed=seed,
                drop_last=True, block_size=block_size, buffer_size=buffer_size,
            )  # fmt: skip
        batches = dataset.stream(
            batch // self.processes, "train", shuffle=True, balance_labels=balance_labels,
            seed=seed, drop_last=True, block_size=block_size, buffer_size=buffer_size,
            shard=(self.process_index, self.processes),
        )  # fmt: skip
        return itertools.islice(batches, steps)

    def replicate(self, tree: Any) -> Any:
        """``tree`` with a full copy on every device."""
        if self.mesh is None:
            return tree
        replicated = NamedSharding(self.mesh, PartitionSpec())

        def put(a: Any) -> jax.Array:
            # Each process gives its own (equal) copy: no cross-host transfer, no check.
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                data = put(jax.random.key_data(a))
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
            return jax.make_array_from_process_local_data(replicated, np.asarray(a))

        return jax.tree.map(put, tree)

    def local(self, tree: Any) -> Any:
        """The copy of a replicated ``tree`` on this process's first device."""
        if self.mesh is None:
            return tree
        return jax.tree.map(lambda a: a.addressable_data(0), tree)

    def shard(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterable[tuple[Any, Any]]:
        """Each ``(x, y)`` split along cells over the devices (this process's part)."""
        if self.mesh is None:
            return batches
        return self._sharded(batches, NamedSharding(self.mesh, PartitionSpec(DATA_AXIS)))

    @staticmethod
    def _sharded(
        batches: Iterable[tuple[np.ndarray, np.ndarray]], sharding: NamedSharding
    ) -> Iterator[tuple[Any, Any]]:
        for x, y in batches:
            yield (
                jax.make_array_from_process_local_data(sharding, x),
                jax.make_array_from_process_local_data(sharding, y),
            )

    def step(self, train_step: Callable[..., Any]) -> Callable[..., Any]:
        """``train_step`` returning this process's copy of the (replicated) loss, its last output."""
        if self.mesh is None:
            return train_step

        def step(*args: Any) -> tuple[Any, ...]:
            *state, loss = train_step(*args)
            return (*state, loss.addressable_data(0))

        return step

    def first_process(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call ``function`` on process 0 only, and wait there until it has returned."""
        if self.process_index == 0:
            function(*args, **kwargs)
        if self.processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"ginseng: {function.__name__} done")
