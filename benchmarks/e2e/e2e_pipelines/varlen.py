"""Variable-length semantic IDs end to end: a soft Gumbel encoder with a length head, unique
truncated IDs, and constrained T5 decoding over IDs of different lengths.

Variable-length semantic IDs give frequent or easily described items short IDs and the rest
longer ones. This pipeline trains, on ``yelp/title_cat_minilm384.npy``, an encoder that emits
up to ``max_len`` codes from one shared codebook: at each position t the residual r_t is
assigned softly by :func:`semid_fast.gumbel_quantize` (``hard=False``: the Gumbel-softmax
mixture of codewords q_t), and the next residual is r_t - q_t (a soft residual). A length
head predicts p(length = l); the decoder reconstructs the item from sum_t P(length > t) q_t,
and the loss adds ``length_cost`` times the expected length, so that an item gets another
code only when it pays for itself in reconstruction.

Each item's ID is then its noise-free codes truncated to its predicted length, made unique by
:func:`semid_fast.dedup_suffix` with those lengths; the :class:`semid_fast.SemanticIDTrie` of
the variable-length IDs constrains T5 ``generate()`` beam search through
:class:`semid_fast.hf.SemanticIDLogitsProcessor` with eos ending an ID, against the Python
dict trie's ``prefix_allowed_tokens_fn``
(:class:`semid_fast.bench.trie_generate.PythonPrefixTrie`). Reported: mean ID length,
uniqueness before the suffix, decoding time of both constraints. Checks: unique IDs, the trie
maps every ID back to its item, identical beams from the two constraints, every decoded ID
is an item of the catalog. Decoding needs transformers (skipped without it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import semid_fast as sf
from semid_fast.reference import quantize as ref_quantize

from .common import DataSource, Report, fmt_time, median_time, standardised_items
from .models import mlp

SYSTEM = "varlen"
TITLE = "Variable-length IDs: soft Gumbel encoder + length head, trie-constrained T5 (eos)"
PAD, EOS = 0, 1


@dataclass
class Settings:
    n_items: int = 20033          # the yelp catalog
    dim: int = 384
    hidden: tuple = (256,)
    latent: int = 32
    max_len: int = 4              # codes per ID at most (before the unique suffix)
    k: int = 64                   # the shared codebook
    steps: int = 150
    batch: int = 256
    lr: float = 2e-3
    tau: float = 0.3
    length_cost: float = 0.005    # loss per expected code of an ID
    decode_users: int = 32        # users of the constrained T5 beam search
    decode_beam: int = 10
    history_items: int = 5
    t5_dim: int = 64
    reps_decode: int = 3
    seed: int = 0

    @classmethod
    def sized(cls, quick: bool, seed: int = 0) -> "Settings":
        if quick:
            return cls(n_items=2000, steps=20, batch=128, decode_users=4, decode_beam=5,
                       reps_decode=1, seed=seed)
        return cls(seed=seed)


class VarLenEncoder(torch.nn.Module):
    """MLP encoder -> up to ``max_len`` soft Gumbel codes of one shared codebook (soft
    residual) + a length head -> MLP decoder."""

    def __init__(self, dim: int, hidden: tuple, latent: int, max_len: int, k: int):
        super().__init__()
        self.encoder = mlp([dim, *hidden, latent])
        self.decoder = mlp([latent, *hidden[::-1], dim])
        self.length_head = torch.nn.Linear(latent, max_len)
        self.codebook = torch.nn.Parameter(torch.zeros(k, latent))
        self.max_len = max_len

    @torch.no_grad()
    def init_codebook(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """K random encoded items as codewords."""
        z = self.encoder(x)
        picks = torch.randperm(z.shape[0], generator=generator)[:self.codebook.shape[0]]
        self.codebook.copy_(z[picks])

    def forward(self, x: torch.Tensor, *, tau: float, noise_scale: float, logit_scale: float,
                seed: int, offset: int, backend: str = "auto"):
        """(reconstruction (N, dim), keep (N, max_len): P(length > t), codes (N, max_len)
        int64 (the perturbed argmax per position), lengths (N,) int64: argmax of the head)."""
        z = self.encoder(x)
        p_length = torch.softmax(self.length_head(z), 1)  # p(length = t + 1)
        keep = torch.cat([torch.ones_like(p_length[:, :1]),
                          1 - p_length.cumsum(1)[:, :-1]], 1).clamp_min(0)
        residual, mixed, codes = z, torch.zeros_like(z), []
        for t in range(self.max_len):
            code, q, _ = sf.gumbel_quantize(residual, self.codebook, tau=tau, hard=False,
                                            noise_scale=noise_scale, logit_scale=logit_scale,
                                            seed=seed, offset=offset + t, backend=backend)
            mixed = mixed + keep[:, t:t + 1] * q
            residual = residual - q
            codes.append(code)
        return self.decoder(mixed), keep, torch.stack(codes, 1), p_length.argmax(1) + 1


def run(settings: Settings, data: DataSource, device: str = "cpu", echo: bool = True) -> Report:
    s = settings
    report = Report(SYSTEM, TITLE, data, dataclasses.asdict(s), echo=echo)
    x = standardised_items(report, data, s, device)
    torch.manual_seed(s.seed)
    model = VarLenEncoder(s.dim, s.hidden, s.latent, s.max_len, s.k).to(device)
    g = torch.Generator().manual_seed(s.seed)
    model.init_codebook(x[torch.randperm(s.n_items, generator=g)[:4096]], g)
    with torch.no_grad():  # the distances' spread as the logits' unit (see diger.py)
        spread = ref_quantize.squared_distances(model.encoder(x[:4096]), model.codebook)
        logit_scale = float(1.0 / spread.std(1).mean().clamp_min(1e-12))
    optimizer = torch.optim.Adam(model.parameters(), lr=s.lr)
    losses, mean_lengths = [], []
    for step in range(s.steps):
        rows = torch.randint(0, s.n_items, (s.batch,), generator=g).to(device)
        batch = x[rows]
        reconstruction, keep, _, _ = model(batch, tau=s.tau, noise_scale=1.0,
                                           logit_scale=logit_scale, seed=s.seed,
                                           offset=step * s.max_len)
        expected_length = keep.sum(1).mean()
        loss = F.mse_loss(reconstruction, batch) + s.length_cost * expected_length
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        mean_lengths.append(float(expected_length.detach()))
        if step % max(1, s.steps // 6) == 0 or step == s.steps - 1:
            report.say(f"step {step:4d}: loss {losses[-1]:.5f}, expected ID length "
                       f"{mean_lengths[-1]:.2f}")
    report.check("the training loss stays finite",
                 all(torch.isfinite(torch.tensor(losses))))

    # Noise-free IDs: the soft residual's argmax codes, truncated to the predicted length.
    with torch.no_grad():
        _, _, codes, lengths = model(x, tau=s.tau, noise_scale=0.0, logit_scale=logit_scale,
                                     seed=s.seed, offset=0)
    codes, lengths = codes.cpu(), lengths.cpu()
    present = torch.arange(s.max_len) < lengths[:, None]
    truncated = torch.where(present, codes, -1)
    _, group, group_sizes = torch.unique(torch.cat([truncated, lengths[:, None]], 1), dim=0,
                                         return_inverse=True, return_counts=True)
    distinct = group_sizes.shape[0]
    unique_items = int((group_sizes[group] == 1).sum())
    length_counts = torch.bincount(lengths, minlength=s.max_len + 1)[1:].tolist()
    # The paper's suffix: one extra token per ID from a range of its own, numbered within
    # each group of equal IDs (item order stands in for popularity here), so no ID is a
    # prefix of another.
    ids, id_lengths = sf.dedup_suffix(codes, lengths, scheme="separate")
    prefixes = trie_prefix_pairs(ids, id_lengths)
    report.check("with the separate suffix no ID is a prefix of another", prefixes == 0,
                 f"{prefixes} prefix pairs")
    keys = torch.cat([torch.where(torch.arange(s.max_len + 1) < id_lengths[:, None], ids, -1),
                      id_lengths[:, None]], 1)
    report.check("dedup_suffix with lengths gives every item a unique variable-length ID",
                 torch.unique(keys, dim=0).shape[0] == s.n_items)
    trie = sf.SemanticIDTrie.from_codes(ids.to(device), lengths=id_lengths.to(device))
    report.check("the trie maps every item's ID back to that item",
                 torch.equal(trie.item_ids(ids.to(device), id_lengths.to(device)).cpu(),
                             torch.arange(s.n_items)))
    report.say(f"\nIDs of {s.n_items} items (up to {s.max_len} codes of {s.k}, logit scale "
               f"{logit_scale:.3g}):")
    report.table(["", "value"], [
        ["items per predicted length 1..{}".format(s.max_len), length_counts],
        ["mean length (predicted codes)", f"{float(lengths.float().mean()):.2f}"],
        ["mean length with the unique suffix", f"{float(id_lengths.float().mean()):.2f}"],
        ["distinct truncated IDs", f"{distinct} of {s.n_items} items"],
        ["items whose truncated ID no other item has",
         f"{unique_items} ({100 * unique_items / s.n_items:.1f}%)"],
        ["largest suffix code", int((ids.gather(1, lengths[:, None])).max())],
    ])
    report.metrics.update(loss_curve=losses, expected_length_curve=mean_lengths,
                          length_counts=length_counts, logit_scale=logit_scale,
                          mean_length=float(lengths.float().mean()),
                          mean_length_with_suffix=float(id_lengths.float().mean()),
                          distinct_truncated=distinct, unique_items=unique_items,
                          n_items=s.n_items)

    def chart(fig):
        left, right = fig.subplots(1, 2)
        left.plot(mean_lengths, color="tab:blue", linewidth=1)
        left.set_xlabel("step")
        left.set_ylabel("expected ID length (length head)")
        right.bar(range(1, s.max_len + 1), length_counts, color="tab:blue")
        right.set_xticks(list(range(1, s.max_len + 1)))
        right.set_xlabel("predicted ID length (codes, before the suffix)")
        right.set_ylabel("items")

    report.chart = chart
    report.metrics["decoding"] = decoding(report, trie, ids, id_lengths, s, device)
    return report


def trie_prefix_pairs(ids: torch.Tensor, lengths: torch.Tensor) -> int:
    """Number of IDs that are a proper prefix of some other ID (one set lookup per prefix)."""
    rows = [tuple(row[:n]) for row, n in zip(ids.tolist(), lengths.tolist())]
    whole = set(rows)
    return len({row[:j] for row in rows for j in range(1, len(row))} & whole)


def decoding(report: Report, trie, ids: torch.Tensor, id_lengths: torch.Tensor, s: Settings,
             device: str) -> dict:
    """T5 beam search over the variable-length IDs, eos ending each: our processor against
    the Python dict trie's prefix function. The T5 is small and randomly initialised and the
    histories random: the point is the agreement and the cost of the constraint."""
    try:
        import transformers

        from semid_fast.bench.trie_generate import PythonPrefixTrie
        from semid_fast.hf import SemanticIDLogitsProcessor
    except ImportError:
        report.say("transformers is not installed: constrained T5 decoding skipped")
        return {}
    n, depth = ids.shape
    # Token of (level j, code c): 2 + the codes of the levels before j + c (0 pad, 1 eos).
    sizes = torch.tensor(trie.vocab_sizes)
    offsets = 2 + torch.cumsum(sizes, 0) - sizes
    token_ids = torch.full((depth, int(sizes.max())), -1, dtype=torch.long)
    for level, size in enumerate(trie.vocab_sizes):
        token_ids[level, :size] = offsets[level] + torch.arange(size)
    item_tokens = offsets + ids  # (N, depth); positions past an ID's end are unused
    rows = [row[:length] for row, length in zip(item_tokens.tolist(), id_lengths.tolist())]
    prefix_fn = PythonPrefixTrie(rows, eos_token_id=EOS).prefix_allowed_tokens_fn(
        start=1, dead_tokens=[EOS])

    config = transformers.T5Config(
        vocab_size=int(2 + sizes.sum()), d_model=s.t5_dim, d_ff=2 * s.t5_dim, d_kv=s.t5_dim // 4,
        num_layers=2, num_decoder_layers=2, num_heads=4, decoder_start_token_id=PAD,
        pad_token_id=PAD, eos_token_id=EOS)
    torch.manual_seed(s.seed)
    model = transformers.T5ForConditionalGeneration(config).eval().to(device)
    g = torch.Generator().manual_seed(s.seed)
    history = torch.randint(0, n, (s.decode_users, s.history_items), generator=g)
    # Histories are concatenated variable-length IDs: pad on the right, with a mask.
    sequences = [sum((rows[i] for i in user), []) + [EOS] for user in history.tolist()]
    width = max(map(len, sequences))
    inputs = torch.full((s.decode_users, width), PAD, dtype=torch.long)
    for r, seq in enumerate(sequences):
        inputs[r, :len(seq)] = torch.tensor(seq)
    mask = (torch.arange(width) < torch.tensor([len(q) for q in sequences])[:, None]).long()
    inputs, mask = inputs.to(device), mask.to(device)
    processor = SemanticIDLogitsProcessor(trie, token_ids, eos_token_id=EOS,
                                          num_beams=s.decode_beam)
    options = dict(attention_mask=mask, num_beams=s.decode_beam,
                   num_return_sequences=s.decode_beam, max_new_tokens=depth + 1,
                   do_sample=False)

    def ours():
        return model.generate(inputs, logits_processor=transformers.LogitsProcessorList(
            [processor]), **options)

    def theirs():
        return model.generate(inputs, prefix_allowed_tokens_fn=prefix_fn, **options)

    with torch.no_grad():
        ours_out, theirs_out = ours(), theirs()
        report.check("generate() with SemanticIDLogitsProcessor (eos) equals the Python trie's "
                     f"prefix_allowed_tokens_fn ({s.decode_users} users x {s.decode_beam} beams)",
                     torch.equal(ours_out, theirs_out))
        generated = ours_out[:, 1:].cpu()
        ended = generated == EOS
        has_eos = ended.any(1)
        lengths = torch.where(has_eos, ended.int().argmax(1), generated.shape[1])
        positions = torch.arange(generated.shape[1])
        level_offsets = torch.cat([offsets, offsets[-1:]])[:generated.shape[1]]
        codes = torch.where(positions < lengths[:, None], generated - level_offsets, 0)
        valid_lengths = (lengths >= 1) & (lengths <= depth)
        decoded = trie.item_ids(codes[:, :depth].to(device),
                                lengths.clamp(1, depth).to(device)).cpu()
        report.check("every generated ID ends with eos and is an item of the catalog",
                     bool((has_eos & valid_lengths & (decoded >= 0)).all()),
                     f"decoded lengths {sorted(set(lengths.tolist()))}")
        times = {"SemanticIDLogitsProcessor": median_time(ours, s.reps_decode, device),
                 "Python trie prefix_allowed_tokens_fn": median_time(theirs, s.reps_decode,
                                                                     device)}
    report.say(f"\nconstrained T5 beam search over variable-length IDs (random {s.t5_dim}-dim "
               f"T5, {s.decode_users} users, beam {s.decode_beam}, up to {depth} codes + eos):")
    base = times["Python trie prefix_allowed_tokens_fn"]
    report.table(["constraint", "generate() time", "speed-up"],
                 [[name, fmt_time(t), f"{base / t:.2f}x"] for name, t in times.items()])
    pool = pool_decoding(report, model, inputs, mask, trie, offsets, s, device)
    return {"generate_s": times, "pool": pool,
            "decoded_length_mean": float(lengths.float().mean()),
            "decoded_items": decoded.reshape(s.decode_users, s.decode_beam)}


def pool_decoding(report: Report, model, inputs, mask, trie, offsets, s: Settings,
                  device: str) -> dict:
    """The paper's decoding (``BeamSearchVarLen``, constrained throughout) with the same T5:
    :func:`semid_fast.constrained_beam_search` with ``finished="pool"`` (an ID that
    completes is pooled with its score and never expanded), against ``finished="keep"``
    (finished IDs keep a beam slot) and against the reference backend."""
    users, beam, vocab = s.decode_users, s.decode_beam, max(trie.vocab_sizes)
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=inputs, attention_mask=mask)
    levels = [torch.arange(vocab) < size for size in trie.vocab_sizes]

    def step_fn_factory():
        prefix = torch.full((users, 1), PAD, dtype=torch.long, device=device)

        def step_fn(step, tokens, parents):
            nonlocal prefix
            if step > 0:  # each beam's decoder input: its parent's, then the code it took
                taken = torch.where(tokens >= 0, tokens + int(offsets[step - 1]), PAD)
                prefix = torch.cat([prefix[parents], taken[:, None]], 1)
            rows = prefix.shape[0]
            repeat = rows // users
            with torch.no_grad():
                out = model(encoder_outputs=(encoded.last_hidden_state.repeat_interleave(
                                repeat, 0),), attention_mask=mask.repeat_interleave(repeat, 0),
                            decoder_input_ids=prefix)
            logp = out.logits[:, -1].float().log_softmax(-1)
            cols = (int(offsets[step]) + torch.arange(vocab)).clamp_max(logp.shape[1] - 1)
            return logp[:, cols.to(device)].masked_fill(~levels[step].to(device), -torch.inf)
        return step_fn

    results, times = {}, {}
    for name, finished, backend in (("pool", "pool", "auto"), ("keep", "keep", "auto"),
                                    ("pool, reference backend", "pool", "reference")):
        def search(finished=finished, backend=backend):
            return sf.constrained_beam_search(step_fn_factory(), trie, batch_size=users,
                                              beam_width=beam, finished=finished,
                                              backend=backend)
        results[name] = search()
        times[name] = median_time(search, s.reps_decode, device)
    pool_items, _, pool_scores = results["pool"]
    keep_items, _, keep_scores = results["keep"]
    ref_items, _, ref_scores = results["pool, reference backend"]
    report.check("finished='pool' equals the reference backend",
                 torch.equal(pool_items.cpu(), ref_items.cpu())
                 and torch.allclose(pool_scores.cpu(), ref_scores.cpu(), rtol=1e-5, atol=1e-5))
    report.check("every pooled result is an item of the catalog",
                 bool((pool_items >= 0).all()))
    # Where a user's two lists first differ, which list holds the better-scoring item.
    unequal = pool_items != keep_items
    differ = unequal.any(1)
    first = unequal.int().argmax(1, keepdim=True)
    better = int((pool_scores.gather(1, first) > keep_scores.gather(1, first))[differ].sum())
    report.say(f"\nthe paper's decoding (finished='pool') vs finished='keep' ({users} users, "
               f"beam {beam}, T5 decoder re-run on each prefix): different lists for "
               f"{int(differ.sum())} users; at the first position where they differ, the pool "
               f"holds the better-scoring item for {better} of them")
    report.table(["decoding", "time"], [[name, fmt_time(t)] for name, t in times.items()])
    return {"search_s": times, "users_differing": int(differ.sum()),
            "pool_better_best": better}
