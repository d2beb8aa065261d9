"""End-to-end pipelines (benchmarks/e2e/, outside the package) at tiny sizes: their agreement
checks must hold, on synthetic data and on the real data when it is there; data discovery,
the command line and the scripts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import semid_fast.bench
from semid_fast.bench import load_e2e, main as bench_main

E2E_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "e2e"
load_e2e(E2E_DIR)
from e2e_pipelines import SYSTEMS, acerec, common, diger, rpg, tiger, varlen  # noqa: E402


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _needs(system):
    """rpg and acerec train their quantizers with faiss."""
    if system in ("rpg", "acerec"):
        pytest.importorskip("faiss")

TINY = {
    "rpg": rpg.Settings(n_items=400, m=8, k=16, n_users=12, batch=6, hidden=32, n_edges=8,
                        beam_width=8, steps=2, sweep_steps=(1, 2), topk=4, reference_users=12,
                        reps=1, opq_iterations=2),
    "acerec": acerec.Settings(n_items=300, m=8, k=16, users=5, tiled_items=2000, topk=10,
                              reps=1),
    "tiger": tiger.Settings(n_items=300, hidden=(64,), latent=8, k=16, steps=4, batch=64,
                            reps=1, decode_users=3, decode_beam=4, history_items=2, t5_dim=16,
                            reps_decode=1),
    "diger": diger.Settings(n_items=300, hidden=(32,), latent=8, k=16, steps=4, batch=64,
                            eval_every=2, reps=1),
    "varlen": varlen.Settings(n_items=300, hidden=(32,), latent=8, max_len=3, k=16, steps=4,
                              batch=64, decode_users=3, decode_beam=4, history_items=2,
                              t5_dim=16, reps_decode=1),
}
MODULES = {"rpg": rpg, "acerec": acerec, "tiger": tiger, "diger": diger, "varlen": varlen}
EXPECTED_CHECKS = {
    "rpg": ["pq_encode reconstruction", "graph_decode equals the reference",
            "exhaustive holistic_topk equals the reference", "overlap"],
    "acerec": ["equals the reference, real", "equals the reference, tiled"],
    "tiger": ["loss at step 0", "step-0 codes of semid_fast are nearest", "mean loss of the last",
              "dedup_suffix gives every item a unique ID", "the trie maps every item's ID"],
    "diger": ["step-0 codes of gumbel_quantize", "step-0 loss equal to the reference",
              "every run's loss stays finite"],
    "varlen": ["the training loss stays finite", "dedup_suffix with lengths gives every item",
               "the trie maps every item's ID"],
}
DECODING_CHECKS = {  # with transformers installed
    "tiger": ["SemanticIDLogitsProcessor equals prefix_allowed_tokens_fn",
              "every generated ID is an item of the catalog"],
    "varlen": ["SemanticIDLogitsProcessor (eos) equals the Python trie's",
               "every generated ID ends with eos and is an item of the catalog"],
}


def _assert_checks(system, report):
    failed = {k: v for k, v in report.checks.items() if not v["ok"]}
    assert not failed, failed
    expected_checks = list(EXPECTED_CHECKS[system])
    if _has("transformers"):
        expected_checks += DECODING_CHECKS.get(system, [])
    for expected in expected_checks:
        assert any(expected in name for name in report.checks), (expected, list(report.checks))


def _assert_metrics(system, report, settings):
    m = report.metrics
    if system == "rpg":
        assert 0.0 <= m["overlap_at_k"] <= 1.0
        assert all(0.0 <= p["overlap"] <= 1.0 for p in m["sweep"])
        # one step scores the beam and its neighbours at most
        one = next(p for p in m["sweep"] if p["steps"] == 1)
        assert settings.beam_width <= one["visited_mean"] <= settings.beam_width * (settings.n_edges + 1)
        assert m["reconstruction_mse"]["semid_fast"] <= m["reconstruction_mse"]["faiss"] * (1 + 1e-4) + 1e-6
    elif system == "acerec":
        assert m["timings"]["tiled"]["n_items"] == settings.tiled_items
    elif system == "diger":
        ours, reference = m["step0_loss"]
        assert ours == pytest.approx(reference, rel=1e-5)
        assert m["eval_steps"][0] == 0 and m["eval_steps"][-1] == settings.steps - 1
        for name in ("ste", *diger.SCHEDULES):
            assert len(m["loss_curves"][name]) == settings.steps
            assert len(m["usage_over_training"][name]) == len(m["eval_steps"])
            assert all(1 <= u <= settings.k for u in m["final"][name]["used"])
            assert all(1 <= p <= settings.k + 1e-6 for p in m["final"][name]["perplexity"])
        assert set(m["quantizer_fwd_bwd_s"]) == set(diger.TIMED)
    elif system == "varlen":
        assert sum(m["length_counts"]) == settings.n_items
        assert 1 <= m["mean_length"] <= settings.max_len
        assert m["mean_length_with_suffix"] == pytest.approx(m["mean_length"] + 1)
        assert m["unique_items"] <= m["distinct_truncated"] <= settings.n_items
        if _has("transformers"):
            decoded = m["decoding"]["decoded_items"]
            assert decoded.shape == (settings.decode_users, settings.decode_beam)
            assert bool(((decoded >= 0) & (decoded < settings.n_items)).all())
    else:
        ours, reference = m["step0_loss"]
        assert ours == pytest.approx(reference, rel=1e-6)
        assert len(m["loss_curves"]["semid_fast"]) == settings.steps
        assert all(1 <= u <= settings.k for u in m["code_usage"]["semid_fast"]["used"])


@pytest.mark.parametrize("system", list(TINY))
def test_pipeline_on_synthetic_data(system):
    _needs(system)
    settings = TINY[system]
    report = MODULES[system].run(settings, common.DataSource(None, "test"), echo=False)
    assert report.data.root is None
    _assert_checks(system, report)
    _assert_metrics(system, report, settings)


@pytest.mark.parametrize("system", list(TINY))
def test_pipeline_on_real_data(system, shared_data):
    _needs(system)
    settings = TINY[system]
    report = MODULES[system].run(settings, common.DataSource(shared_data, "test"), echo=False)
    assert any("real" in line for line in report.lines), report.lines[:5]
    _assert_checks(system, report)
    _assert_metrics(system, report, settings)


def test_script_writes_json_and_png(tmp_path, monkeypatch):
    _needs("acerec")
    monkeypatch.setattr(acerec.Settings, "sized", classmethod(lambda cls, quick, seed=0: TINY["acerec"]))
    status = common.script_main(acerec, ["--quick", "--out", str(tmp_path), "--data", str(tmp_path)])
    assert status == 0
    payload = json.loads((tmp_path / "acerec.json").read_text())
    assert payload["passed"] is True and payload["data"]["how"] == "--data"
    assert "synthetic" in " ".join(payload["report"])  # tmp_path holds no yelp folder
    pytest.importorskip("matplotlib")
    assert (tmp_path / "acerec.png").stat().st_size > 0


def test_cli_runs_selected_system(tmp_path, monkeypatch, capsys):
    _needs("rpg")
    monkeypatch.setattr(rpg.Settings, "sized", classmethod(lambda cls, quick, seed=0: TINY["rpg"]))
    status = bench_main(["bench", "--e2e", "--systems", "rpg", "--quick", "--device", "cpu",
                         "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert status == 0
    assert (tmp_path / "out" / "rpg.json").is_file()
    assert not (tmp_path / "out" / "tiger.json").exists()
    assert "all checks passed" in capsys.readouterr().out


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        bench_main(["bench", "--e2e", "--systems", "nope"])
    with pytest.raises(SystemExit):
        bench_main(["bench", "--e2e", "--data", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        bench_main(["bench", "--systems", "rpg"])  # --systems without --e2e
    assert set(SYSTEMS) == {"tiger", "rpg", "acerec", "diger", "varlen"}


def test_script_wrapper_runs_from_any_directory(tmp_path):
    """`python benchmarks/e2e/<system>.py` imports its pipeline from beside the script."""
    out = subprocess.run([sys.executable, str(E2E_DIR / "tiger.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout


def test_e2e_outside_a_checkout_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(semid_fast.bench, "_CHECKOUT", tmp_path / "site-packages")
    with pytest.raises(FileNotFoundError, match="source checkout"):
        semid_fast.bench.find_e2e()
    monkeypatch.delitem(sys.modules, "e2e_pipelines")  # as in a fresh process
    with pytest.raises(SystemExit):
        bench_main(["bench", "--e2e", "--systems", "rpg"])
    assert "not part of the installed package" in capsys.readouterr().err
    monkeypatch.chdir(E2E_DIR.parents[1] / "tests")  # found from a parent of the cwd
    assert semid_fast.bench.find_e2e() == E2E_DIR


def test_find_data_order(tmp_path, monkeypatch):
    explicit, from_env, cwd = tmp_path / "explicit", tmp_path / "env", tmp_path / "work" / "repo"
    beside_cwd = tmp_path / "work" / "shared" / "data"
    for folder in (explicit, from_env, cwd, beside_cwd):
        folder.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(common.ENV_VAR, str(from_env))
    assert common.find_data(explicit) == common.DataSource(explicit.resolve(), "--data")
    assert common.find_data().root == from_env.resolve()
    monkeypatch.delenv(common.ENV_VAR)
    assert common.find_data().root == beside_cwd.resolve()
    with pytest.raises(ValueError, match="--data"):
        common.find_data(tmp_path / "missing")
    monkeypatch.setenv(common.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=common.ENV_VAR):
        common.find_data()


def test_find_data_falls_back_to_checkout_then_synthetic(tmp_path, monkeypatch):
    monkeypatch.delenv(common.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    checkout = tmp_path / "checkout" / "repo"
    checkout.mkdir(parents=True)
    monkeypatch.setattr(common, "_CHECKOUT", checkout)
    assert common.find_data().root is None  # no pyproject.toml: not a source checkout
    (checkout / "pyproject.toml").write_text("")
    (tmp_path / "checkout" / "shared" / "data").mkdir(parents=True)
    found = common.find_data()
    assert found.root == (tmp_path / "checkout" / "shared" / "data").resolve()
    assert "checkout" in found.how


def test_synthetic_loaders_have_the_requested_shapes(tmp_path):
    none = common.DataSource(None, "test")
    emb = common.item_embeddings(none, "yelp", "title_cat_minilm384.npy", 50, 12, seed=1)
    assert emb.value.shape == (50, 12) and "synthetic" in emb.origin
    assert torch.allclose(emb.value.norm(dim=1), torch.ones(50), atol=1e-5)
    (ids, targets) = common.user_histories(none, 30, 7, 5, seed=1).value
    assert ids.shape == (7, 5) and targets.shape == (7,)
    assert int(ids.max()) < 30 and int(ids.min()) >= -1 and int(targets.max()) < 30
    assert bool((ids[:, -1] >= 0).all())  # every user has at least one history item


def test_code_usage_counts_and_perplexity():
    codes = torch.tensor([[0, 1], [0, 2], [1, 3], [1, 3]])
    used, perplexity = common.code_usage(codes, 4)
    assert used == [2, 3]
    assert perplexity[0] == pytest.approx(2.0)
    p = torch.tensor([0.25, 0.25, 0.5])
    assert perplexity[1] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))


@pytest.mark.gpu
@pytest.mark.parametrize("system", list(TINY))
def test_pipeline_on_cuda(system):
    """The same agreement checks with the semid_fast calls on the GPU (auto backend)."""
    _needs(system)
    settings = TINY[system]
    report = MODULES[system].run(settings, common.DataSource(None, "test"), device="cuda",
                                 echo=False)
    _assert_checks(system, report)
    _assert_metrics(system, report, settings)


def test_greedy_nearest_accepts_rq_codes_and_rejects_a_wrong_one():
    from semid_fast.reference import quantize as ref_quantize

    g = torch.Generator().manual_seed(3)
    z, codebooks = torch.randn(20, 4, generator=g), torch.randn(2, 8, 4, generator=g)
    codes = ref_quantize.rq_encode(z, codebooks)
    assert tiger.greedy_nearest(z, codebooks, codes)
    worst = ref_quantize.squared_distances(z[:1], codebooks[0]).argmax(1)
    wrong = codes.clone()
    wrong[0, 0] = worst[0]
    assert not tiger.greedy_nearest(z, codebooks, wrong)


def test_varlen_keep_is_the_length_survival_function():
    """keep[:, t] = P(length > t): 1 at t = 0, non-increasing, and its row sum is the
    expected length sum_l l * p(length = l) of the length head."""
    torch.manual_seed(0)
    model = varlen.VarLenEncoder(12, (16,), 6, 4, 8)
    model.init_codebook(torch.randn(40, 12), torch.Generator().manual_seed(0))
    x = torch.randn(9, 12)
    _, keep, codes, lengths = model(x, tau=0.5, noise_scale=1.0, logit_scale=1.0, seed=1,
                                    offset=0)
    p_length = torch.softmax(model.length_head(model.encoder(x)), 1)
    assert torch.equal(keep[:, 0], torch.ones(9))
    assert bool((keep[:, 1:] <= keep[:, :-1] + 1e-6).all())
    expected = (p_length * torch.arange(1, 5)).sum(1)
    torch.testing.assert_close(keep.sum(1), expected)
    assert codes.shape == (9, 4) and int(codes.max()) < 8
    assert torch.equal(lengths, p_length.argmax(1) + 1)


def test_diger_gumbel_levels_agree_with_the_reference_backend():
    """The per-level loop gives the codes and gradients of the reference backend (same seed,
    per-level noise scales), and a zero noise scale gives the nearest codewords."""
    from semid_fast.reference import quantize as ref_quantize

    g = torch.Generator().manual_seed(5)
    z, books = torch.randn(30, 6, generator=g), torch.randn(3, 10, 6, generator=g)
    grads, codes = {}, {}
    for backend in ("reference", "cpu"):
        zz, bb = z.clone().requires_grad_(), books.clone().requires_grad_()
        codes[backend], q = diger.gumbel_levels(
            zz, bb, tau=0.7, noise_scales=[1.0, torch.full((30,), 0.5), 0.0],
            logit_scale=2.0, seed=11, offset=4, backend=backend)
        (q * torch.linspace(-1, 1, 6)).sum().backward()
        grads[backend] = (zz.grad, bb.grad)
    assert torch.equal(codes["cpu"], codes["reference"])
    for ours, ref in zip(grads["cpu"], grads["reference"]):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    noiseless, _ = diger.gumbel_levels(z, books, tau=1.0, noise_scales=[0.0] * 3,
                                       logit_scale=1.0, seed=0, offset=0, backend="cpu")
    assert torch.equal(noiseless, ref_quantize.rq_encode(z, books))
