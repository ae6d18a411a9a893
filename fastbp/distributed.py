"""Synchronous data-parallel training over MPI (mpi4py), deterministic.

Launch one process per rank (``mpirun -n K python train.py``, ``srun``) and
call :func:`fit` on every rank with the same options::

    import numpy as np, fastbp, fastbp.distributed as fd
    net = fastbp.MLP([784, 256, 10], seed=0)
    hist = fd.fit(net, X, y, epochs=10, batch_size=256, lr=0.05, momentum=0.9, seed=0)

What one step does, on every rank (K ranks, global batch of B rows):

1. every rank draws the same permutation of the ``n_samples`` global rows from
   the shared seed (rank 0's, broadcast when ``seed=None``), as
   :meth:`fastbp.MLP.fit` draws it; the batch is the next B rows of it;
2. the batch is cut into K contiguous shards, shard r = batch rows
   ``B*r//K .. B*(r+1)//K``; rank r computes its shard's mean loss and
   gradient g_r in one compiled call (:meth:`fastbp.MLP.flat_gradient`);
3. every rank's shard loss goes to every rank (a NaN or Inf stops all alike);
4. the gradient of the batch's mean loss, ``g = sum_r (m_r / B) g_r`` (m_r the
   shard's rows), is formed by a **fixed-order reduction**: the flat vector is
   cut into K chunks; a reduce-scatter (``Alltoallv``) sends chunk c of every
   g_r to rank c, which sums them in rank order 0, 1, ..., K-1 in float64 and
   rounds once to the model's dtype.  ``MPI_Allreduce`` is never used for it:
   its summation order changes with K, the message size and the MPI's
   algorithm;
5. rank c applies the optimizer update (torch.optim.SGD's formula) to chunk c
   of the parameters and of the velocity, and an ``Allgatherv`` hands every
   rank the new parameters: each entry is updated once, by one rank.

With ``overlap=True`` (the default) steps 2 and 4 interleave, as PyTorch DDP
and Horovod do: rank r runs the forward pass, then forms its gradient one
layer at a time, last layer first (:meth:`fastbp.MLP.layer_gradients`), and
starts layer k's part of the reduce-scatter (``Ialltoallv``, into the same
places of the same buffer) as soon as layer k is formed, while the kernel
forms the layers below; every request completes before step 5.  The bytes
that arrive, the sums and their order are the same: so are the bits.

So every rank ends bitwise equal, repeated runs are bitwise equal, and the
result equals one process replaying the same shards and the same reduction
(:func:`combine_gradients`).  Against single-process :meth:`fastbp.MLP.fit`
with the same seed the result differs by rounding only (a batch's gradient is
summed in a different order, and plain SGD's fused update rounds differently):
tested at <= 1e-6 relative (parameter-vector norm) in float32 after one epoch.
The bits depend on K, unless ``fit(slab_rows=S)``: then they are the same for
every K (see :func:`fit`).

Data layout: with ``n_samples=None`` every rank holds the whole data set (an
in-memory array, or a memory-mapped ``.npy`` that every process maps).
Otherwise each rank passes only the rows it owns: rank r holds global rows
``offsets[r] .. offsets[r+1]`` in rank order (rank 0 the first rows), where
the local row counts may differ and must add up to ``n_samples``; the rows of
each shard are fetched from their owners every step (one ``Alltoallv``), so
training is the same as with the whole set on every rank, and no process
needs the whole data set (``np.load(path, mmap_mode="r")`` per rank works).

Failure: a mismatch of options, architecture or data shapes across ranks, or
bad data on any rank, is found at the start (every rank gathers every rank's
signature) and raised as ValueError on every rank, naming the ranks and the
values.  Any other exception on one rank (a kernel error, a callback on rank
0, Ctrl-C) prints ``fastbp.distributed: rank r of K failed: ...`` with the
traceback to stderr and calls ``comm.Abort(1)``: the job ends, never hangs.

mpi4py is imported only when a communicator is needed; without it
:func:`fit` raises ImportError saying what to install (``fastbp[mpi]``).
See docs/distributed.md.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _common as C
from . import optim as _optim
from . import schedules
from ._threads import get_num_threads
from .history import History
from .model import MLP

__all__ = ["fit", "combine_gradients", "FixedOrderAllreduce", "MPIComm", "TorchComm",
           "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "fastbp-distributed-checkpoint"
_CHECKPOINT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------
# communicators: the few collectives fit() needs, on numpy buffers
# ---------------------------------------------------------------------------


class MPIComm:
    """The collectives :func:`fit` uses, over an mpi4py communicator.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.
    """

    def __init__(self, comm: Any = None) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise ImportError(
                "fastbp.distributed needs mpi4py and an MPI library: "
                "pip install 'fastbp[mpi]' (mpi4py and the mpich wheel), or mpi4py "
                "built against your site's MPI"
            ) from exc
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())

    def bcast(self, obj: Any) -> Any:
        """A picklable object from rank 0."""
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj: Any) -> List[Any]:
        """Every rank's picklable object, in rank order."""
        return self.comm.allgather(obj)

    def Bcast(self, buf: np.ndarray) -> None:
        """Overwrite ``buf`` with rank 0's."""
        self.comm.Bcast(buf, root=0)

    def Allgather_f64(self, value: float, out: np.ndarray) -> None:
        """``out[r]`` = rank r's ``value`` (float64), on every rank."""
        self.comm.Allgather(np.array([value], dtype=np.float64), out)

    def Alltoallv(self, send: np.ndarray, send_counts: Sequence[int],
                  recv: np.ndarray, recv_counts: Sequence[int]) -> None:
        """Contiguous blocks (counts in elements, packed in rank order) to every rank."""
        sd = np.concatenate([[0], np.cumsum(send_counts)[:-1]]).astype(np.int64)
        rd = np.concatenate([[0], np.cumsum(recv_counts)[:-1]]).astype(np.int64)
        self.comm.Alltoallv([send, (list(send_counts), list(sd))],
                            [recv, (list(recv_counts), list(rd))])

    def Allgatherv(self, buf: np.ndarray, counts: Sequence[int]) -> None:
        """In place: rank r's block of ``buf`` (at sum(counts[:r])) goes to every rank."""
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.comm.Allgatherv(self.MPI.IN_PLACE, [buf, (list(counts), list(displs))])

    def Ialltoallv(self, send: np.ndarray, send_counts: Sequence[int], recv: np.ndarray,
                   recv_counts: Sequence[int], recv_displs: Sequence[int]) -> Any:
        """Start an ``Alltoallv``: ``send`` holds the blocks for ranks 0..K-1 packed in
        rank order; rank r's block lands in ``recv`` at ``recv_displs[r]`` (elements).
        Returns the request; neither buffer may be touched until it completes."""
        sd = [0] * len(send_counts)
        for r in range(1, len(send_counts)):
            sd[r] = sd[r - 1] + int(send_counts[r - 1])
        return self.comm.Ialltoallv([send, ([int(c) for c in send_counts], sd)],
                                    [recv, ([int(c) for c in recv_counts],
                                            [int(d) for d in recv_displs])])

    def Testall(self, requests: List[Any]) -> bool:
        """Whether every request has completed (and a push to the MPI's progress engine)."""
        return bool(self.MPI.Request.Testall(requests))

    def Waitall(self, requests: List[Any]) -> None:
        """Complete every request."""
        self.MPI.Request.Waitall(requests)

    def Abort(self, code: int = 1) -> None:
        """End every process of the job."""
        self.comm.Abort(code)

    def local_size(self) -> int:
        """How many ranks of this communicator share this node."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            return int(node.Get_size())
        finally:
            node.Free()


class TorchComm:
    """The same collectives over ``torch.distributed`` (gloo), for users of torchrun.

    The process group must be initialised (``torch.distributed.init_process_group
    ("gloo")``).  The gradient reduction is the same fixed-order one: only
    all-to-all and all-gather move the bytes, every sum is taken here in rank
    order.  ``Abort`` exits the process with status 1, which ends a torchrun
    job.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        Default: the world group.
    """

    def __init__(self, group: Any = None) -> None:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("TorchComm needs torch.distributed.init_process_group() first")
        self.torch, self.dist, self.group = torch, dist, group
        self.rank = int(dist.get_rank(group))
        self.size = int(dist.get_world_size(group))
        # broadcast's src is a global rank: the group's rank 0.
        self.root = int(dist.get_global_rank(group, 0)) if group is not None else 0

    def bcast(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=self.root, group=self.group)
        return box[0]

    def allgather(self, obj: Any) -> List[Any]:
        out: List[Any] = [None] * self.size
        self.dist.all_gather_object(out, obj, group=self.group)
        return out

    def Bcast(self, buf: np.ndarray) -> None:
        t = self.torch.from_numpy(buf)
        self.dist.broadcast(t, src=self.root, group=self.group)

    def Allgather_f64(self, value: float, out: np.ndarray) -> None:
        mine = self.torch.tensor([value], dtype=self.torch.float64)
        parts = [self.torch.from_numpy(out[r:r + 1]) for r in range(self.size)]
        self.dist.all_gather(parts, mine, group=self.group)

    def Alltoallv(self, send: np.ndarray, send_counts: Sequence[int],
                  recv: np.ndarray, recv_counts: Sequence[int]) -> None:
        s = self.torch.from_numpy(np.ascontiguousarray(send).reshape(-1))
        r = self.torch.from_numpy(recv.reshape(-1))
        self.dist.all_to_all_single(r, s, output_split_sizes=[int(c) for c in recv_counts],
                                    input_split_sizes=[int(c) for c in send_counts],
                                    group=self.group)

    def Allgatherv(self, buf: np.ndarray, counts: Sequence[int]) -> None:
        # all_gather needs equal sizes: pad every block to the longest.
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        width = int(max(counts))
        padded = np.zeros((self.size, width), dtype=buf.dtype)
        a, b = int(starts[self.rank]), int(starts[self.rank + 1])
        padded[self.rank, :b - a] = buf[a:b]
        parts = [self.torch.from_numpy(padded[r]) for r in range(self.size)]
        self.dist.all_gather(parts, parts[self.rank].clone(), group=self.group)
        for r in range(self.size):
            a, b = int(starts[r]), int(starts[r + 1])
            buf[a:b] = padded[r, :b - a]

    def Ialltoallv(self, send: np.ndarray, send_counts: Sequence[int], recv: np.ndarray,
                   recv_counts: Sequence[int], recv_displs: Sequence[int]) -> Any:
        """As :meth:`MPIComm.Ialltoallv`: gloo's asynchronous ``all_to_all_single``
        into a packed buffer, copied to ``recv``'s places when it completes."""
        packed = np.empty(int(sum(recv_counts)), dtype=recv.dtype)
        work = self.dist.all_to_all_single(
            self.torch.from_numpy(packed), self.torch.from_numpy(np.ascontiguousarray(send)),
            output_split_sizes=[int(c) for c in recv_counts],
            input_split_sizes=[int(c) for c in send_counts], group=self.group, async_op=True)
        return _TorchRequest(work, packed, recv, recv_counts, recv_displs)

    def Testall(self, requests: List[Any]) -> bool:
        return all([r.test() for r in requests])

    def Waitall(self, requests: List[Any]) -> None:
        for r in requests:
            r.wait()

    def local_size(self) -> int:
        """How many ranks share this node (torchrun's LOCAL_WORLD_SIZE; 1 if unset)."""
        try:
            return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        except ValueError:
            return 1

    def Abort(self, code: int = 1) -> None:
        sys.stderr.flush()
        os._exit(code)


class _TorchRequest:
    """A pending ``TorchComm.Ialltoallv``: the packed blocks go to their places on completion."""

    def __init__(self, work: Any, packed: np.ndarray, recv: np.ndarray,
                 counts: Sequence[int], displs: Sequence[int]) -> None:
        self.work, self.packed, self.recv = work, packed, recv
        self.counts, self.displs = [int(c) for c in counts], [int(d) for d in displs]
        self.done = False

    def _place(self) -> None:
        pos = 0
        for c, d in zip(self.counts, self.displs):
            self.recv[d:d + c] = self.packed[pos:pos + c]
            pos += c
        self.done = True

    def test(self) -> bool:
        if not self.done and self.work.is_completed():
            self.work.wait()
            self._place()
        return self.done

    def wait(self) -> None:
        if not self.done:
            self.work.wait()
            self._place()


def _as_comm(comm: Any) -> Any:
    if comm is None:
        return MPIComm()
    if isinstance(comm, (MPIComm, TorchComm)):
        return comm
    if hasattr(comm, "Get_rank") and hasattr(comm, "Alltoallv"):  # an mpi4py communicator
        return MPIComm(comm)
    raise TypeError(
        f"comm must be an mpi4py communicator, MPIComm or TorchComm, got {type(comm).__name__}"
    )


# ---------------------------------------------------------------------------
# the fixed-order reduction
# ---------------------------------------------------------------------------


def combine_gradients(grads: Sequence[np.ndarray], rows: Sequence[int]) -> np.ndarray:
    """The batch gradient from its shards' mean gradients, as :func:`fit` reduces it.

    ``sum_r (rows[r] / sum(rows)) * grads[r]``, each term and the running sum
    taken in float64, element by element, in the order r = 0, 1, ..., K-1,
    then rounded once to the gradients' dtype.  This is the definition of the
    distributed reduction: :func:`fit` computes exactly this, chunk by chunk
    on the chunk's owner rank, so a single process calling this function
    replays a K-rank run bit for bit.  Shards with 0 rows contribute nothing.

    Parameters
    ----------
    grads : sequence of K ndarrays of shape (n_params,)
        Each shard's gradient of its mean loss (:meth:`fastbp.MLP.flat_gradient`).
    rows : sequence of K ints
        Each shard's number of rows.

    Returns
    -------
    ndarray of shape (n_params,)
    """
    if len(grads) != len(rows) or not grads:
        raise ValueError("combine_gradients needs one row count per gradient, at least one")
    if not any(rows):
        raise ValueError("combine_gradients needs at least one shard with rows")
    acc = np.empty(grads[0].shape, dtype=np.float64)
    _combine_into(grads, rows, acc, np.empty_like(acc))
    return acc.astype(grads[0].dtype)


def _chunks(n: int, K: int) -> List[int]:
    """Boundaries of the K contiguous chunks of a vector of n entries: chunk c is
    ``bounds[c]:bounds[c+1]``, owned by rank c."""
    return [n * c // K for c in range(K + 1)]


class FixedOrderAllreduce:
    """The deterministic allreduce of :func:`combine_gradients`, for your own loops.

    ``reduce(grad, rows, out)`` leaves ``combine_gradients(<every rank's grad>,
    rows)`` in ``out`` on every rank, bitwise the same everywhere and in every
    run: a reduce-scatter (``Alltoallv``) sends chunk c of each rank's vector
    to rank c, which sums the K pieces in rank order in float64; an
    ``Allgatherv`` then hands every rank the whole result.

    Parameters
    ----------
    comm : mpi4py communicator, MPIComm or TorchComm, optional
    n : int
        Length of the vectors.
    dtype : numpy dtype
        Their dtype (float32 or float64).

    Attributes
    ----------
    seconds : float
        Wall time spent in the two collectives (waits for other ranks included).
    """

    def __init__(self, comm: Any, n: int, dtype: Any) -> None:
        comm = _as_comm(comm)
        K, r = comm.size, comm.rank
        self.comm = comm
        self.bounds = _chunks(int(n), K)
        self.counts = [self.bounds[c + 1] - self.bounds[c] for c in range(K)]
        self.lo, self.hi = self.bounds[r], self.bounds[r + 1]
        length = self.hi - self.lo
        self.recv = np.empty((K, length), dtype=dtype)
        self.acc = np.empty(length, dtype=np.float64)
        self.tmp = np.empty(length, dtype=np.float64)
        self.seconds = 0.0

    def __call__(self, grad: np.ndarray, rows: Sequence[int], out: np.ndarray) -> None:
        K = self.comm.size
        t0 = time.perf_counter()
        self.comm.Alltoallv(grad, self.counts, self.recv.reshape(-1), [self.hi - self.lo] * K)
        self.seconds += time.perf_counter() - t0
        _combine_into(self.recv, rows, self.acc, self.tmp)
        out[self.lo:self.hi] = self.acc
        t0 = time.perf_counter()
        self.comm.Allgatherv(out, self.counts)
        self.seconds += time.perf_counter() - t0


def _combine_into(pieces: np.ndarray, rows: Sequence[int], acc: np.ndarray,
                  tmp: np.ndarray) -> None:
    """acc = sum_r (rows[r] / sum(rows)) * pieces[r], in float64, in rank order."""
    total = int(sum(rows))
    first = True
    for r, m in enumerate(rows):
        if not m:
            continue
        if first:
            np.multiply(pieces[r], int(m) / total, out=acc, dtype=np.float64)
            first = False
        else:
            np.multiply(pieces[r], int(m) / total, out=tmp, dtype=np.float64)
            np.add(acc, tmp, out=acc)


# Entries per block of the owner's combine-and-update loop: its float64
# scratch (2 x 128 KiB) stays in the L2 cache.
_BLOCK = 1 << 14


class _Step:
    """One rank's part of a synchronous step after its shard gradient is formed.

    Rank c owns chunk c of the flat vector.  ``exchange`` sends chunk c of this
    rank's gradient to rank c (Alltoallv); ``update`` combines the K pieces of
    its own chunk in rank order (float64) and applies torch.optim.SGD to its
    chunk of the parameters and velocity, block by block while the block is
    in cache; ``share`` hands every rank every chunk of the new parameters
    (Allgatherv).  Each entry is updated by exactly one rank, once, so every
    rank ends with the same bits; the velocity stays sharded until
    ``gather``.  With one rank nothing is communicated.
    """

    def __init__(self, comm: Any, n: int, dtype: np.dtype) -> None:
        K, r = comm.size, comm.rank
        self.comm, self.K = comm, K
        self.bounds = _chunks(n, K)
        self.counts = [self.bounds[c + 1] - self.bounds[c] for c in range(K)]
        self.lo, self.hi = self.bounds[r], self.bounds[r + 1]
        length = self.hi - self.lo
        self.recv = np.empty((K, length), dtype=dtype) if K > 1 else None
        block = min(_BLOCK, max(length, 1))
        self.acc = np.empty(block, dtype=np.float64)
        self.tmp = np.empty(block, dtype=np.float64)
        self.g = np.empty(block, dtype=dtype)
        self.t = np.empty(block, dtype=dtype)
        self.exchange_seconds = 0.0
        self.share_seconds = 0.0
        self.nbytes = sum(a.nbytes for a in (self.acc, self.tmp, self.g, self.t)) + (
            self.recv.nbytes if self.recv is not None else 0)

    def exchange(self, grad: np.ndarray) -> np.ndarray:
        """The K pieces of this rank's chunk, one row per rank."""
        if self.K == 1:
            return grad.reshape(1, -1)
        t0 = time.perf_counter()
        self.comm.Alltoallv(grad, self.counts, self.recv.reshape(-1),
                            [self.hi - self.lo] * self.K)
        self.exchange_seconds += time.perf_counter() - t0
        return self.recv

    @property
    def comm_seconds(self) -> float:
        """Wall time inside the blocking exchange and the share (waits included)."""
        return self.exchange_seconds + self.share_seconds

    def update(self, pieces: np.ndarray, rows: Sequence[int], theta: np.ndarray,
               velocity: np.ndarray, lr: Any, mu: Any, nesterov: bool, wd: Any) -> None:
        """torch.optim.SGD on this rank's chunk, with the combined gradient.

        ``pieces`` is (K, chunk) (combined here, see :func:`combine_gradients`)
        or, 1-D, this chunk of the gradient already combined."""
        for a in range(0, self.hi - self.lo, _BLOCK):
            b = min(self.hi - self.lo, a + _BLOCK)
            n = b - a
            g, t = self.g[:n], self.t[:n]
            if pieces.ndim == 1:
                np.copyto(g, pieces[a:b])
            elif self.K == 1:
                np.copyto(g, pieces[0, a:b])  # the weight is 1: combine is exact
            else:
                acc = self.acc[:n]
                _combine_into(pieces[:, a:b], rows, acc, self.tmp[:n])
                np.copyto(g, acc, casting="same_kind")
            th = theta[self.lo + a:self.lo + b]
            if wd:
                np.multiply(th, wd, out=t)
                g += t
            if mu:
                v = velocity[self.lo + a:self.lo + b]
                v *= mu
                v += g
                if nesterov:
                    np.multiply(v, mu, out=t)
                    g += t
                else:
                    g = v
            np.multiply(g, lr, out=t)
            th -= t

    def share(self, theta: np.ndarray) -> None:
        """Every rank gets every chunk of the parameters."""
        if self.K > 1:
            t0 = time.perf_counter()
            self.comm.Allgatherv(theta, self.counts)
            self.share_seconds += time.perf_counter() - t0

    def gather(self, state: np.ndarray) -> None:
        """Every rank gets every chunk of an optimizer state array."""
        if self.K > 1 and state.size:
            self.comm.Allgatherv(state, self.counts)

    def update_with(self, opt: Any, pieces: np.ndarray, rows: Sequence[int], theta: np.ndarray,
                    state: Dict[str, np.ndarray], step: int, lr: float) -> None:
        """``opt.update`` (a :mod:`fastbp.optim` optimizer) on this rank's chunk.

        Every optimizer there but L-BFGS works element by element (with
        scalars that depend on the step count only), so updating chunk by
        chunk gives the same bits as one update of the whole vector."""
        L = self.hi - self.lo
        if L == 0:
            return
        if pieces.ndim == 1:
            g = pieces
        elif self.K == 1:
            g = pieces[0]
        else:
            if getattr(self, "gchunk", None) is None:
                self.gchunk = np.empty(L, dtype=theta.dtype)
            g = self.gchunk
            for a in range(0, L, _BLOCK):
                b = min(L, a + _BLOCK)
                acc = self.acc[:b - a]
                _combine_into(pieces[:, a:b], rows, acc, self.tmp[:b - a])
                np.copyto(g[a:b], acc, casting="same_kind")
        chunk = {"step": step}
        chunk.update({k: v[self.lo:self.hi] for k, v in state.items()})
        opt.update(theta[self.lo:self.hi], g, chunk, lr=lr)


class _LayerExchange:
    """``_Step.exchange`` cut at the layers, each part started as soon as it is formed.

    The layers are grouped in buckets (consecutive layers, last layer first,
    until a bucket holds ``bucket_bytes``, as PyTorch DDP's ``bucket_cap_mb``);
    a bucket goes out once its last layer is formed.  A bucket's gradient
    (``W_k``, ``b_k``, ``W_k+1``, ...) is a contiguous slice of the flat
    vector, which the chunk boundaries cut into consecutive blocks in rank
    order (the part in chunk 0 first): so ``Ialltoallv`` of the slice, with
    those block sizes, sends rank c the part of its chunk that lies in the
    bucket, and rank c receives every rank's part straight into its place in the
    same (K, chunk) buffer that ``exchange`` fills.  After :meth:`finish` the
    buffer holds the same bytes as after one ``exchange``: only when the
    bytes move changes, not what is summed or in which order.  Between
    layers :meth:`start` tests the pending requests: MPICH progresses
    non-blocking collectives only inside MPI calls (unless its asynchronous
    progress thread is on).
    """

    def __init__(self, comm: Any, step: _Step, buckets: Sequence[Tuple[int, slice]]) -> None:
        K, b, lo, hi = comm.size, step.bounds, step.lo, step.hi
        L = hi - lo
        self.comm, self.step = comm, step
        self.plan = []
        self.starts = {k: i for i, (k, _) in enumerate(buckets)}  # the lowest layer of bucket i
        for _, sl in buckets:
            a, e = int(sl.start), int(sl.stop)
            send_counts = [max(0, min(e, b[c + 1]) - max(a, b[c])) for c in range(K)]
            x0, x1 = max(a, lo), min(e, hi)
            n = max(0, x1 - x0)
            recv_displs = [r * L + (x0 - lo if n else 0) for r in range(K)]
            self.plan.append((a, e, send_counts, [n] * K, recv_displs))
        self.requests: List[Any] = []
        self.started = 0      # non-blocking requests started (a test hook)
        self.seconds = 0.0    # wall time inside the exchange's MPI calls
        self.wait_seconds = 0.0  # of which in the final wait

    def formed(self, k: int, grad: np.ndarray) -> None:
        """Layer k of ``grad`` is formed: send its bucket if k is the bucket's last
        layer to be formed (``grad`` then left alone until :meth:`finish`)."""
        if k not in self.starts:
            return
        a, e, send_counts, recv_counts, recv_displs = self.plan[self.starts[k]]
        t0 = time.perf_counter()
        self.requests.append(self.comm.Ialltoallv(grad[a:e], send_counts,
                                                  self.step.recv.reshape(-1), recv_counts,
                                                  recv_displs))
        self.started += 1
        self.comm.Testall(self.requests)
        self.seconds += time.perf_counter() - t0

    def finish(self) -> np.ndarray:
        """Complete every request; the K pieces of this rank's chunk, as ``exchange``."""
        t0 = time.perf_counter()
        self.comm.Waitall(self.requests)
        self.requests.clear()
        dt = time.perf_counter() - t0
        self.seconds += dt
        self.wait_seconds += dt
        return self.step.recv


# ---------------------------------------------------------------------------
# K-independent mode: fixed-size row slabs summed in a fixed tree
# ---------------------------------------------------------------------------


def _split(lo: int, hi: int) -> int:
    """The tree's split of leaves lo..hi (>= 2 of them): the left part is the
    largest power of two that is smaller than their number."""
    return lo + (1 << ((hi - lo - 1).bit_length() - 1))


def _cover(lo: int, hi: int, a: int, b: int, out: List[Tuple[int, int]]) -> None:
    """The largest nodes of the tree over lo..hi that lie inside a..b, left to right."""
    if b <= lo or hi <= a:
        return
    if a <= lo and hi <= b:
        out.append((lo, hi))
        return
    mid = _split(lo, hi)
    _cover(lo, mid, a, b, out)
    _cover(mid, hi, a, b, out)


class _SlabTree:
    """The batch gradient as a fixed tree over fixed-size row slabs.

    The batch of m rows is cut into slabs of ``slab_rows`` rows (the last may
    be shorter); slab j's leaf is its mean gradient times m_j / m (in float64,
    rounded once to the model's dtype); a node is the sum, in the model's
    dtype, of its two children, the left child holding the largest power of
    two of leaves smaller than the node's.  The tree depends on m and
    slab_rows only, not on K: rank r owns slabs ``n_s*r//K .. n_s*(r+1)//K``,
    computes the largest nodes inside its range, and sends chunk c of each to
    rank c, which evaluates the rest of the tree for its chunk.  Every node
    gets the same bits whatever K, so the run is bitwise the same for any K
    (K = 1 included).
    """

    def __init__(self, comm: Any, step: _Step, slab_rows: int, n: int, dtype: np.dtype) -> None:
        self.comm, self.step, self.S = comm, step, slab_rows
        self.n, self.dtype = n, dtype
        self.pool: List[np.ndarray] = []
        self.send = np.empty(0, dtype=dtype)
        self.recv = np.empty(0, dtype=dtype)

    def _buffer(self) -> np.ndarray:
        return self.pool.pop() if self.pool else np.empty(self.n, dtype=self.dtype)

    def shard_bounds(self, m: int) -> Tuple[List[int], List[int]]:
        """(slab boundaries per rank, row boundaries per rank) of a batch of m rows."""
        K, S = self.comm.size, self.S
        n_s = -(-m // S)
        slabs = [n_s * r // K for r in range(K + 1)]
        return slabs, [min(j * S, m) for j in slabs]

    def gradient(self, net: MLP, Xs: np.ndarray, Ys: np.ndarray, m: int,
                 slabs: List[int]) -> Tuple[np.ndarray, float]:
        """This rank's chunk of the batch gradient, and its shard's loss sum."""
        K, me, S = self.comm.size, self.comm.rank, self.S
        n_s = slabs[-1]
        first = slabs[me]
        loss = [0.0]

        def leaf(j: int) -> np.ndarray:
            lo, hi = (j - first) * S, min((j + 1) * S, m) - first * S
            buf = self._buffer()
            value, _ = net.flat_gradient(Xs[lo:hi], Ys[lo:hi], out=buf)
            loss[0] += value * (hi - lo)
            np.multiply(buf, (hi - lo) / m, out=buf, dtype=np.float64, casting="same_kind")
            return buf

        def value(lo: int, hi: int) -> np.ndarray:
            if hi - lo == 1:
                return leaf(lo)
            mid = _split(lo, hi)
            left, right = value(lo, mid), value(mid, hi)
            left += right
            self.pool.append(right)
            return left

        covers: List[List[Tuple[int, int]]] = []
        for r in range(K):
            nodes: List[Tuple[int, int]] = []
            _cover(0, n_s, slabs[r], slabs[r + 1], nodes)
            covers.append(nodes)
        mine = [value(lo, hi) for lo, hi in covers[me]]
        step = self.step
        if K == 1:
            chunk = mine[0]
        else:
            # Chunk c of each of my nodes to rank c; my chunk of everyone's nodes.
            counts = [len(mine) * c for c in step.counts]
            if self.send.shape[0] < sum(counts):
                self.send = np.empty(sum(counts), dtype=self.dtype)
            pos = 0
            for c in range(K):
                for v in mine:
                    part = v[step.bounds[c]:step.bounds[c + 1]]
                    self.send[pos:pos + part.shape[0]] = part
                    pos += part.shape[0]
            L = step.hi - step.lo
            rcounts = [len(covers[r]) * L for r in range(K)]
            if self.recv.shape[0] < sum(rcounts):
                self.recv = np.empty(sum(rcounts), dtype=self.dtype)
            t0 = time.perf_counter()
            self.comm.Alltoallv(self.send[:sum(counts)], counts, self.recv[:sum(rcounts)],
                                rcounts)
            step.exchange_seconds += time.perf_counter() - t0
            have: Dict[Tuple[int, int], np.ndarray] = {}
            pos = 0
            for r in range(K):
                for node in covers[r]:
                    have[node] = self.recv[pos:pos + L]
                    pos += L

            def upper(lo: int, hi: int) -> np.ndarray:
                if (lo, hi) in have:
                    return have[(lo, hi)]
                mid = _split(lo, hi)
                return upper(lo, mid) + upper(mid, hi)

            chunk = upper(0, n_s)
        self.pool.extend(mine)
        return chunk[step.lo:step.hi] if K == 1 else chunk, loss[0]


# ---------------------------------------------------------------------------
# the data: whole on every rank, or each rank's own rows
# ---------------------------------------------------------------------------


class _Data:
    """Where each global row lives, and how a shard's rows reach its rank."""

    def __init__(self, comm: Any, X: np.ndarray, Y: np.ndarray,
                 offsets: Optional[np.ndarray]) -> None:
        self.comm, self.X, self.Y = comm, X, Y
        self.offsets = offsets  # None: every rank holds every row
        self.n = int(X.shape[0] if offsets is None else offsets[-1])
        self.seconds = 0.0

    def shard(self, rows: np.ndarray, lo: int, hi: int, bounds: Sequence[int]
              ) -> Tuple[np.ndarray, np.ndarray]:
        """This rank's shard (batch positions lo..hi) of the batch ``rows`` (global ids).

        ``bounds`` are every rank's shard boundaries within the batch.
        """
        if self.offsets is None:
            idx = rows[lo:hi]
            return self.X[idx], self.Y[idx]
        t0 = time.perf_counter()
        comm, me, K = self.comm, self.comm.rank, self.comm.size
        owner = np.searchsorted(self.offsets, rows, side="right") - 1
        # Send: the batch rows I own, in batch order, which groups them by the
        # shard (rank) they belong to.
        mine = np.nonzero(owner == me)[0]
        dest = np.searchsorted(np.asarray(bounds), mine, side="right") - 1
        send_counts = np.bincount(dest, minlength=K)
        local = rows[mine] - self.offsets[me]
        # Receive: my shard's rows grouped by owner (rank order), then in batch order.
        src = owner[lo:hi]
        recv_counts = np.bincount(src, minlength=K)
        place = np.argsort(src, kind="stable")
        out = []
        for A in (self.X, self.Y):
            width = A.shape[1]
            recv = np.empty((hi - lo, width), dtype=A.dtype)
            send = np.ascontiguousarray(A[local])
            comm.Alltoallv(send.reshape(-1), send_counts * width, recv.reshape(-1),
                           recv_counts * width)
            shard = np.empty_like(recv)
            shard[place] = recv
            out.append(shard)
        self.seconds += time.perf_counter() - t0
        return out[0], out[1]


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def _collective(exc: BaseException) -> BaseException:
    """Mark an exception that every rank raises alike (no abort needed)."""
    exc.fastbp_collective = True  # type: ignore[attr-defined]
    return exc


def _abort(comm: Any, exc: BaseException) -> None:
    msg = (
        f"fastbp.distributed: rank {comm.rank} of {comm.size} failed: "
        f"{type(exc).__name__}: {exc}; aborting the job\n"
    )
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        sys.stderr.write(tb + msg)
        sys.stderr.flush()
        time.sleep(0.5)  # let the launcher forward the message before the job is torn down
    finally:
        comm.Abort(1)


def _warn_oversubscribed(comm: Any) -> None:
    """Warn (once per node) when ranks x kernel threads exceed the node's cores."""
    local = comm.local_size() if hasattr(comm, "local_size") else 1
    threads, cores = get_num_threads(), os.cpu_count() or 1
    if local * threads > cores and comm.rank % local == 0:
        warnings.warn(
            f"fastbp.distributed: {local} ranks on this node x {threads} kernel threads each "
            f"> {cores} cores: a step then waits for its slowest rank. Set "
            f"fastbp.set_num_threads({max(1, cores // local)}) or "
            f"OMP_NUM_THREADS={max(1, cores // local)} in every rank.",
            RuntimeWarning, stacklevel=4,
        )


def _describe(obj: Any) -> Any:
    """A comparable description of an option (callables by their qualified name)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_describe(o) for o in obj]
    if isinstance(obj, schedules.Schedule):
        return repr(obj)
    return f"{type(obj).__module__}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------


def _write_checkpoint(path: PathLike, arrays: Dict[str, np.ndarray], meta: Dict[str, Any]) -> None:
    """Write ``arrays`` and ``meta`` (JSON) as one .npz, atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    from .io import _new_file_mode

    mode = _new_file_mode(path)  # as fastbp.io.save: the old file's, else 0o666 less the umask
    fd, tmp = tempfile.mkstemp(prefix=".fastbp-ckpt-", suffix=".npz", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_checkpoint(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(str(data.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read the checkpoint {os.fspath(path)!r}: {exc}") from None
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("version") != _CHECKPOINT_VERSION:
        raise ValueError(f"{os.fspath(path)!r} is not a fastbp distributed checkpoint")
    return data, meta


def _buckets(slices: Sequence[slice], itemsize: int, cap: int) -> List[Tuple[int, slice]]:
    """The layers grouped for sending: from the last layer down, consecutive layers
    until their gradient holds ``cap`` bytes or more (the first layer closes the
    last bucket).  Each bucket as (its lowest layer, its slice of the flat vector)."""
    out: List[Tuple[int, slice]] = []
    top: Optional[int] = None
    for k in range(len(slices) - 1, -1, -1):
        top = slices[k].stop if top is None else top
        if (top - slices[k].start) * itemsize >= cap or k == 0:
            out.append((k, slice(slices[k].start, top)))
            top = None
    return out


def _layer_slices(net: MLP) -> List[slice]:
    """Layer k's entries of the flat vector: W_k then b_k (MLP.flat_parameters' layout)."""
    out, off = [], 0
    for n_in, n_out in zip(net.layer_sizes, net.layer_sizes[1:]):
        size = n_in * n_out + (n_out if net.bias else 0)
        out.append(slice(off, off + size))
        off += size
    return out


def _net_config(net: MLP) -> Dict[str, Any]:
    return dict(layer_sizes=list(net.layer_sizes), activation=net.activation,
                output=net.output, loss=net.loss_name, bias=net.bias,
                dtype=net.dtype.name, n_params=net.n_params)


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------


def fit(
    net: MLP,
    X: Any,
    Y: Any,
    *,
    comm: Any = None,
    n_samples: Optional[int] = None,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 0.01,
    shuffle: bool = True,
    seed: Optional[int] = None,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    optimizer: Any = None,
    optimizer_state: Optional[Dict[str, Any]] = None,
    schedule: schedules.ScheduleLike = None,
    validation_data: Optional[Tuple[Any, Any]] = None,
    validation_split: float = 0.0,
    early_stopping: bool = False,
    patience: int = 10,
    callbacks: Optional[Sequence[Callable[[int, Dict[str, Any]], Any]]] = None,
    verbose: int = 0,
    checkpoint: Optional[PathLike] = None,
    resume: Optional[PathLike] = None,
    slab_rows: Optional[int] = None,
    overlap: bool = True,
    bucket_bytes: int = 1 << 20,
    abort_on_error: bool = True,
) -> History:
    """Train ``net`` on K ranks in lockstep: synchronous data-parallel SGD.

    Call it on every rank with the same options (checked).  The options mean
    what they mean for :meth:`fastbp.MLP.fit`; the differences are listed
    below and in the module docstring (the algorithm and its determinism).

    Parameters
    ----------
    net : fastbp.MLP
        The model, the same architecture on every rank.  Rank 0's parameters
        (and momentum velocity) are broadcast first; on return every rank's
        model holds the same trained parameters, bit for bit.
    X, Y : array_like
        With ``n_samples=None``, the whole data set, the same on every rank.
        Otherwise this rank's rows of the global data set: rank r holds rows
        ``offsets[r]:offsets[r+1]`` (``offsets`` the running sum of the ranks'
        row counts, in rank order).  Memory-mapped arrays are read, never
        copied whole (labels are one-hot encoded, a copy of Y).
    comm : mpi4py communicator, MPIComm or TorchComm, optional
        Default ``mpi4py.MPI.COMM_WORLD``.
    n_samples : int, optional
        Rows of the global data set when each rank holds only its own.
    epochs, batch_size, lr, shuffle, seed
        As for ``MLP.fit``; ``batch_size`` is the global batch B, cut into K
        shards.  ``seed=None``: rank 0 draws one and broadcasts it.
    momentum, nesterov, weight_decay
        torch.optim.SGD's formula (``g += weight_decay*θ; v = momentum*v + g;
        θ -= lr*(g + momentum*v if nesterov else v)``), in numpy: rank c
        updates chunk c of θ and of the velocity with the reduced gradient,
        then every rank receives the new θ, so all hold the same bits.  The
        velocity is the model's optimizer state (it persists across fits and
        in model files).
    optimizer : fastbp.optim optimizer or its name, optional
        ``SGD``, ``Adam``, ``AdamW`` or ``RMSprop`` (not ``LBFGS``), instead of
        ``momentum``/``nesterov``/``weight_decay``.  Rank c calls
        ``optimizer.update(θ[chunk c], g[chunk c], <state[chunk c]>, lr=...)``
        with each epoch's lr (``lr`` and ``schedule``; the optimizer's own
        ``lr`` is not used); these optimizers work element by element, so this
        gives the bits of one update of the whole vector.
    optimizer_state : dict, optional
        With ``optimizer``: its state to start from (``optimizer.init_state``,
        or a previous fit's); rank 0's is broadcast.  It is updated in place,
        and returned as ``History.optimizer_state`` (a fresh one when not given).
    schedule
        As for ``MLP.fit``; rank 0 evaluates it and broadcasts each epoch's lr.
    validation_data : (X_val, Y_val), optional
        Laid out like X, Y: the whole set on every rank (``n_samples=None``;
        rank r evaluates its contiguous K-th of it) or this rank's own rows.
        ``val_loss`` / ``val_accuracy`` are the means over all validation rows,
        summed across ranks in rank order.
    validation_split : float
        Only with ``n_samples=None``: the last fraction of the rows, as ``MLP.fit``.
    early_stopping, patience
        As for ``MLP.fit`` (the decision is the same on every rank).
    callbacks : sequence of callables, optional
        Run on rank 0 only, as ``cb(epoch, logs)`` or ``cb.on_epoch_end``;
        rank 0 broadcasts whether one returned True (stop).
    verbose : int
        1: rank 0 prints one line per epoch to stderr.
    checkpoint : path, optional
        Rank 0 writes the training state there (atomically) after every epoch:
        parameters, velocity, epochs done, the shuffling RNG's state, the
        history and the early-stopping state.
    resume : path, optional
        Continue from such a checkpoint (read on rank 0, broadcast): the run
        goes on from the epoch after the saved one up to ``epochs`` and ends
        with the same bits as an uninterrupted run (same K).
    slab_rows : int, optional
        Make the result bitwise the same for every K (K = 1 included): the
        batch gradient is then a fixed tree over slabs of ``slab_rows`` rows
        (one compiled call per slab, a leaf = the slab's mean gradient times
        its share of the batch, nodes summed in the model's dtype, the tree
        fixed by the batch size and ``slab_rows`` alone), and rank r computes
        the slabs ``n_s*r//K .. n_s*(r+1)//K``.  Costs one kernel call and
        one full-length gradient write per slab; take slabs of 32 rows or
        more.  Default None: one call per rank on its shard (faster; the bits
        depend on K).
    overlap : bool
        Overlap the gradient's reduction with the backward pass, as PyTorch
        DDP and Horovod do (default True; with K > 1 and ``slab_rows=None``):
        the shard's gradient is formed layer by layer, last layer first
        (:meth:`fastbp.MLP.layer_gradients`), and each layer's part of the
        reduce-scatter starts (``Ialltoallv``) as soon as that layer is
        formed, while the kernel forms the layers below; all complete before
        the update.  Only when the bytes move changes: the sums, their order
        and so the bits are the same as with ``overlap=False`` (tested).
    bucket_bytes : int
        With overlap, consecutive layers (last first) are sent together until
        their gradient holds this many bytes, as PyTorch DDP's
        ``bucket_cap_mb``: a non-blocking collective per layer costs more
        than it hides when layers are small.  When the whole gradient makes
        one bucket (a net under 1 MiB of float32 gradient with the default)
        there is nothing to overlap, and the step is the one of
        ``overlap=False``.  0: every layer on its own.
    abort_on_error : bool
        On an exception that only some ranks raise, print it (naming the
        rank) and ``comm.Abort(1)``; False re-raises it instead (the other
        ranks may then wait forever: for debugging only).

    Returns
    -------
    History
        ``loss`` (the running mean over the epoch's samples, as ``MLP.fit``),
        ``val_loss``, ``val_accuracy``, ``lr``, ``seconds``, ``best_epoch``,
        ``stopped_early``; ``accuracy`` stays empty (the gradient kernel does
        not report it).  The same on every rank.  Also ``comm_seconds``: this
        rank's wall time inside the step's collectives (waits included);
        ``comm_detail``: that time by part (``"losses"``, the shard losses'
        allgather; ``"exchange"``, the gradient's reduce-scatter, with overlap
        the time inside its non-blocking calls; ``"wait"``, of which in the
        final wait; ``"share"``, the parameters' allgather; ``"rows"``,
        fetching the shard's rows from their owners) and ``"requests"``, the
        number of non-blocking requests started (one per bucket per step with
        overlap, else 0); and
        ``optimizer_state``: the optimizer's state dict with ``optimizer=``
        (None otherwise; the built-in SGD's velocity is the model's).

    Raises
    ------
    ValueError
        On every rank, when the options, architecture or data shapes differ
        across ranks or a rank's data is bad (the message names the ranks).
    FloatingPointError
        On every rank, when a batch's loss is NaN or Inf (the model is left at
        the last good step) or an epoch made the parameters non-finite (the
        model is restored to the start of that epoch).
    ImportError
        When mpi4py is missing (and no ``comm`` is given).

    Notes
    -----
    Not supported, unlike ``MLP.fit``: ``flush_denormals`` (the gradient
    kernel runs with the caller's floating-point mode) and the training
    ``accuracy``.  Set the kernel threads per rank so that ranks x threads
    does not exceed the cores (``fastbp.set_num_threads``, ``OMP_NUM_THREADS``).
    """
    comm = _as_comm(comm)
    try:
        return _fit(net, X, Y, comm, n_samples, epochs, batch_size, lr, shuffle, seed,
                    momentum, nesterov, weight_decay, optimizer, optimizer_state,
                    schedule, validation_data,
                    validation_split, early_stopping, patience, callbacks, verbose,
                    checkpoint, resume, slab_rows, overlap, bucket_bytes)
    except BaseException as exc:
        if getattr(exc, "fastbp_collective", False) or comm.size == 1 or not abort_on_error:
            raise
        _abort(comm, exc)
        raise  # pragma: no cover - Abort does not return


def _check_local(net: MLP, X: Any, Y: Any, validation_data: Any, validation_split: float,
                 n_samples: Optional[int], epochs: int, batch_size: int, lr: float,
                 momentum: float, nesterov: bool, weight_decay: float, patience: int,
                 early_stopping: bool, shuffle: bool, optimizer: Any, optimizer_state: Any,
                 callbacks: Any) -> Dict[str, Any]:
    """This rank's checked arrays and options; raises on bad input."""
    if not isinstance(net, MLP):
        raise TypeError(f"net must be a fastbp.MLP, got {type(net).__name__}")
    epochs, batch_size = C.check_fit_args(epochs, batch_size)
    lr0 = C.check_lr(lr, net.dtype.type)
    mu, nesterov, wd = C.check_optimizer(momentum, nesterov, weight_decay)
    C.check_bool("shuffle", shuffle)
    C.check_bool("early_stopping", early_stopping)
    C.check_int("patience", patience, 1)
    hooks = C.check_callbacks(callbacks)
    opt = None
    if optimizer is not None:
        opt = _optim.get(optimizer)
        if isinstance(opt, _optim.LBFGS):
            raise ValueError("LBFGS is a full-batch method; fastbp.distributed.fit takes the "
                             "mini-batch optimizers (SGD, Adam, AdamW, RMSprop)")
        if mu or wd or nesterov:
            raise ValueError("give optimizer= or momentum/nesterov/weight_decay, not both "
                             "(the optimizer object holds its own)")
        if optimizer_state is not None:
            opt.check_state(optimizer_state, net.n_params, net.dtype)
    elif optimizer_state is not None:
        raise ValueError("optimizer_state needs optimizer=")
    if n_samples is not None and (isinstance(n_samples, bool)
                                  or not isinstance(n_samples, (int, np.integer)) or n_samples < 1):
        raise ValueError(f"n_samples must be a positive integer or None, got {n_samples!r}")
    Xc = C.check_X(X, net.layer_sizes[0], net.dtype.type)
    Yc = C.check_Y(Y, Xc.shape[0], net.layer_sizes[-1], net.loss_name, net.dtype.type)
    # A split holds out the last rows of the global set, which a rank holding
    # only its own rows does not have.
    if (validation_data is None and n_samples is not None
            and C.check_validation_split(validation_split)):
        raise ValueError("validation_split needs the whole data set on every rank "
                         "(n_samples=None); give each rank's validation_data instead")

    def pair(Xv: Any, Yv: Any) -> Tuple[np.ndarray, np.ndarray]:
        Xv = C.check_X(Xv, net.layer_sizes[0], net.dtype.type)
        return Xv, C.check_Y(Yv, Xv.shape[0], net.layer_sizes[-1], net.loss_name, net.dtype.type)

    Xc, Yc, val = C.check_validation(Xc, Yc, validation_data, validation_split, pair)
    if early_stopping and val is None:
        raise ValueError("early_stopping needs validation_data or validation_split")
    return dict(X=Xc, Y=Yc, val=val, epochs=epochs, batch_size=batch_size, lr0=lr0,
                momentum=mu, nesterov=nesterov, weight_decay=wd, optimizer=opt,
                optimizer_state=optimizer_state, callbacks=hooks)


def _fit(net: MLP, X: Any, Y: Any, comm: Any, n_samples: Optional[int], epochs: int,
         batch_size: int, lr: float, shuffle: bool, seed: Optional[int], momentum: float,
         nesterov: bool, weight_decay: float, optimizer: Any, optimizer_state: Any,
         schedule: Any, validation_data: Any,
         validation_split: float, early_stopping: bool, patience: int,
         callbacks: Any, verbose: int, checkpoint: Optional[PathLike],
         resume: Optional[PathLike], slab_rows: Optional[int], overlap: bool,
         bucket_bytes: int) -> History:
    K, me = comm.size, comm.rank

    # -- 1. every rank checks its own input, then all compare signatures ----
    error: Optional[str] = None
    local: Dict[str, Any] = {}
    try:
        local = _check_local(net, X, Y, validation_data, validation_split, n_samples, epochs,
                             batch_size, lr, momentum, nesterov, weight_decay, patience,
                             early_stopping, shuffle, optimizer, optimizer_state, callbacks)
        lr_of = schedules.resolve(schedule, local["epochs"])
        if slab_rows is not None and (isinstance(slab_rows, bool) or not isinstance(
                slab_rows, (int, np.integer)) or slab_rows < 1):
            raise ValueError(f"slab_rows must be a positive integer or None, got {slab_rows!r}")
        overlap = C.check_bool("overlap", overlap)
        bucket_bytes = C.check_int("bucket_bytes", bucket_bytes, 0)
    except (ValueError, TypeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    sig: Dict[str, Any] = {}
    if error is None:
        Xc, Yc, val = local["X"], local["Y"], local["val"]
        sig = dict(
            **_net_config(net), n_samples=n_samples, epochs=local["epochs"],
            batch_size=local["batch_size"], lr=local["lr0"], shuffle=bool(shuffle),
            seed=seed, momentum=local["momentum"], nesterov=local["nesterov"],
            weight_decay=local["weight_decay"], schedule=_describe(schedule),
            optimizer=local["optimizer"].get_config() if local["optimizer"] else None,
            early_stopping=bool(early_stopping), patience=int(patience),
            validation=val is not None, validation_split=float(validation_split or 0.0),
            checkpoint=checkpoint is not None, resume=resume is not None,
            slab_rows=slab_rows, overlap=overlap, bucket_bytes=bucket_bytes,
            X_row_shape=list(np.shape(X)[1:]), Y_row_shape=list(np.shape(Y)[1:]),
        )
        rows = dict(train=int(Xc.shape[0]), val=int(val[0].shape[0]) if val is not None else 0)
    else:
        rows = {}
    everyone = comm.allgather((error, sig, rows))
    errors = [f"rank {r}: {e}" for r, (e, _, _) in enumerate(everyone) if e is not None]
    if errors:
        raise _collective(ValueError("fastbp.distributed.fit: bad input on "
                                     + "; ".join(errors)))
    diffs = []
    for key, value in everyone[0][1].items():
        values = [s[key] for _, s, _ in everyone]
        if any(v != value for v in values):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            diffs.append(f"{key} differs across ranks ({shown})")
    train_rows = [r["train"] for _, _, r in everyone]
    val_rows = [r["val"] for _, _, r in everyone]
    if n_samples is None:
        if len(set(train_rows)) > 1:
            diffs.append(
                "with n_samples=None every rank must hold the whole data set, but the ranks hold "
                + ", ".join(f"rank {r}: {n} rows" for r, n in enumerate(train_rows))
                + " (give n_samples to have each rank hold only its own rows)"
            )
        if len(set(val_rows)) > 1:
            diffs.append("with n_samples=None every rank must hold the whole validation set ("
                         + ", ".join(f"rank {r}: {n} rows" for r, n in enumerate(val_rows)) + ")")
    elif sum(train_rows) != n_samples:
        diffs.append(f"n_samples={n_samples} but the ranks hold "
                     + " + ".join(str(n) for n in train_rows) + f" = {sum(train_rows)} rows")
    if diffs:
        raise _collective(ValueError("fastbp.distributed.fit: " + "; ".join(diffs)))

    _warn_oversubscribed(comm)
    epochs, B = local["epochs"], local["batch_size"]
    lr0, mu, wd = local["lr0"], local["momentum"], local["weight_decay"]
    nesterov = local["nesterov"]
    sharded = n_samples is not None and any(n != n_samples for n in train_rows)
    offsets = np.concatenate([[0], np.cumsum(train_rows)]).astype(np.int64) if sharded else None
    data = _Data(comm, Xc, Yc, offsets)
    n = data.n
    if val is not None and not sharded:  # each rank evaluates its K-th of the shared set
        nv = val[0].shape[0]
        a, b = nv * me // K, nv * (me + 1) // K
        val = (val[0][a:b], val[1][a:b])
    callbacks = local["callbacks"] if me == 0 else []
    classify = net.loss_name in C.CLASSIFICATION_LOSSES

    # -- 2. the starting state: rank 0's (or the checkpoint's), broadcast ----
    # The optimizer's state is a dict of flat arrays: {"velocity"} for the
    # built-in SGD (the model's optimizer state), the optimizer's state_names()
    # otherwise, plus the number of steps taken (``ostep``).
    theta = net.flat_parameters
    P = theta.shape[0]
    opt = local["optimizer"]
    start_epoch = 0
    hist = History()
    best_val, since_best = np.inf, 0
    best: Optional[Tuple[np.ndarray, Dict[str, np.ndarray], int]] = None
    rng_state = None
    ckpt: Optional[Tuple[Dict[str, np.ndarray], Dict[str, Any]]] = None
    if resume is not None:
        state = None
        if me == 0:
            try:
                arrays, meta = _read_checkpoint(resume)
                if meta["net"] != _net_config(net):
                    raise ValueError(f"the checkpoint {os.fspath(resume)!r} is for "
                                     f"{meta['net']}, not for this model")
                wanted = opt.get_config() if opt is not None else None
                if meta.get("optimizer") != wanted:
                    raise ValueError(f"the checkpoint was written with optimizer "
                                     f"{meta.get('optimizer')}, this fit uses {wanted}")
                for key in list(arrays):
                    arrays[key] = C._param(f"checkpoint {key}", arrays[key], (P,),
                                           net.dtype.type)
                state = (None, arrays, meta)
            except (ValueError, KeyError, TypeError) as exc:
                state = (f"cannot resume from {os.fspath(resume)!r}: {exc}", None, None)
        err, arrays, meta = comm.bcast(state)
        if err is not None:
            raise _collective(ValueError(err))
        ckpt = (arrays, meta)
        start_epoch = int(meta["epoch"])
        seed = meta["seed"]
        rng_state = meta["rng"]
        for key, values in meta["history"].items():
            getattr(hist, key).extend(values)
        hist.best_epoch = meta["best_epoch"]
        best_val, since_best = float(meta["best_val"]), int(meta["since_best"])
    elif seed is None:
        seed = comm.bcast(int(np.random.SeedSequence().entropy) if me == 0 else None)

    if opt is not None:
        names: Tuple[str, ...] = tuple(opt.state_names())
        given = local["optimizer_state"]
        ostate = given if given is not None else opt.init_state(P, net.dtype)
        ost = {k: ostate[k] for k in names}
        ostep = int(np.asarray(ostate["step"]))
    else:
        names = ("velocity",) if mu else ()
        v0 = net.optimizer_state().get("velocity")
        ost = {"velocity": v0 if v0 is not None else np.zeros_like(theta)} if mu else {}
        ostep = 0
        ostate = None
    if ckpt is not None:
        arrays, meta = ckpt
        np.copyto(theta, arrays["theta"])
        for k in names:
            if "state." + k in arrays:
                np.copyto(ost[k], arrays["state." + k])
            else:
                ost[k].fill(0)
        ostep = int(meta["state_step"])
        if "best.theta" in arrays:
            best = (arrays["best.theta"], {k: arrays["best.state." + k] for k in names},
                    int(meta["best_state_step"]))
    # Rank 0's parameters and optimizer state win.
    comm.Bcast(theta)
    ostep = int(comm.bcast(ostep))
    if opt is None:
        has_v = comm.bcast("velocity" in net.optimizer_state())
        if has_v and not mu:  # a fit without momentum leaves rank 0's velocity as it is
            v0 = net.optimizer_state().get("velocity")
            ost_v = v0 if v0 is not None else np.zeros_like(theta)
            comm.Bcast(ost_v)
            net.set_optimizer_state({"velocity": ost_v})
        elif not has_v and not mu:
            net.reset_optimizer()
    for k in names:
        comm.Bcast(ost[k])
    rng = np.random.default_rng(seed)
    if rng_state is not None:
        rng.bit_generator.state = rng_state

    def publish() -> None:
        """The optimizer state into the model (built-in SGD) or the caller's dict."""
        if opt is None:
            if mu:
                net.set_optimizer_state({"velocity": ost["velocity"]})
        else:
            ostate["step"] = ostep

    # -- 3. the epochs ----------------------------------------------------
    grad = np.empty_like(theta)
    step = _Step(comm, P, net.dtype)
    tree = _SlabTree(comm, step, slab_rows, P, net.dtype) if slab_rows else None
    buckets = _buckets(_layer_slices(net), net.dtype.itemsize, bucket_bytes)
    layers = _LayerExchange(comm, step, buckets) \
        if overlap and K > 1 and tree is None and len(buckets) > 1 else None
    loss_seconds = 0.0
    losses = np.empty(K, dtype=np.float64)
    hist.workspace_bytes = int(grad.nbytes + step.nbytes)
    start_theta = np.empty_like(theta)
    start_ost = {k: np.empty_like(v) for k, v in ost.items()}
    n_batches = -(-n // B)
    sdt = net.dtype.type
    mu_t, wd_t = sdt(mu), sdt(wd)
    velocity = ost.get("velocity", np.zeros(0, dtype=net.dtype)) if opt is None else None
    for epoch in range(start_epoch, epochs):
        lr_e = comm.bcast(schedules.check_lr_value(lr_of(epoch, lr0), epoch) if me == 0 else None)
        lr_t = sdt(lr_e)
        order = rng.permutation(n).astype(np.int64) if shuffle else np.arange(n, dtype=np.int64)
        t0 = time.perf_counter()
        np.copyto(start_theta, theta)
        for k in names:
            np.copyto(start_ost[k], ost[k])
        start_step = ostep
        loss_sum = 0.0
        for b in range(n_batches):
            rows = order[b * B:(b + 1) * B]
            m = rows.shape[0]
            if tree is None:
                bounds = [m * r // K for r in range(K + 1)]
            else:
                slabs, bounds = tree.shard_bounds(m)
            shard_rows = [bounds[r + 1] - bounds[r] for r in range(K)]
            Xs, Ys = data.shard(rows, bounds[me], bounds[me + 1], bounds)
            local_loss = 0.0
            backward = None
            if tree is not None:
                pieces, local_loss = tree.gradient(net, Xs, Ys, m, slabs)
            elif shard_rows[me] and layers is not None:
                # The forward pass now, each layer's gradient below.
                backward = net.layer_gradients(Xs, Ys, out=grad)
                local_loss = backward.loss * shard_rows[me]
            elif shard_rows[me]:
                loss_me, _ = net.flat_gradient(Xs, Ys, out=grad)
                local_loss = loss_me * shard_rows[me]
            else:
                grad.fill(0)
            # Every rank's shard loss, to every rank: the same finiteness
            # verdict everywhere, and the epoch's loss in rank order.
            t1 = time.perf_counter()
            comm.Allgather_f64(local_loss, losses)
            loss_seconds += time.perf_counter() - t1
            if not np.isfinite(losses).all():
                bad = [r for r in range(K) if not np.isfinite(losses[r])]
                for k in names:  # the state of the last good step
                    step.gather(ost[k])
                publish()
                raise _collective(FloatingPointError(
                    f"training diverged at epoch {epoch + 1}, batch {b + 1}, whose loss was "
                    f"NaN or Inf (on the shard{'s' if len(bad) > 1 else ''} of rank"
                    f"{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}); the weights "
                    f"are those of the last good step. Try a smaller learning rate "
                    f"(lr={lr_e:g})."
                ))
            for r in range(K):
                loss_sum += losses[r]
            if layers is not None:
                # Last layer first: a bucket's part of the reduce-scatter
                # goes out while the kernel forms the layers below it.
                for k in range(net.n_layers - 1, -1, -1):
                    if backward is not None:
                        backward.form()
                    layers.formed(k, grad)
                pieces = layers.finish()
            elif tree is None:
                pieces = step.exchange(grad)
            if opt is None:
                step.update(pieces, shard_rows, theta, velocity, lr_t, mu_t, nesterov, wd_t)
            else:
                step.update_with(opt, pieces, shard_rows, theta, ost, ostep, lr_e)
            ostep += 1
            step.share(theta)
        if not np.isfinite(theta).all():
            np.copyto(theta, start_theta)
            for k in names:
                np.copyto(ost[k], start_ost[k])
            ostep = start_step
            publish()
            raise _collective(FloatingPointError(
                f"training diverged at epoch {epoch + 1}: an update made weights NaN or Inf; "
                f"the weights are restored to the start of that epoch. Try a smaller "
                f"learning rate (lr={lr_e:g})."
            ))
        for k in names:
            step.gather(ost[k])
        logs: Dict[str, Any] = {"epoch": epoch, "loss": loss_sum / n,
                                "accuracy": None, "lr": lr_e}
        if val is not None:
            if val[0].shape[0]:
                v_loss, v_hit = net._net.loss(theta, val[0], val[1], net._chunk_rows(),
                                              get_num_threads())
                part = (v_loss * val[0].shape[0], v_hit * val[0].shape[0], val[0].shape[0])
            else:
                part = (0.0, 0.0, 0)
            parts = comm.allgather(part)
            nv_total = sum(p[2] for p in parts)
            logs["val_loss"] = sum(p[0] for p in parts) / nv_total
            logs["val_accuracy"] = sum(p[1] for p in parts) / nv_total if classify else None
        logs["seconds"] = time.perf_counter() - t0
        hist.record(logs)
        if verbose and me == 0:
            shown = " ".join(f"{k}={v:.6g}" for k, v in logs.items()
                             if isinstance(v, float) and k != "epoch")
            print(f"epoch {epoch + 1}/{epochs} {shown}", file=sys.stderr, flush=True)

        stop = False
        if early_stopping:
            if logs["val_loss"] < best_val:
                best_val, since_best = logs["val_loss"], 0
                best = (theta.copy(), {k: v.copy() for k, v in ost.items()}, ostep)
                hist.best_epoch = epoch
            else:
                since_best += 1
                stop = since_best >= patience
        for hook in callbacks:
            stop = bool(hook(epoch, dict(logs))) or stop
        stop = bool(comm.bcast(stop if me == 0 else None))
        publish()
        if checkpoint is not None and me == 0:
            arrays = {"theta": theta}
            arrays.update({"state." + k: v for k, v in ost.items()})
            if best is not None:
                arrays["best.theta"] = best[0]
                arrays.update({"best.state." + k: v for k, v in best[1].items()})
            meta = dict(format=CHECKPOINT_FORMAT, version=_CHECKPOINT_VERSION, epoch=epoch + 1,
                        seed=seed, rng=rng.bit_generator.state, net=_net_config(net),
                        optimizer=opt.get_config() if opt is not None else None,
                        state_step=ostep, best_state_step=best[2] if best else 0,
                        history=hist.as_dict(), best_epoch=hist.best_epoch,
                        best_val=float(best_val), since_best=since_best, ranks=K)
            _write_checkpoint(checkpoint, arrays, meta)
        if stop:
            hist.stopped_early = epoch < epochs - 1
            break
    if best is not None:
        np.copyto(theta, best[0])
        for k in names:
            np.copyto(ost[k], best[1][k])
        ostep = best[2]
    publish()
    hist.optimizer_state = ostate  # type: ignore[attr-defined]
    exchanged = layers.seconds if layers is not None else 0.0
    hist.comm_seconds = (step.comm_seconds + exchanged + data.seconds  # type: ignore[attr-defined]
                         + loss_seconds)
    hist.comm_detail = dict(  # type: ignore[attr-defined]
        losses=loss_seconds, exchange=step.exchange_seconds + exchanged,
        wait=layers.wait_seconds if layers is not None else step.exchange_seconds,
        share=step.share_seconds, rows=data.seconds,
        requests=layers.started if layers is not None else 0)
    return hist
