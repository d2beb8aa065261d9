"""Encoding item embeddings to semantic IDs at scale with Ray Data (optional extra ``[ray]``).

:class:`EncodeBatch` is a callable class for ``Dataset.map_batches``: Ray builds one instance
per worker (an actor), so the codebook is shipped once per worker as a constructor argument
(or as an ``ObjectRef`` from ``ray.put``, fetched once in the constructor), never per batch.
Each batch's embedding column is encoded with :func:`semid_fast.rq_encode` or
:func:`semid_fast.pq_encode` (optionally OPQ-rotated), so the codes are exactly the
single-process ones: every row is encoded independently of its batch.

Ray schedules, retries and restarts the workers (a worker that dies is restarted and its
batch re-run: the output holds each input row once). Spark would do as well for a pure
Parquet-to-Parquet job on an existing Spark cluster (a pandas UDF holding the same
encoder); Ray is used here because its actors keep the codebook and a GPU per worker.

Example::

    import ray, semid_fast.ray as sfr
    ds = ray.data.read_parquet("embeddings/")
    codes = ds.map_batches(sfr.EncodeBatch, fn_constructor_args=(codebooks,),
                           fn_constructor_kwargs={"column": "embedding"},
                           batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=4))
    codes.write_parquet("codes/")

``ray`` itself is imported only where needed: this module imports without it.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _checks
from .ops.quantize import pq_encode, rq_encode

__all__ = ["EncodeBatch", "KINDS", "embeddings_of"]

KINDS = ("rq", "pq")


def _fetch(value):
    """The value behind a Ray ObjectRef (one ``ray.get`` per worker), else the value."""
    if type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(value)
    return value


def _tensor(value, name: str) -> torch.Tensor | None:
    value = _fetch(value)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))  # a writable copy (Ray's are read-only)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise TypeError(f"{name} must be a numpy array, a torch.Tensor or a Ray ObjectRef to one, "
                    f"got {type(value).__name__}")


def embeddings_of(batch, column: str) -> np.ndarray:
    """The (N, D) float array of ``column`` in a numpy batch (dict of arrays) or an Arrow
    table: a 2-D array, an object array of equal-length vectors, an Arrow (fixed-size)
    list column or Ray's tensor extension column."""
    if isinstance(batch, dict):
        if column not in batch:
            raise ValueError(f"batch has no column {column!r}; columns: {sorted(batch)}")
        values = batch[column]
        if values.dtype == object:
            values = np.stack(values) if len(values) else np.empty((0, 0), np.float32)
        return values
    import pyarrow as pa

    if not isinstance(batch, pa.Table):
        raise TypeError(f"batch must be a dict of numpy arrays or a pyarrow.Table, got "
                        f"{type(batch).__name__} (use batch_format='numpy' or 'pyarrow')")
    if column not in batch.column_names:
        raise ValueError(f"batch has no column {column!r}; columns: {batch.column_names}")
    array = batch.column(column).combine_chunks()
    n = len(array)
    if pa.types.is_fixed_size_list(array.type):
        return array.flatten().to_numpy().reshape(n, array.type.list_size)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = np.diff(array.offsets.to_numpy())
        if n and not (lengths == lengths[0]).all():
            raise ValueError(f"column {column!r} holds vectors of different lengths "
                             f"{sorted(set(lengths.tolist()))[:5]}")
        return array.flatten().to_numpy().reshape(n, int(lengths[0]) if n else 0)
    return np.asarray(array.to_numpy(zero_copy_only=False))  # Ray's tensor extension type


class EncodeBatch:
    """``map_batches`` callable: the embedding column of each batch to RQ or PQ/OPQ codes.

    Args:
        codebooks: (L, K, D) RQ codebooks (``kind="rq"``) or (M, K, D/M) PQ codebooks
            (``kind="pq"``), float, as numpy/torch or a Ray ``ObjectRef`` to either.
        kind: "rq" (:func:`semid_fast.rq_encode`) or "pq" (:func:`semid_fast.pq_encode`).
        column: the embedding column ((N, D) float vectors).
        output_column: the codes column written, (N, L) or (N, M) ``code_dtype``.
        rotation, center: OPQ rotation (D, D) and centre (D,) for ``kind="pq"``.
        beam_width: RQ beam search width (``rq_encode``'s).
        code_dtype: torch integer dtype of the codes (default uint8 when K <= 256, else int32).
        device: "cpu", "cuda" or "auto" (CUDA when this worker sees a GPU: ask Ray for one
            with ``num_gpus=1`` in ``map_batches``).
        keep_embedding: keep the embedding column in the output (default: drop it).
        backend: as the encode ops.

    Calling it on a batch (dict of numpy arrays or a pyarrow.Table) returns the same kind of
    batch with the codes column added (as a fixed-size list column for Arrow).
    """

    def __init__(self, codebooks, *, kind: str = "rq", column: str = "embedding",
                 output_column: str = "codes", rotation=None, center=None,
                 beam_width: int = 1, code_dtype: torch.dtype | None = None,
                 device: str = "auto", keep_embedding: bool = False, backend: str = "auto"):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        books = _tensor(codebooks, "codebooks")
        _checks.tensor(books, "codebooks", 3, _checks.FLOAT_DTYPES, "(L, K, D) or (M, K, D/M)")
        if kind == "rq" and (rotation is not None or center is not None):
            raise ValueError("rotation and center apply to kind='pq' only")
        _checks.positive_int(beam_width, "beam_width")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
        k = books.shape[1]
        self.code_dtype = code_dtype or (torch.uint8 if k <= 256 else torch.int32)
        _checks.code_dtype(self.code_dtype, k)
        self.device = torch.device(device)
        self.codebooks = books.to(self.device)
        self.rotation = _tensor(rotation, "rotation")
        self.center = _tensor(center, "center")
        if self.rotation is not None:
            self.rotation = self.rotation.to(self.device)
        if self.center is not None:
            self.center = self.center.to(self.device)
        self.kind, self.column, self.output_column = kind, column, output_column
        self.beam_width, self.keep_embedding, self.backend = beam_width, keep_embedding, backend

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) float array -> (N, L or M) codes as a numpy array."""
        # Arrow and Ray hand over read-only views, which torch refuses to wrap silently.
        x = torch.from_numpy(np.require(embeddings, requirements=("C", "W")))
        if x.dtype == torch.float64:
            x = x.float()
        x = x.to(self.device)
        if self.kind == "rq":
            codes = rq_encode(x, self.codebooks, beam_width=self.beam_width,
                              code_dtype=self.code_dtype, backend=self.backend)
        else:
            codes = pq_encode(x, self.codebooks, rotation=self.rotation, center=self.center,
                              code_dtype=self.code_dtype, backend=self.backend)
        return codes.cpu().numpy()

    def __call__(self, batch):
        codes = self.encode(embeddings_of(batch, self.column))
        if isinstance(batch, dict):
            out = {name: values for name, values in batch.items()
                   if self.keep_embedding or name != self.column}
            out[self.output_column] = codes
            return out
        import pyarrow as pa

        table = batch if self.keep_embedding else batch.drop_columns([self.column])
        flat = pa.array(codes.reshape(-1))
        return table.append_column(self.output_column,
                                   pa.FixedSizeListArray.from_arrays(flat, codes.shape[1]))
