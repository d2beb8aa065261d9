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
// Beam step: one row per OpenMP iteration; the candidates of a row stream through a
// min-heap of the beam_width best keys (one uint64 compare each), then the heap is sorted.
#include <omp.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "semid_fast/quantize.h"
#include "semid_fast/trie.h"

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

// Stable LSD radix sort of `a` on the low `bits` bits of the keys; `tmp` is scratch.
void radix_sort(std::vector<KeyItem>& a, std::vector<KeyItem>& tmp, int bits) {
  std::vector<int64_t> count(kRadixBuckets);
  for (int shift = 0; shift < bits; shift += kRadixBits) {
    std::fill(count.begin(), count.end(), 0);
    for (const KeyItem& x : a) ++count[(x.key >> shift) & (kRadixBuckets - 1)];
    // A digit that every key shares leaves the order unchanged: skip the pass.
    if (std::find(count.begin(), count.end(), int64_t(a.size())) != count.end()) continue;
    int64_t sum = 0;
    for (int64_t& c : count) {
      const int64_t here = c;
      c = sum;
      sum += here;
    }
    for (const KeyItem& x : a) tmp[count[(x.key >> shift) & (kRadixBuckets - 1)]++] = x;
    a.swap(tmp);
  }
}

struct Hit {
  uint64_t key;
  float score;
  int64_t parent, token, state;
};
inline bool worse(const Hit& a, const Hit& b) { return a.key > b.key; }  // min-heap on key

}  // namespace

int trie_sort(const int64_t* codes, const int64_t* lengths, int64_t n, int64_t l,
              const int64_t* vocab, int64_t* order, int64_t* lcp, int64_t* level_counts,
              int n_threads) {
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
#pragma omp parallel for num_threads(n_threads)
    for (int64_t i = 0; i < n; ++i) order[i] = a[i].item;
  } else {
    std::iota(order, order + n, int64_t(0));
    std::stable_sort(order, order + n, [&](int64_t a, int64_t b) {
      const int64_t d = common_prefix(a, b);
      if (d < lengths[a] && d < lengths[b]) return codes[a * l + d] < codes[b * l + d];
      return lengths[a] < lengths[b];
    });
  }
#pragma omp parallel for num_threads(n_threads)
  for (int64_t i = 0; i < n; ++i) lcp[i] = i == 0 ? 0 : common_prefix(order[i - 1], order[i]);

  // Item i adds one state to each level lcp[i] + 1 .. length (difference array over levels).
  std::vector<int64_t> diff(l + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = lengths[order[i]];
    if (lcp[i] < len) {
      ++diff[lcp[i]];
      --diff[len];
    }
  }
  int64_t running = 0;
  for (int64_t d = 0; d < l; ++d) level_counts[d] = running += diff[d];
  return kOk;
}

int trie_fill(const int64_t* codes, const int64_t* lengths, int64_t n, int64_t l,
              const int64_t* order, const int64_t* lcp, const int64_t* level_starts,
              int64_t* child_offsets, int32_t* child_codes, int64_t* terminal,
              int64_t* item_state) {
  if (n < 0 || l <= 0) return kBadArgument;
  const int64_t s = level_starts[l + 1];
  std::fill(child_offsets, child_offsets + s + 1, 0);
  std::fill(terminal, terminal + s, -1);
  std::vector<int64_t> next(l), path(l + 1, 0);
  for (int64_t d = 0; d < l; ++d) next[d] = level_starts[d + 1];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t item = order[i], len = lengths[item];
    if (lcp[i] < 0 || lcp[i] > len || len > l) return kBadArgument;
    for (int64_t d = lcp[i]; d < len; ++d) {
      const int64_t state = next[d]++;
      if (state >= level_starts[d + 2]) return kBadArgument;  // counts do not match the items
      ++child_offsets[path[d] + 1];
      child_codes[state - 1] = int32_t(codes[item * l + d]);
      path[d + 1] = state;
    }
    // Equal IDs are consecutive, smallest item first: the first one owns the terminal.
    if (terminal[path[len]] < 0) terminal[path[len]] = item;
    item_state[item] = path[len];
  }
  for (int64_t st = 0; st < s; ++st) child_offsets[st + 1] += child_offsets[st];
  return kOk;
}

int trie_beam_step(const float* log_probs, const float* beam_scores, const int64_t* states,
                   int64_t b, int64_t w_in, int64_t v, const int64_t* child_offsets,
                   const int32_t* child_codes, const int64_t* terminal, int64_t s,
                   int64_t w_out, float* out_scores, int64_t* out_parents, int64_t* out_tokens,
                   int64_t* out_states, int n_threads) {
  if (b < 0 || w_in < 0 || v < 0 || s < 1 || w_out < 1) return kBadArgument;
#pragma omp parallel num_threads(n_threads)
  {
    std::vector<Hit> heap;
    heap.reserve(w_out);
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < b; ++r) {
      heap.clear();
      uint64_t threshold = 0;  // the worst kept key once the heap is full
      auto offer = [&](float score, uint32_t rank, int64_t parent, int64_t token,
                       int64_t state) {
        const uint64_t key = trie::candidate_key(score, rank);
        if (key <= threshold) return;
        if (int64_t(heap.size()) == w_out) {
          std::pop_heap(heap.begin(), heap.end(), worse);
          heap.back() = {key, score, parent, token, state};
        } else {
          heap.push_back({key, score, parent, token, state});
        }
        std::push_heap(heap.begin(), heap.end(), worse);
        if (int64_t(heap.size()) == w_out) threshold = heap.front().key;
      };
      uint32_t rank = 0;
      for (int64_t j = 0; j < w_in; ++j) {
        const int64_t st = states[r * w_in + j];
        const float sigma = beam_scores[r * w_in + j];
        if (st >= 0 && st < s) {
          if (terminal[st] >= 0) offer(sigma, rank++, j, -1, ~st);
          const float* lp = log_probs + (r * w_in + j) * v;
          const int64_t lo = child_offsets[st], hi = child_offsets[st + 1];
          for (int64_t e = lo; e < hi; ++e, ++rank) {
            const int64_t c = child_codes[e];
            if (c < v) offer(sigma + lp[c], rank, j, c, e + 1);
          }
        } else if (st <= -2 && ~st < s && terminal[~st] >= 0) {
          offer(sigma, rank++, j, -1, st);  // a finished hypothesis carries on
        }
      }
      std::sort_heap(heap.begin(), heap.end(), worse);  // ascending in `worse` = best first
      for (int64_t k = 0; k < w_out; ++k) {
        const int64_t o = r * w_out + k;
        if (k < int64_t(heap.size())) {
          out_scores[o] = heap[k].score;
          out_parents[o] = heap[k].parent;
          out_tokens[o] = heap[k].token;
          out_states[o] = heap[k].state;
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

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
