"""Codebooks in and out of faiss and vector-quantize-pytorch.

Users keep their training (faiss ``ResidualQuantizer`` / ``ProductQuantizer`` / ``OPQMatrix``,
or a vector-quantize-pytorch ``ResidualVQ``) and take semid_fast's encoding:

>>> codebooks = codebooks_from_faiss_rq(rq)          # (L, K, D) float32
>>> codes = semid_fast.rq_encode(x, codebooks, beam_width=rq.max_beam_size)

Layouts (all float32, CPU for the faiss functions):

* RQ codebooks (L, K, D): level ``l``, codeword ``k``; faiss stores the same numbers as
  ``ResidualQuantizer.codebooks`` (a flat ``total_codebook_size * d`` vector, levels in order).
* PQ codebooks (M, K, D/M): faiss ``ProductQuantizer.centroids`` in the same order.
* OPQ rotation R (D_out, D_in): faiss ``OPQMatrix.A`` read row-major. faiss applies it as
  ``y = A x`` per vector, i.e. ``Y = X @ R.T`` on rows, which is how ``pq_encode(rotation=R)``
  uses it.
* PQ centre c (D,): the coarse centroid of an ``IndexIVFPQ`` with one list, subtracted after
  the rotation (``pq_encode(center=c)``); :func:`pq_from_faiss` returns all three.

faiss and vector_quantize_pytorch are optional and imported only inside these functions.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "codebooks_from_faiss_rq",
    "codebooks_to_faiss_rq",
    "codebooks_from_faiss_pq",
    "codebooks_to_faiss_pq",
    "rotation_from_faiss_opq",
    "rotation_to_faiss_opq",
    "from_faiss_index",
    "pq_from_faiss",
    "codebooks_from_residual_vq",
]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "semid_fast.interop needs faiss for this function: "
            "pip install 'semid_fast[bench]' (or pip install faiss-cpu)") from e
    return faiss


def _vqp():
    try:
        import vector_quantize_pytorch
    except ImportError as e:  # pragma: no cover
        raise ImportError(
            "semid_fast.interop needs vector-quantize-pytorch for this function: "
            "pip install 'semid_fast[bench]' (or pip install vector-quantize-pytorch)") from e
    return vector_quantize_pytorch


def _as_f32_array(value, name: str, ndim: int, shape_doc: str) -> np.ndarray:
    """C-contiguous float32 numpy copy of a torch tensor / numpy array, checked."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor {shape_doc}, got {value.dtype}")
        arr = value.detach().to("cpu", torch.float32).numpy()
    elif isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise TypeError(f"{name} must be a floating-point array {shape_doc}, got {value.dtype}")
        arr = value.astype(np.float32)
    else:
        raise TypeError(f"{name} must be a torch.Tensor (or numpy array) of shape {shape_doc}, "
                        f"got {type(value).__name__}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc} ({ndim} dims), got {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"{name} must have non-zero sizes, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(arr)


def _nbits_of(k: int, name: str) -> int:
    """log2(k); faiss codebooks hold 2**nbits codewords."""
    if k < 2 or k & (k - 1) != 0:
        raise ValueError(f"{name} has K={k} codewords; faiss needs a power of two >= 2 "
                         "(K = 2**nbits)")
    return k.bit_length() - 1


def _vector(faiss, vec) -> np.ndarray:
    return faiss.vector_to_array(vec)


# ---------------------------------------------------------------------------------------------
# faiss ResidualQuantizer
# ---------------------------------------------------------------------------------------------


def codebooks_from_faiss_rq(rq) -> torch.Tensor:
    """RQ codebooks of a trained faiss residual quantizer.

    Args:
        rq: a trained ``faiss.ResidualQuantizer`` (or a ``faiss.IndexResidualQuantizer``,
            whose ``.rq`` is used). Every level must have the same ``nbits``.

    Returns:
        (L, K, D) float32 CPU tensor, K = 2**nbits, for ``semid_fast.rq_encode`` /
        ``rq_decode``. Greedy faiss encoding (``max_beam_size=1``) is ``rq_encode`` with
        ``beam_width=1``; faiss beam search is ``beam_width=rq.max_beam_size``.

    Raises:
        TypeError: not a ResidualQuantizer.
        ValueError: untrained, or levels with different nbits (not an (L, K, D) layout).
    """
    faiss = _faiss()
    # `rq` (maybe the caller's only reference to an owning wrapper) stays bound until the
    # numbers are copied: `quantizer` may be a non-owning view into it.
    quantizer = rq.rq if isinstance(rq, faiss.IndexResidualQuantizer) else rq
    if not isinstance(quantizer, faiss.ResidualQuantizer):
        hint = ""
        if isinstance(quantizer, faiss.AdditiveQuantizer):
            hint = (" (other additive quantizers, e.g. LocalSearchQuantizer, are encoded by "
                    "another search than greedy/beam residual encoding)")
        raise TypeError("rq must be a faiss.ResidualQuantizer or faiss.IndexResidualQuantizer, "
                        f"got {type(quantizer).__name__}{hint}")
    if not quantizer.is_trained:
        raise ValueError("rq: the faiss ResidualQuantizer is not trained")
    nbits = [int(b) for b in _vector(faiss, quantizer.nbits)]
    if len(set(nbits)) != 1:
        raise ValueError(f"rq: levels have different nbits {nbits}; variable codebook sizes are "
                         "not supported by the (L, K, D) codebook layout")
    levels, d, k = int(quantizer.M), int(quantizer.d), 1 << nbits[0]
    flat = _vector(faiss, quantizer.codebooks)
    if flat.size != levels * k * d:
        raise ValueError(f"rq: codebooks hold {flat.size} floats, expected L*K*D = "
                         f"{levels}*{k}*{d}")
    return torch.from_numpy(flat.reshape(levels, k, d).copy())


def codebooks_to_faiss_rq(codebooks, *, beam_width: int = 1, use_beam_lut: bool = False):
    """A trained ``faiss.ResidualQuantizer`` holding ``codebooks``.

    Args:
        codebooks: (L, K, D) float tensor (or numpy array), K a power of two.
        beam_width: faiss ``max_beam_size`` used by ``compute_codes`` (1 = greedy).
        use_beam_lut: faiss ``use_beam_LUT`` (distances from precomputed codebook tables).

    Returns:
        ``faiss.ResidualQuantizer`` with ``is_trained=True``, search type ``ST_decompress``
        (codes are L * nbits bits, no norm), and its codebook tables computed.
    """
    faiss = _faiss()
    arr = _as_f32_array(codebooks, "codebooks", 3, "(L, K, D)")
    if isinstance(beam_width, bool) or not isinstance(beam_width, int):
        raise TypeError(f"beam_width must be an int, got {type(beam_width).__name__}")
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    levels, k, d = arr.shape
    nbits = _nbits_of(k, "codebooks")
    rq = faiss.ResidualQuantizer(d, levels, nbits)
    faiss.copy_array_to_vector(arr.ravel(), rq.codebooks)
    rq.is_trained = True
    rq.max_beam_size = beam_width
    rq.use_beam_LUT = int(bool(use_beam_lut))
    rq.compute_codebook_tables()  # cross products and norms, used by use_beam_LUT
    return rq


# ---------------------------------------------------------------------------------------------
# faiss ProductQuantizer / OPQMatrix
# ---------------------------------------------------------------------------------------------


def codebooks_from_faiss_pq(pq) -> torch.Tensor:
    """PQ codebooks (M, K, D/M) float32 CPU of a trained ``faiss.ProductQuantizer``
    (or a ``faiss.IndexPQ``, whose ``.pq`` is used)."""
    faiss = _faiss()
    quantizer = pq.pq if isinstance(pq, faiss.IndexPQ) else pq  # `pq` keeps the owner alive
    if not isinstance(quantizer, faiss.ProductQuantizer):
        raise TypeError("pq must be a faiss.ProductQuantizer or faiss.IndexPQ, got "
                        f"{type(quantizer).__name__}")
    m, k, dsub = int(quantizer.M), int(quantizer.ksub), int(quantizer.dsub)
    flat = _vector(faiss, quantizer.centroids)
    # ProductQuantizer has no is_trained flag; its constructor allocates zero centroids
    if flat.size != m * k * dsub or not flat.any():
        raise ValueError(f"pq: the faiss ProductQuantizer is not trained ({flat.size} centroid "
                         f"floats for M*K*dsub = {m}*{k}*{dsub}, all zero or missing)")
    return torch.from_numpy(flat.reshape(m, k, dsub).copy())


def codebooks_to_faiss_pq(codebooks):
    """A ``faiss.ProductQuantizer`` holding ``codebooks`` (M, K, D/M), K a power of two."""
    faiss = _faiss()
    arr = _as_f32_array(codebooks, "codebooks", 3, "(M, K, D/M)")
    m, k, dsub = arr.shape
    pq = faiss.ProductQuantizer(m * dsub, m, _nbits_of(k, "codebooks"))
    faiss.copy_array_to_vector(arr.ravel(), pq.centroids)
    return pq


def rotation_from_faiss_opq(opq) -> torch.Tensor:
    """OPQ rotation R of a trained ``faiss.OPQMatrix``: (D_out, D_in) float32 CPU, its ``A``.

    faiss transforms a row ``x`` into ``x @ R.T`` (``opq.apply(x)``), the convention of
    ``semid_fast.pq_encode(..., rotation=R)``, which needs a square R (D_out == D_in).
    """
    faiss = _faiss()
    transform = opq  # `opq` keeps an owning wrapper alive; the downcast view does not own
    if isinstance(opq, faiss.VectorTransform) and not isinstance(opq, faiss.LinearTransform):
        transform = faiss.downcast_VectorTransform(opq)
    if not isinstance(transform, faiss.LinearTransform):
        raise TypeError("opq must be a faiss.OPQMatrix (a LinearTransform), got "
                        f"{type(transform).__name__}")
    if not transform.is_trained:
        raise ValueError("opq: the faiss OPQMatrix is not trained")
    d_out, d_in = int(transform.d_out), int(transform.d_in)
    if transform.have_bias and np.any(_vector(faiss, transform.b) != 0):
        raise ValueError("opq: the transform has a bias; only a pure rotation is supported")
    flat = _vector(faiss, transform.A)
    if flat.size != d_out * d_in:
        raise ValueError(f"opq: A holds {flat.size} floats, expected d_out*d_in = {d_out}*{d_in}")
    return torch.from_numpy(flat.reshape(d_out, d_in).copy())


def rotation_to_faiss_opq(rotation, *, m: int = 1):
    """A trained ``faiss.OPQMatrix`` whose ``A`` is ``rotation`` (D_out, D_in).

    ``m`` is the number of PQ sub-spaces it is meant for (faiss uses it only to train).
    """
    faiss = _faiss()
    arr = _as_f32_array(rotation, "rotation", 2, "(D_out, D_in)")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive int, got {m!r}")
    d_out, d_in = arr.shape
    if d_out % m != 0:
        raise ValueError(f"m={m} must divide the output dimension D_out={d_out} of rotation")
    opq = faiss.OPQMatrix(d_in, m, d_out)
    faiss.copy_array_to_vector(arr.ravel(), opq.A)
    opq.is_trained = True
    opq.set_is_orthonormal()  # enables reverse_transform when R is orthonormal
    return opq


def from_faiss_index(index):
    """(codebooks (M, K, D/M), rotation (D, D) or None) of a faiss PQ index.

    Accepts ``faiss.IndexPQ`` (rotation None) and ``faiss.IndexPreTransform`` of one
    ``OPQMatrix`` over an ``IndexPQ`` (what ``faiss.index_factory(d, "OPQ16,PQ16")`` builds).
    For residual quantizers use :func:`codebooks_from_faiss_rq` (it accepts
    ``IndexResidualQuantizer``); for ``IndexIVFPQ`` (RPG's ``OPQ32,IVF1,PQ32x8``), whose
    codes also depend on a coarse centroid, use :func:`pq_from_faiss`.
    """
    faiss = _faiss()
    if not isinstance(index, faiss.Index):
        raise TypeError(f"index must be a faiss.Index, got {type(index).__name__}")
    inner, transform = _unwrap_transform(faiss, index)
    rotation = None if transform is None else _square_rotation(transform)
    if not isinstance(inner, faiss.IndexPQ):
        hint = " (an IndexIVFPQ: use pq_from_faiss)" if isinstance(inner, faiss.IndexIVFPQ) else ""
        raise TypeError(f"index: expected an IndexPQ (optionally under an OPQ IndexPreTransform), "
                        f"got {type(inner).__name__}{hint}")
    if not inner.is_trained:
        raise ValueError("index: the faiss index is not trained")
    return codebooks_from_faiss_pq(inner.pq), rotation


def _unwrap_transform(faiss, index):
    """(inner index, LinearTransform or None) of a faiss index, through one IndexPreTransform.

    Both are non-owning views: the caller keeps ``index`` referenced while it reads them.
    """
    top = faiss.downcast_index(index)
    if not isinstance(top, faiss.IndexPreTransform):
        return top, None
    if top.chain.size() != 1:
        raise ValueError(f"index: expected one transform before the PQ, got {top.chain.size()}")
    transform = faiss.downcast_VectorTransform(top.chain.at(0))
    if not isinstance(transform, faiss.LinearTransform):
        raise ValueError(f"index: the transform is a {type(transform).__name__}; only a "
                         "rotation (OPQMatrix, RandomRotationMatrix) is supported")
    return faiss.downcast_index(top.index), transform


def _square_rotation(transform) -> torch.Tensor:
    rotation = rotation_from_faiss_opq(transform)
    if rotation.shape[0] != rotation.shape[1]:
        raise ValueError(f"index: the transform maps {rotation.shape[1]} to {rotation.shape[0]} "
                         "dims; only a square rotation is supported")
    return rotation


def pq_from_faiss(index) -> dict:
    """``pq_encode`` / ``pq_decode`` keyword arguments that give a faiss PQ index's codes.

    >>> kw = pq_from_faiss(index)  # RPG: faiss.index_factory(d, "OPQ32,IVF1,PQ32x8", ...)
    >>> codes = semid_fast.pq_encode(x, **kw)          # faiss: index.sa_encode(x)
    >>> x_hat = semid_fast.pq_decode(codes, **kw)      # faiss: index.sa_decode(...)

    Accepts

    * ``IndexPQ``: the codes of x;
    * ``IndexIVFPQ`` with one list (``"IVF1,PQ..."``): with ``by_residual`` (faiss's default)
      faiss encodes the residual to the single coarse centroid c, so ``center`` is c;
      without it ``center`` is None;
    * either under an ``IndexPreTransform`` of one square orthonormal ``LinearTransform``
      without bias (``OPQMatrix``, ``RandomRotationMatrix``): ``rotation`` is its ``A``,
      applied first (``x @ R.T``), before the centre is subtracted.

    PQ codes are nearest codewords in L2 whatever the index's search metric (RPG's index uses
    ``METRIC_INNER_PRODUCT``; its codes are L2 codes of the residual all the same).

    Returns:
        dict with ``codebooks`` (M, K, D/M) float32, ``rotation`` (D, D) float32 or None and
        ``center`` (D,) float32 or None: CPU tensors copied out of the index (move them to
        x's device before encoding on a GPU).

    Raises:
        TypeError: not a faiss index, or not one of the kinds above (e.g. IndexIVFPQR,
            fast-scan or GPU indexes: convert with ``faiss.index_gpu_to_cpu`` first).
        ValueError: untrained; an IndexIVFPQ with more than one list (each vector is then
            encoded against its own list's centroid: there is no single ``center``); a
            chain of several transforms, or a transform that is not a square orthonormal
            rotation without bias.
    """
    faiss = _faiss()
    if not isinstance(index, faiss.Index):
        raise TypeError(f"index must be a faiss.Index, got {type(index).__name__}")
    # `index` stays bound until return: the views below do not own their C++ objects, and
    # the caller's argument may be the only reference to the owner.
    inner, transform = _unwrap_transform(faiss, index)
    kind = type(inner)
    if kind not in (faiss.IndexPQ, faiss.IndexIVFPQ):
        raise TypeError("index: expected an IndexPQ or an IndexIVFPQ with one list, optionally "
                        f"under an OPQ IndexPreTransform, got {kind.__name__}")
    if kind is faiss.IndexIVFPQ and int(inner.nlist) != 1:
        raise ValueError(f"index: an IndexIVFPQ with nlist={inner.nlist}: each vector is "
                         "encoded against its own list's centroid, so there is no single "
                         "center; only nlist=1 (IVF1) is supported")
    if not index.is_trained or not inner.is_trained:
        raise ValueError("index: the faiss index is not trained")
    rotation = None
    if transform is not None:
        rotation = _square_rotation(transform)
        if not transform.is_orthonormal:
            raise ValueError(f"index: the {type(transform).__name__} is not orthonormal; "
                             "pq_decode undoes the rotation as y @ R")
    center = None
    if kind is faiss.IndexIVFPQ and inner.by_residual:
        quantizer = inner.quantizer
        if int(quantizer.ntotal) != 1:
            raise ValueError(f"index: the coarse quantizer holds {quantizer.ntotal} "
                             "centroids, expected 1")
        center = torch.from_numpy(np.array(quantizer.reconstruct(0), dtype=np.float32))
    codebooks = codebooks_from_faiss_pq(inner.pq)
    return {"codebooks": codebooks, "rotation": rotation, "center": center}


# ---------------------------------------------------------------------------------------------
# vector-quantize-pytorch ResidualVQ
# ---------------------------------------------------------------------------------------------


def codebooks_from_residual_vq(rvq) -> torch.Tensor:
    """RQ codebooks of a vector-quantize-pytorch ``ResidualVQ``.

    ResidualVQ encodes greedily: each layer picks the nearest (L2) codeword of the residual,
    so (without beam search) its indices are ``rq_encode(x, codebooks)`` and its quantized
    output is ``rq_decode(codes, codebooks)``. With ``beam_size``/``eval_beam_size`` set, its
    beams are scored by the sum of per-layer losses, not faiss's final error, so its codes
    can differ from ``rq_encode(beam_width=...)``; the codebooks are the same.

    Args:
        rvq: a ``vector_quantize_pytorch.ResidualVQ`` with Euclidean codebooks.

    Returns:
        (L, K, D) float32 tensor, detached, on the codebooks' device.

    Raises:
        TypeError: not a ResidualVQ.
        ValueError: a configuration that plain RQ cannot represent: input/output projections
            (codebook_dim != dim), cosine-similarity codebooks, affine codebook parameters,
            implicit neural codebooks, a vq bridge, several heads or codebooks per layer,
            different codebook sizes per layer, or k-means init that has not run yet.
    """
    vqp = _vqp()
    if not isinstance(rvq, vqp.ResidualVQ):
        raise TypeError(f"rvq must be a vector_quantize_pytorch.ResidualVQ, got {type(rvq).__name__}")

    def unsupported(what: str):
        return ValueError(f"rvq: {what} is not supported: semid_fast RQ is plain Euclidean "
                          "residual quantization on the input")

    identity = torch.nn.Identity
    if not isinstance(getattr(rvq, "project_in", identity()), identity) or \
            not isinstance(getattr(rvq, "project_out", identity()), identity):
        raise unsupported("a projection (codebook_dim != dim, project_in/project_out)")
    if getattr(rvq, "implicit_neural_codebook", False):
        raise unsupported("an implicit neural codebook (QINCo MLPs)")

    embeds = []
    for i, layer in enumerate(rvq.layers):
        book = layer._codebook
        if getattr(layer, "heads", 1) != 1:
            raise unsupported(f"layer {i} with {layer.heads} heads")
        if getattr(layer, "has_projections", False):
            raise unsupported(f"layer {i} with a projection")
        if getattr(layer, "use_cosine_sim", False) or getattr(book, "use_cosine_sim", False) \
                or "CosineSim" in type(book).__name__:
            raise unsupported(f"layer {i} with cosine-similarity codebooks")
        if getattr(book, "affine_param", False):
            raise unsupported(f"layer {i} with affine codebook parameters")
        if getattr(book, "vq_bridge", None) is not None:
            raise unsupported(f"layer {i} with a vq bridge")
        initted = getattr(book, "initted", None)
        if initted is not None and not bool(initted):
            raise ValueError(f"rvq: layer {i} uses kmeans_init and has not been initialised yet "
                             "(run a training forward pass first)")
        embed = book.embed.detach()
        if embed.dim() == 3:  # (codebooks per layer, K, D) in recent versions
            if embed.shape[0] != 1:
                raise unsupported(f"layer {i} with {embed.shape[0]} codebooks (separate per head)")
            embed = embed[0]
        if embed.dim() != 2:
            raise ValueError(f"rvq: layer {i} codebook has unexpected shape {tuple(book.embed.shape)}")
        embeds.append(embed)
    if not embeds:
        raise ValueError("rvq has no layers")
    sizes = {tuple(e.shape) for e in embeds}
    if len(sizes) != 1:
        raise unsupported(f"codebooks of different shapes per layer {sorted(sizes)}")
    return torch.stack(embeds).to(torch.float32).contiguous()
