// CPU kernels of the trie family: the trie build (sort + one pass) and the fused
// constrained beam step. Layout, beam states and ranking: semid_fast/trie.h.
//
// Build. When an ID packs into 64 bits (level d takes bit_length(vocab[d]) bits holding
// code + 1, or 0 past the ID's end, level 0 in the high bits) the items are sorted by an LSD
// radix sort of (key, item) pairs: stable, so equal IDs stay in item order and a shorter ID
// sorts before the IDs it prefixes. Otherwise a comparison sort over the code rows gives the
// same order. In that order the items sharing a prefix are consecutive, so item i creates
// the states of levels lcp[i] + 1 .. length[i] (lcp: codes shared with the previous item),
// and numbering them level by level in item order is breadth-first with sorted children.
//
// Beam step: one row per OpenMP iteration; the candidates of a row stream through a top-k
// list of the beam_width best keys (one uint64 compare each), then the list is sorted.
//
// Logits processor (semid_fast.hf): walk + mask in one pass per row, so a generate() step
// costs one call instead of a few dozen small torch ops. Row logic and ABI: trie_hf.h.
// First (when the shape allows a continuation) one pass over the rows decides where the ID
// starts, then OpenMP over groups of num_beams rows (one row per group without the
// fallback).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

#include "semid_fast/common.h"
#include "semid_fast/trie.h"
#include "semid_fast/trie_hf.h"

namespace semid_fast {
namespace SEMID_FAST_ISA {
namespace {

constexpr int kRadixBits = 11;
constexpr int64_t kRadixBuckets = int64_t(1) << kRadixBits;

int bit_length(uint64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(x); }

struct KeyItem {
  uint64_t key;
  int64_t item;
};

// Stable LSD radix sort of `a` on the low `bits` bits of the keys; `tmp` is scratch. The
// histograms of every digit come from one read of the keys.
void radix_sort(std::vector<KeyItem>& a, std::vector<KeyItem>& tmp, int bits) {
  const int passes = (bits + kRadixBits - 1) / kRadixBits;
  std::vector<int64_t> count(passes * kRadixBuckets, 0);
  for (const KeyItem& x : a)
    for (int p = 0; p < passes; ++p)
      ++count[p * kRadixBuckets + ((x.key >> (p * kRadixBits)) & (kRadixBuckets - 1))];
  for (int p = 0; p < passes; ++p) {
    int64_t* c = count.data() + p * kRadixBuckets;
    // A digit that every key shares leaves the order unchanged: skip the pass.
    if (std::find(c, c + kRadixBuckets, int64_t(a.size())) != c + kRadixBuckets) continue;
    int64_t sum = 0;
    for (int64_t b = 0; b < kRadixBuckets; ++b) {
      const int64_t here = c[b];
      c[b] = sum;
      sum += here;
    }
    const int shift = p * kRadixBits;
    for (const KeyItem& x : a) tmp[c[(x.key >> shift) & (kRadixBuckets - 1)]++] = x;
    a.swap(tmp);
  }
}

struct Hit {
  uint64_t key;
  float score;
  int64_t parent, token, state;
};
struct LargerKey {
  bool operator()(const Hit& a, const Hit& b) const { return a.key > b.key; }
};
using Hits = TopK<Hit, LargerKey>;

}  // namespace

int trie_sort(const int64_t* codes, const int64_t* lengths, int64_t n, int64_t l,
              const int64_t* vocab, int64_t* order, int64_t* sorted_codes,
              int64_t* sorted_lengths, int64_t* lcp, int64_t* level_counts, int n_threads) {
  if (n < 0 || l <= 0) return kBadArgument;
  int total_bits = 0;
  for (int64_t d = 0; d < l; ++d) {
    if (vocab[d] < 0) return kBadArgument;
    total_bits += bit_length(uint64_t(vocab[d]));
  }
  bool bad_length = false, bad_code = false;
#pragma omp parallel for num_threads(n_threads) reduction(|| : bad_length, bad_code)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = lengths[i];
    if (len < 1 || len > l) {
      bad_length = true;
      continue;
    }
    for (int64_t d = 0; d < len; ++d)
      if (codes[i * l + d] < 0 || codes[i * l + d] >= vocab[d]) bad_code = true;
  }
  if (bad_length) return kBadArgument;
  if (bad_code) return kCodeOutOfRange;

  // Number of leading codes items a and b share.
  auto common_prefix = [&](int64_t a, int64_t b) {
    const int64_t m = std::min(lengths[a], lengths[b]);
    int64_t d = 0;
    while (d < m && codes[a * l + d] == codes[b * l + d]) ++d;
    return d;
  };
  if (total_bits <= 64) {
    std::vector<KeyItem> a(n), tmp(n);
#pragma omp parallel for num_threads(n_threads)
    for (int64_t i = 0; i < n; ++i) {
      uint64_t key = 0;
      for (int64_t d = 0; d < l; ++d) {
        const int bw = bit_length(uint64_t(vocab[d]));
        key = (bw == 64 ? 0 : key << bw) | uint64_t(d < lengths[i] ? codes[i * l + d] + 1 : 0);
      }
      a[i] = {key, i};
    }
    radix_sort(a, tmp, total_bits);
    // The sorted keys hold the sorted rows: unpack them instead of gathering rows.
#pragma omp parallel for num_threads(n_threads)
    for (int64_t i = 0; i < n; ++i) {
      order[i] = a[i].item;
      uint64_t key = a[i].key;
      int64_t len = 0;
      for (int64_t d = l - 1; d >= 0; --d) {
        const int bw = bit_length(uint64_t(vocab[d]));
        const uint64_t field = bw == 64 ? key : key & ((uint64_t(1) << bw) - 1);
        key = bw == 64 ? 0 : key >> bw;
        sorted_codes[i * l + d] = field == 0 ? 0 : int64_t(field) - 1;
        if (field != 0 && len == 0) len = d + 1;
      }
      sorted_lengths[i] = len;
    }
  } else {
    std::iota(order, order + n, int64_t(0));
    std::stable_sort(order, order + n, [&](int64_t a, int64_t b) {
      const int64_t d = common_prefix(a, b);
      if (d < lengths[a] && d < lengths[b]) return codes[a * l + d] < codes[b * l + d];
      return lengths[a] < lengths[b];
    });
#pragma omp parallel for num_threads(n_threads)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t item = order[i];
      sorted_lengths[i] = lengths[item];
      for (int64_t d = 0; d < l; ++d)
        sorted_codes[i * l + d] = d < lengths[item] ? codes[item * l + d] : 0;
    }
  }
  // Leading codes shared with the previous row (sorted rows are 0 past their length).
#pragma omp parallel for num_threads(n_threads)
  for (int64_t i = 0; i < n; ++i) {
    int64_t d = 0;
    if (i > 0) {
      const int64_t m = std::min(sorted_lengths[i - 1], sorted_lengths[i]);
      const int64_t* a = sorted_codes + (i - 1) * l;
      const int64_t* b = sorted_codes + i * l;
      while (d < m && a[d] == b[d]) ++d;
    }
    lcp[i] = d;
  }

  // Item i adds one state to each level lcp[i] + 1 .. length (difference array over levels).
  std::vector<int64_t> diff(l + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = sorted_lengths[i];
    if (lcp[i] < len) {
      ++diff[lcp[i]];
      --diff[len];
    }
  }
  int64_t running = 0;
  for (int64_t d = 0; d < l; ++d) level_counts[d] = running += diff[d];
  return kOk;
}

int trie_fill(const int64_t* sorted_codes, const int64_t* sorted_lengths, int64_t n, int64_t l,
              const int64_t* order, const int64_t* lcp, const int64_t* level_starts,
              int64_t max_vocab, int64_t* child_offsets, int32_t* child_codes,
              int64_t* edge_keys, int64_t* terminal) {
  if (n < 0 || l <= 0 || max_vocab < 1) return kBadArgument;
  const int64_t s = level_starts[l + 1];
  std::fill(child_offsets, child_offsets + s + 1, 0);
  std::fill(terminal, terminal + s, -1);
  std::vector<int64_t> next(l), path(l + 1, 0);
  for (int64_t d = 0; d < l; ++d) next[d] = level_starts[d + 1];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = sorted_lengths[i];
    if (lcp[i] < 0 || lcp[i] > len || len > l) return kBadArgument;
    for (int64_t d = lcp[i]; d < len; ++d) {
      const int64_t state = next[d]++;
      if (state >= level_starts[d + 2]) return kBadArgument;  // counts do not match the items
      const int64_t code = sorted_codes[i * l + d];
      ++child_offsets[path[d] + 1];
      child_codes[state - 1] = int32_t(code);
      edge_keys[state - 1] = path[d] * max_vocab + code;
      path[d + 1] = state;
    }
    // Equal IDs are consecutive, smallest item first: the first one owns the terminal.
    if (terminal[path[len]] < 0) terminal[path[len]] = order[i];
  }
  for (int64_t st = 0; st < s; ++st) child_offsets[st + 1] += child_offsets[st];
  return kOk;
}

int trie_beam_step(const float* log_probs, const float* beam_scores, const int64_t* states,
                   const float* shift, int64_t b, int64_t w_in, int64_t v,
                   const int64_t* child_offsets, const int32_t* child_codes,
                   const int64_t* terminal, int64_t s, int64_t w_out, float* out_scores,
                   int64_t* out_parents, int64_t* out_tokens, int64_t* out_states,
                   int n_threads) {
  if (b < 0 || w_in < 0 || v < 0 || s < 1 || w_out < 1 || n_threads < 1) return kBadArgument;
  if (b == 0) return kOk;
  n_threads = int(std::min<int64_t>(n_threads, b));
  // A row offers at most w_in * (v + 1) candidates (each beam's children, or its finished
  // ID): no list is longer. Every thread's list is allocated here, where a failed allocation
  // throws (MemoryError in Python) instead of aborting inside the region.
  int64_t offers;
  if (__builtin_mul_overflow(w_in, v + 1, &offers)) offers = w_out;
  const int64_t keep = std::min(w_out, offers);
  std::vector<Hits> lists(n_threads);
  for (Hits& h : lists) h.reserve(keep);
#pragma omp parallel num_threads(n_threads)
  {
    Hits& best = lists[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < b; ++r) {
      best.clear();
      uint64_t threshold = 0;  // the worst kept key once the list is full
      float threshold_score = -__builtin_inff();  // and its score: a cheap first test
      auto offer = [&](float score, uint32_t rank, int64_t parent, int64_t token,
                       int64_t state) {
        const uint64_t key = trie::candidate_key(score, rank);
        if (key <= threshold) return;
        best.offer({key, score, parent, token, state});
        if (best.full()) {
          threshold = best.worst().key;
          threshold_score = best.worst().score;
        }
      };
      uint32_t rank = 0;
      for (int64_t j = 0; j < w_in; ++j) {
        const int64_t st = states[r * w_in + j];
        const float sigma = beam_scores[r * w_in + j];
        if (st >= 0 && st < s) {
          if (terminal[st] >= 0) offer(sigma, rank++, j, -1, ~st);
          const float* lp = log_probs + (r * w_in + j) * v;
          const float sh = shift ? shift[r * w_in + j] : 0.0f;
          const int64_t lo = child_offsets[st], hi = child_offsets[st + 1];
          for (int64_t e = lo; e < hi; ++e, ++rank) {
            const int64_t c = child_codes[e];
            if (uint64_t(c) >= uint64_t(v)) continue;  // beyond V, or a corrupt negative code
            const float score = sigma + (lp[c] - sh);
            if (score < threshold_score) continue;  // cannot beat the worst kept candidate
            offer(score, rank, j, c, e + 1);
          }
        } else if (st <= -2 && ~st < s && terminal[~st] >= 0) {
          offer(sigma, rank++, j, -1, st);  // a finished hypothesis carries on
        }
      }
      const std::vector<Hit>& hits = best.sorted();
      for (int64_t k = 0; k < w_out; ++k) {
        const int64_t o = r * w_out + k;
        if (k < int64_t(hits.size())) {
          out_scores[o] = hits[k].score;
          out_parents[o] = hits[k].parent;
          out_tokens[o] = hits[k].token;
          out_states[o] = hits[k].state;
        } else {
          out_scores[o] = -__builtin_inff();
          out_parents[o] = -1;
          out_tokens[o] = -1;
          out_states[o] = -1;
        }
      }
    }
  }
  return kOk;
}

int trie_children_logsumexp(const float* log_probs, const int64_t* states, int64_t r,
                            int64_t v, const int64_t* child_offsets, const int32_t* child_codes,
                            int64_t s, float* out, int n_threads) {
  if (r < 0 || v < 0 || s < 1 || n_threads < 1) return kBadArgument;
#pragma omp parallel for schedule(static) num_threads(n_threads)
  for (int64_t i = 0; i < r; ++i) {
    const int64_t st = states[i];
    float shift = 0.0f;
    if (st >= 0 && st < s) {
      const float* lp = log_probs + i * v;
      const int64_t lo = child_offsets[st], hi = child_offsets[st + 1];
      float top = -__builtin_inff();
      bool nan = false;
      for (int64_t e = lo; e < hi; ++e) {
        const int64_t c = child_codes[e];
        if (uint64_t(c) >= uint64_t(v)) continue;
        nan |= lp[c] != lp[c];
        top = std::max(top, lp[c]);
      }
      if (nan) {
        shift = std::numeric_limits<float>::quiet_NaN();
      } else if (top > -__builtin_inff() && top < __builtin_inff()) {
        double sum = 0.0;
        for (int64_t e = lo; e < hi; ++e) {
          const int64_t c = child_codes[e];
          if (uint64_t(c) < uint64_t(v)) sum += std::exp(double(lp[c]) - double(top));
        }
        shift = float(double(top) + std::log(sum));
      }
    }
    out[i] = shift;
  }
  return kOk;
}

int trie_pool_update(const float* pool_scores, const int64_t* pool_states,
                     const float* scores, const int64_t* states, int64_t b, int64_t p, int64_t w,
                     const int64_t* terminal, int64_t s, float* out_pool_scores,
                     int64_t* out_pool_states, int64_t* out_states, int n_threads) {
  if (b < 0 || p < 1 || w < 0 || s < 1 || n_threads < 1 || p + w > trie::kMaxCandidates)
    return kBadArgument;
  // Every thread's keys allocated here: a failed allocation throws before the parallel
  // region (pybind turns it into MemoryError), never inside it.
  const int64_t width = p + w;
  std::vector<uint64_t> all_keys(size_t(n_threads) * size_t(width));
#pragma omp parallel num_threads(n_threads)
  {
    uint64_t* keys = all_keys.data() + int64_t(omp_get_thread_num()) * width;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < b; ++r) {
      std::fill(keys, keys + width, uint64_t(0));
      for (int64_t i = 0; i < p; ++i)
        if (trie::is_id_state(pool_states[r * p + i], terminal, s))
          keys[i] = trie::candidate_key(pool_scores[r * p + i], uint32_t(i));
      for (int64_t j = 0; j < w; ++j) {
        const int64_t st = states[r * w + j];
        const bool done = trie::is_id_state(st, terminal, s);
        if (done) keys[p + j] = trie::candidate_key(scores[r * w + j], uint32_t(p + j));
        out_states[r * w + j] = done ? -1 : st;
      }
      std::partial_sort(keys, keys + p, keys + width, std::greater<uint64_t>());
      for (int64_t k = 0; k < p; ++k) {
        const int64_t o = r * p + k;
        if (keys[k] == 0) {
          out_pool_scores[o] = -__builtin_inff();
          out_pool_states[o] = -1;
          continue;
        }
        const int64_t i = trie::key_rank(keys[k]);
        out_pool_scores[o] = i < p ? pool_scores[r * p + i] : scores[r * w + i - p];
        out_pool_states[o] = i < p ? pool_states[r * p + i] : states[r * w + i - p];
      }
    }
  }
  return kOk;
}

int sid_constrain_f32(const trie_hf::ConstrainArgs& a, int n_threads) {
  using trie_hf::RowState;
  if (!trie_hf::valid_args(a)) return kBadArgument;
  const int64_t group = a.num_beams > 0 ? a.num_beams : 1;
  const int64_t groups = a.rows / group;
  const float neg_inf = -std::numeric_limits<float>::infinity();

  // One thread: a continuation costs about one pass over the rows, a new generation stops
  // at its first row, and a second thread team per step costs more than that.
  bool continues = a.prev_ids != nullptr;
  for (int64_t r = 0; continues && r < a.rows; ++r) continues = trie_hf::extends_a_row(a, r);
  const int64_t start = trie_hf::start_column(a, continues);
  const int64_t step = a.length - start;
  *a.start = start;
  bool any_dead = false;

#pragma omp parallel for schedule(static) num_threads(n_threads) reduction(|| : any_dead)
  for (int64_t g = 0; g < groups; ++g) {
    bool all_unsatisfied = true;
    for (int64_t r = g * group; r < (g + 1) * group; ++r) {
      const float* in_row = a.scores + r * a.vocab;
      float* out_row = a.out + r * a.vocab;
      std::fill(out_row, out_row + a.vocab, neg_inf);
      const RowState rs = trie_hf::walk_row(a, a.input_ids + r * a.ids_stride + start, step);
      any_dead = trie_hf::for_each_allowed(a, rs, step, 0, 1, true, [&](int64_t token) {
                   if (token < 0 || token >= a.vocab) return;
                   out_row[token] = in_row[token];
                   if (in_row[token] != neg_inf) all_unsatisfied = false;
                 }) || any_dead;
    }
    if (a.num_beams == 0 || !all_unsatisfied) continue;
    for (int64_t r = g * group; r < (g + 1) * group; ++r) {
      float* out_row = a.out + r * a.vocab;
      const RowState rs = trie_hf::walk_row(a, a.input_ids + r * a.ids_stride + start, step);
      trie_hf::for_each_allowed(a, rs, step, 0, 1, true, [&](int64_t token) {
        if (token >= 0 && token < a.vocab) out_row[token] = 0.0f;
      });
    }
  }
  if (any_dead) *a.dead = 1;
  return kOk;
}

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
