"""TIGER end to end: RQ-VAE training on real item embeddings, then IDs and T5 decoding.

TIGER (Rajput et al., "Recommender Systems with Generative Retrieval", NeurIPS 2023) turns
item text embeddings into semantic IDs with an RQ-VAE: an MLP encoder, 3 levels of residual
quantization with 256 codewords, an MLP decoder, trained on reconstruction plus the RQ loss.
This pipeline initialises the codebooks by k-means on the encoded items, level by level
(:func:`semid_fast.rq_init`, as LC-Rec's RQ-VAE does on its first batch), then trains the
model on ``yelp/title_cat_minilm384.npy`` twice, side by side from the same initial weights
and the same batches: once with :func:`semid_fast.rq_quantize` (the
native backend) and once with the pure-PyTorch reference quantizer (``backend="reference"``),
and reports the step time of both quantizers, that the losses agree at step 0 and stay close
after, and the code usage per level of the trained model.

Then it gives every item a unique ID (:func:`semid_fast.dedup_suffix`, TIGER's extra
collision level), builds the :class:`semid_fast.SemanticIDTrie`, and runs T5 ``generate()``
beam search constrained by :class:`semid_fast.hf.SemanticIDLogitsProcessor` against the
transformers ``prefix_allowed_tokens_fn`` route (needs transformers; skipped without it).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass

import torch

import semid_fast as sf
from semid_fast.reference import quantize as ref_quantize

from .common import DataSource, Report, code_usage, fmt_time, median_time, standardised_items
from .models import RQVAE

SYSTEM = "tiger"
TITLE = "TIGER: RQ-VAE training (semid_fast vs reference quantizer), IDs, constrained T5"


@dataclass
class Settings:
    n_items: int = 20033          # the yelp catalog
    dim: int = 384
    hidden: tuple = (512, 256, 128)
    latent: int = 32
    levels: int = 3
    k: int = 256
    beta: float = 0.25
    steps: int = 200
    batch: int = 512
    lr: float = 1e-3
    reps: int = 30                # timed calls of each quantizer in the micro-benchmark
    decode_users: int = 32        # users of the constrained T5 beam search
    decode_beam: int = 10
    history_items: int = 5        # items (of depth tokens each) in a user's encoder input
    t5_dim: int = 64
    reps_decode: int = 3
    seed: int = 0

    @classmethod
    def sized(cls, quick: bool, seed: int = 0) -> "Settings":
        if quick:
            return cls(n_items=4000, steps=30, batch=256, reps=5, decode_users=8, seed=seed)
        return cls(seed=seed)


def greedy_nearest(z: torch.Tensor, codebooks: torch.Tensor, codes: torch.Tensor) -> bool:
    """True when, at every level, each row's code is a nearest codeword of its residual
    (the residual left by its own earlier codes), up to float32 rounding of the distances."""
    residual = z.float()
    for level, codebook in enumerate(codebooks.float()):
        distances = ref_quantize.squared_distances(residual, codebook)
        chosen = distances.gather(1, codes[:, level:level + 1].long()).squeeze(1)
        scale = residual.pow(2).sum(1) + codebook.pow(2).sum(1).max()
        if not bool((chosen - distances.min(1).values <= 1e-5 * scale).all()):
            return False
        residual = residual - codebook[codes[:, level].long()]
    return True


def run(settings: Settings, data: DataSource, device: str = "cpu", echo: bool = True) -> Report:
    s = settings
    report = Report(SYSTEM, TITLE, data, dataclasses.asdict(s), echo=echo)
    x = standardised_items(report, data, s, device)
    ours_backend = "auto"
    resolved = sf._backends.choose("auto", x.device, "quantize", "rq_quantize")
    torch.manual_seed(s.seed)
    model = RQVAE(s.dim, s.hidden, s.latent, s.levels, s.k).to(device)
    g = torch.Generator().manual_seed(s.seed)
    model.init_codebooks(x[torch.randperm(s.n_items, generator=g)[:max(s.k, 4096)]], s.seed)
    models = {"semid_fast": model, "reference": copy.deepcopy(model)}
    backends = {"semid_fast": ours_backend, "reference": "reference"}
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=s.lr) for name, m in models.items()}
    curves = {name: [] for name in models}
    step_times = {name: [] for name in models}
    first_codes = {}
    first_batch = None

    for step in range(s.steps):
        rows = torch.randint(0, s.n_items, (s.batch,), generator=g).to(device)
        batch = x[rows]
        if step == 0:
            with torch.no_grad():
                first_batch = (model.encoder(batch), model.codebooks.detach().clone())
        for name, m in models.items():
            started = time.perf_counter()
            loss, _, _, codes = m(batch, backends[name], s.beta)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            if device == "cuda":
                torch.cuda.synchronize()
            step_times[name].append(time.perf_counter() - started)
            curves[name].append(float(loss.detach()))
            if step == 0:
                first_codes[name] = codes.cpu()
        if step % max(1, s.steps // 6) == 0 or step == s.steps - 1:
            report.say(f"step {step:4d}: loss {curves['semid_fast'][-1]:.5f} (semid_fast), "
                       f"{curves['reference'][-1]:.5f} (reference); step "
                       f"{fmt_time(step_times['semid_fast'][-1])} / "
                       f"{fmt_time(step_times['reference'][-1])}")

    # Step 0 agreement and closeness of the curves.
    l0_ours, l0_ref = curves["semid_fast"][0], curves["reference"][0]
    identical = first_codes["semid_fast"] == first_codes["reference"]
    same_codes = float(identical.all(1).float().mean())
    report.check("loss at step 0 equal (relative difference <= 1e-6)",
                 abs(l0_ours - l0_ref) <= 1e-6 * abs(l0_ref),
                 f"{l0_ours:.7f} vs {l0_ref:.7f}")
    # Ties: the two quantizers compute distances in different float32 orders, so a near-tie
    # may go either way; every code must be a nearest codeword up to rounding.
    valid = greedy_nearest(*first_batch, first_codes["semid_fast"].to(device))
    report.check("step-0 codes of semid_fast are nearest codewords at every level "
                 "(up to float32 rounding)", valid,
                 f"{100 * same_codes:.2f}% of rows identical to the reference's")
    tail = max(1, s.steps // 10)
    ours_tail = sum(curves["semid_fast"][-tail:]) / tail
    ref_tail = sum(curves["reference"][-tail:]) / tail
    gap = abs(ours_tail - ref_tail) / abs(ref_tail)
    finite = all(torch.isfinite(torch.tensor(c)).all() for c in curves.values())
    report.check(f"mean loss of the last {tail} steps within 5%", finite and gap <= 0.05,
                 f"{ours_tail:.5f} vs {ref_tail:.5f} ({100 * gap:.2f}%)")

    # Quantizer alone, forward + backward, on encoder outputs of one batch. The two
    # quantizers alternate call by call so that load from other processes hits both alike;
    # the median over the calls is reported.
    z = models["semid_fast"].encoder(x[:s.batch]).detach()
    codebooks = models["semid_fast"].codebooks.detach().clone().requires_grad_()

    def quantizer_step(backend):
        zz = z.clone().requires_grad_()
        _, quantized, loss = sf.rq_quantize(zz, codebooks, beta=s.beta, backend=backend)
        (quantized.sum() + loss).backward()

    samples = {name: [] for name in models}
    for _ in range(s.reps):
        for name in models:
            samples[name].append(median_time(lambda: quantizer_step(backends[name]), 1, device))
    quantizer_times = {name: statistics.median(t) for name, t in samples.items()}

    # Code usage of the trained models over the whole catalog.
    usage, catalog_codes = {}, {}
    for name, m in models.items():
        with torch.no_grad():
            codes = sf.rq_encode(m.encoder(x), m.codebooks.detach())
        catalog_codes[name] = codes
        used, perplexity = code_usage(codes.cpu(), s.k)
        distinct = torch.unique(codes.cpu(), dim=0).shape[0]
        usage[name] = {"used": used, "perplexity": perplexity,
                       "colliding_items": s.n_items - distinct}

    median_step = {name: sorted(t)[len(t) // 2] for name, t in step_times.items()}
    report.metrics.update(loss_curves=curves, median_step_s=median_step,
                          quantizer_fwd_bwd_s=quantizer_times, code_usage=usage,
                          step0_loss=[l0_ours, l0_ref], final_gap=gap)
    report.say(f"\n{s.steps} steps, batch {s.batch}, latent {s.latent}, "
               f"{s.levels} levels x {s.k} codes (semid_fast backend: {resolved}):")
    ratio_q = quantizer_times["reference"] / quantizer_times["semid_fast"]
    ratio_s = median_step["reference"] / median_step["semid_fast"]
    report.table(["", "semid_fast", "reference", "speed-up"], [
        ["rq_quantize fwd+bwd", fmt_time(quantizer_times["semid_fast"]),
         fmt_time(quantizer_times["reference"]), f"{ratio_q:.2f}x"],
        ["whole training step", fmt_time(median_step["semid_fast"]),
         fmt_time(median_step["reference"]), f"{ratio_s:.2f}x"],
        ["loss at step 0", f"{l0_ours:.6f}", f"{l0_ref:.6f}", ""],
        [f"mean loss, last {tail} steps", f"{ours_tail:.6f}", f"{ref_tail:.6f}", ""],
    ])
    report.say("\ncode usage of the trained model over the catalog (codes used / perplexity):")
    def used(name, level):
        return f"{usage[name]['used'][level]} / {usage[name]['perplexity'][level]:.1f}"

    report.table(["level", "semid_fast", "reference"],
                 [[level, used("semid_fast", level), used("reference", level)]
                  for level in range(s.levels)])
    report.say(f"items sharing a full {s.levels}-code ID with another item: "
               f"{usage['semid_fast']['colliding_items']} (semid_fast), "
               f"{usage['reference']['colliding_items']} (reference)")

    def chart(fig):
        left, right = fig.subplots(1, 2)
        for name, color in (("reference", "tab:gray"), ("semid_fast", "tab:blue")):
            left.plot(curves[name], label=f"{name} quantizer", color=color, linewidth=1)
        left.set_yscale("log")
        left.set_xlabel("step")
        left.set_ylabel("loss (reconstruction + RQ)")
        left.legend()
        width = 0.38
        levels = range(s.levels)
        right.bar([lv - width / 2 for lv in levels], usage["reference"]["perplexity"], width,
                  label="reference", color="tab:gray")
        right.bar([lv + width / 2 for lv in levels], usage["semid_fast"]["perplexity"], width,
                  label="semid_fast", color="tab:blue")
        right.set_xticks(list(levels), [f"level {lv}" for lv in levels])
        right.set_ylabel(f"code perplexity (max {s.k})")
        right.legend()

    report.chart = chart
    report.metrics["decoding"] = ids_and_decoding(report, catalog_codes["semid_fast"], s, device)
    return report


def ids_and_decoding(report: Report, codes: torch.Tensor, s: Settings, device: str) -> dict:
    """TIGER's second half: unique IDs by a collision suffix, the trie, and T5 beam search
    constrained by :class:`semid_fast.hf.SemanticIDLogitsProcessor` against transformers'
    ``prefix_allowed_tokens_fn`` with a Python prefix table. The T5 is small and randomly
    initialised and the user histories synthetic (yelp has no sequences): the point is the
    agreement and the cost of the constraint, not recommendation quality."""
    n = codes.shape[0]
    ids, _ = sf.dedup_suffix(codes.cpu())
    suffix_codes = int(ids[:, -1].max()) + 1
    report.say(f"\nsemantic IDs: dedup_suffix appends a level of {suffix_codes} codes "
               f"(largest group of items sharing {codes.shape[1]} codes)")
    report.check("dedup_suffix gives every item a unique ID",
                 torch.unique(ids, dim=0).shape[0] == n)
    trie = sf.SemanticIDTrie.from_codes(ids.to(device))
    report.check("the trie maps every item's ID back to that item",
                 torch.equal(trie.item_ids(ids.to(device)).cpu(), torch.arange(n)))
    try:
        import transformers

        from semid_fast.hf import SemanticIDLogitsProcessor
    except ImportError:
        report.say("transformers is not installed: constrained T5 decoding skipped")
        return {"suffix_codes": suffix_codes}

    # Token of (level j, code c): 2 + the codes of the levels before j + c (0 pad, 1 eos).
    sizes = torch.tensor(trie.vocab_sizes)
    offsets = 2 + torch.cumsum(sizes, 0) - sizes
    token_ids = torch.full((trie.depth, int(sizes.max())), -1, dtype=torch.long)
    for level, size in enumerate(trie.vocab_sizes):
        token_ids[level, :size] = offsets[level] + torch.arange(size)
    item_tokens = offsets + ids  # (N, depth)
    allowed: dict[tuple, list] = {}
    for row in item_tokens.tolist():
        for t in range(trie.depth):
            allowed.setdefault(tuple(row[:t]), set()).add(row[t])
    allowed = {prefix: sorted(tokens) for prefix, tokens in allowed.items()}

    config = transformers.T5Config(
        vocab_size=int(2 + sizes.sum()), d_model=s.t5_dim, d_ff=2 * s.t5_dim, d_kv=s.t5_dim // 4,
        num_layers=2, num_decoder_layers=2, num_heads=4, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1)
    torch.manual_seed(s.seed)
    model = transformers.T5ForConditionalGeneration(config).eval().to(device)
    g = torch.Generator().manual_seed(s.seed)
    history = torch.randint(0, n, (s.decode_users, s.history_items), generator=g)
    inputs = torch.cat([item_tokens[history].reshape(s.decode_users, -1),
                        torch.ones(s.decode_users, 1, dtype=torch.long)], 1).to(device)
    processor = SemanticIDLogitsProcessor(trie, token_ids, num_beams=s.decode_beam)
    options = dict(num_beams=s.decode_beam, num_return_sequences=s.decode_beam,
                   max_new_tokens=trie.depth, do_sample=False)

    def ours():
        return model.generate(inputs, logits_processor=transformers.LogitsProcessorList(
            [processor]), **options)

    def theirs():
        return model.generate(inputs, prefix_allowed_tokens_fn=lambda _, sent: allowed.get(
            tuple(sent[1:].tolist()), []), **options)

    with torch.no_grad():
        ours_out, theirs_out = ours(), theirs()
        generated = ours_out[:, 1:].cpu()
        decoded = trie.item_ids((generated - offsets[:generated.shape[1]]).to(device)).cpu()
        report.check("generate() with SemanticIDLogitsProcessor equals prefix_allowed_tokens_fn "
                     f"({s.decode_users} users x {s.decode_beam} beams)",
                     torch.equal(ours_out, theirs_out))
        report.check("every generated ID is an item of the catalog",
                     generated.shape[1] == trie.depth and bool((decoded >= 0).all()))
        times = {"SemanticIDLogitsProcessor": median_time(ours, s.reps_decode, device),
                 "prefix_allowed_tokens_fn": median_time(theirs, s.reps_decode, device)}
    report.say(f"constrained T5 beam search (random {s.t5_dim}-dim T5, {s.decode_users} users, "
               f"beam {s.decode_beam}, {trie.depth} tokens):")
    base = times["prefix_allowed_tokens_fn"]
    report.table(["constraint", "generate() time", "speed-up"],
                 [[name, fmt_time(t), f"{base / t:.2f}x"] for name, t in times.items()])
    return {"suffix_codes": suffix_codes, "generate_s": times}
