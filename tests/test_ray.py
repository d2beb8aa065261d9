"""semid_fast.ray: the map_batches encoder gives rq_encode's / pq_encode's codes, on a local
Ray cluster (2 CPUs) and a worker that dies mid-job loses and duplicates no row."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import semid_fast as sf
from semid_fast.ray import EncodeBatch, embeddings_of

pa = pytest.importorskip("pyarrow", reason="the [ray] extra (pyarrow) is not installed")

N, D = 600, 16


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=gen)
    rq_books = torch.randn(3, 16, D, generator=gen)
    pq_books = torch.randn(4, 8, D // 4, generator=gen)
    rotation = torch.linalg.qr(torch.randn(D, D, generator=gen))[0]
    return x, rq_books, pq_books, rotation


def _table(x):
    flat = pa.array(x.numpy().reshape(-1))
    return pa.table({"id": pa.array(np.arange(len(x), dtype=np.int64)),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])})


def test_batches_without_ray_match_the_ops():
    x, rq_books, pq_books, rotation = _data()
    want_rq = sf.rq_encode(x, rq_books, code_dtype=torch.uint8).numpy()
    want_beam = sf.rq_encode(x, rq_books, beam_width=4, code_dtype=torch.uint8).numpy()
    want_pq = sf.pq_encode(x, pq_books, rotation=rotation, code_dtype=torch.uint8).numpy()
    rq, beam = EncodeBatch(rq_books.numpy()), EncodeBatch(rq_books, beam_width=4)
    pq = EncodeBatch(pq_books, kind="pq", rotation=rotation.numpy())
    numpy_batch = {"id": np.arange(N), "embedding": x.numpy()}
    out = rq(numpy_batch)
    assert sorted(out) == ["codes", "id"] and np.array_equal(out["codes"], want_rq)
    assert np.array_equal(beam(numpy_batch)["codes"], want_beam)
    vectors = np.empty(N, dtype=object)  # a list column as Ray hands it over
    vectors[:] = list(x.numpy())
    object_batch = {"embedding": vectors}
    assert np.array_equal(pq(object_batch)["codes"], want_pq)
    table = pq(_table(x))
    assert table.column_names == ["id", "codes"]
    assert np.array_equal(np.stack(table.column("codes").to_numpy(zero_copy_only=False)), want_pq)
    lists = pa.table({"embedding": pa.array([list(map(float, row)) for row in x.numpy()])})
    assert np.array_equal(embeddings_of(lists, "embedding"), x.numpy().astype(np.float64))
    ragged = pa.table({"embedding": pa.array([[1.0, 2.0], [3.0]])})
    with pytest.raises(ValueError, match="different lengths"):
        embeddings_of(ragged, "embedding")
    with pytest.raises(ValueError, match="no column"):
        rq({"vec": x.numpy()})
    with pytest.raises(ValueError, match="kind"):
        EncodeBatch(rq_books, kind="opq")
    with pytest.raises(ValueError, match="pq"):
        EncodeBatch(rq_books, rotation=rotation)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    pytest.importorskip("ray.data", reason="ray[data] is not installed")
    # Ray's workers put the driver's working directory first on their path: from the
    # repository root they would import the source tree (no built extension), not the package.
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray_driver"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        yield ray
        ray.shutdown()
    finally:
        os.chdir(here)


def test_ray_job_matches_rq_encode_and_survives_a_dead_worker(ray_cluster, tmp_path):
    ray = ray_cluster
    x, rq_books, _, _ = _data(1)
    want = sf.rq_encode(x, rq_books, code_dtype=torch.uint8).numpy()
    marker = str(tmp_path / "died")

    class DiesOnce(EncodeBatch):  # local: shipped to the workers by value
        def __call__(self, batch):
            if 300 in batch["id"] and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)  # the worker process dies mid-batch
            return super().__call__(batch)

    books_ref = ray.put(rq_books.numpy())  # shipped once, fetched once per worker
    for cls, fmt in ((EncodeBatch, "pyarrow"), (DiesOnce, "numpy")):
        table = _table(x)
        ds = ray.data.from_arrow([table.slice(i, 100) for i in range(0, N, 100)])
        # Half a CPU per actor: two actors leave room for Ray Data's own tasks.
        out = ds.map_batches(cls, fn_constructor_args=(books_ref,), batch_format=fmt,
                             batch_size=64, num_cpus=0.5,
                             compute=ray.data.ActorPoolStrategy(size=2)).to_arrow_refs()
        table = pa.concat_tables(ray.get(out))
        ids = table.column("id").to_numpy()
        assert table.num_rows == N and np.array_equal(np.sort(ids), np.arange(N)), fmt
        codes = np.stack(table.column("codes").to_numpy(zero_copy_only=False))
        assert np.array_equal(codes, want[ids]), fmt
    assert os.path.exists(marker)  # the worker did die once
