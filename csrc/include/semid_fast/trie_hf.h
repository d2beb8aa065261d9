// The transformers logits processor (semid_fast/hf.py): one call masks the scores of one
// generate() step to the children of each row's trie state. Row logic shared by the CPU and
// CUDA kernels (__host__ __device__), then the CPU ABI; the CUDA launcher is in
// cuda_trie_hf.h.
//
// Per row r of input_ids (rows, ids_stride) int64: the generated tokens are
// input_ids[r, start : start + step]. The first min(step, depth) of them map to codes through
// `inverse` (depth, vocab_map) int64 (level j: token id -> code, -1 for none; tokens outside
// [0, vocab_map) have no code) and are walked from the root of the trie (CSR layout of
// semid_fast/trie.h); a token without a code, or a code that is not a child, gives the dead
// state -1, and so does step > depth. A row is finished when one of its generated tokens is
// eos (eos >= 0). Output (rows, vocab) float32: -inf, except
//   * when 0 <= step < depth and the state is live: the level-`step` token of each child
//     code (level_tokens (depth, k) int64) keeps its score;
//   * eos keeps its score where the state is terminal or the row is finished.
// With num_beams > 0, when every row of a group of num_beams consecutive rows has only -inf
// on its kept tokens, those tokens get 0 instead (transformers' fallback for unsatisfiable
// constraints). Tokens outside [0, vocab) are never written.
#pragma once
#include <cstdint>

#include "semid_fast/host_device.h"

namespace semid_fast {
namespace trie_hf {

struct RowState {
  int64_t state;  // trie state after the walked tokens, -1 when dead
  bool finished;  // an eos among the generated tokens
};

// The trie state of one row's generated tokens (see above).
SEMID_FAST_HD RowState walk_row(const int64_t* generated, int64_t step, const int64_t* inverse,
                                int64_t vocab_map, int64_t depth,
                                const int64_t* child_offsets, const int32_t* child_codes,
                                int64_t num_states, int64_t eos) {
  RowState rs{step > depth ? -1 : 0, false};
  for (int64_t j = 0; j < step; ++j) {
    const int64_t token = generated[j];
    if (eos >= 0 && token == eos) rs.finished = true;
    if (j >= depth || rs.state < 0) continue;
    const int64_t code = token >= 0 && token < vocab_map ? inverse[j * vocab_map + token] : -1;
    // Children are sorted by code: binary search in [lo, hi).
    int64_t lo = child_offsets[rs.state], hi = child_offsets[rs.state + 1];
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (child_codes[mid] < code) lo = mid + 1; else hi = mid;
    }
    const bool hit = code >= 0 && lo < child_offsets[rs.state + 1] && child_codes[lo] == code;
    rs.state = hit && lo + 1 < num_states ? lo + 1 : -1;  // edge e leads to state e + 1
  }
  return rs;
}

// Calls keep(token) for every token the row may emit next: the children's level-`step`
// tokens from the `first`-th child on, every `stride`-th (a thread's share), then eos when
// `with_eos` (the thread that writes eos).
template <typename Keep>
SEMID_FAST_HD void for_each_allowed(const RowState& rs, int64_t step, int64_t depth,
                                    const int64_t* child_offsets, const int32_t* child_codes,
                                    const int64_t* terminal, const int64_t* level_tokens,
                                    int64_t k, int64_t eos, int64_t first, int64_t stride,
                                    bool with_eos, Keep keep) {
  if (rs.state >= 0 && step < depth) {
    for (int64_t e = child_offsets[rs.state] + first; e < child_offsets[rs.state + 1];
         e += stride) {
      const int64_t code = child_codes[e];
      if (code >= 0 && code < k) keep(level_tokens[step * k + code]);
    }
  }
  if (with_eos && eos >= 0 && (rs.finished || (rs.state >= 0 && terminal[rs.state] >= 0)))
    keep(eos);
}

SEMID_FAST_HD bool valid_args(int64_t rows, int64_t start, int64_t step, int64_t vocab_map,
                              int64_t depth, int64_t num_states, int64_t k, int64_t vocab,
                              int64_t num_beams) {
  return rows >= 0 && step >= 0 && start >= 0 && depth >= 1 && vocab_map >= 1 &&
         num_states >= 1 && k >= 1 && vocab >= 1 && num_beams >= 0 &&
         (num_beams == 0 || rows % num_beams == 0);
}

}  // namespace trie_hf

#define SEMID_FAST_DECLARE_CPU_TRIE_HF(ns)                                                     \
  namespace ns {                                                                              \
  int sid_constrain_f32(const int64_t* input_ids, int64_t rows, int64_t ids_stride,          \
                        int64_t start, int64_t step, const int64_t* inverse,                 \
                        int64_t vocab_map, int64_t depth, const int64_t* child_offsets,      \
                        const int32_t* child_codes, const int64_t* terminal,                 \
                        int64_t num_states, const int64_t* level_tokens, int64_t k,          \
                        int64_t eos, int64_t num_beams, const float* scores, int64_t vocab,  \
                        float* out, int n_threads);                                          \
  }

SEMID_FAST_DECLARE_CPU_TRIE_HF(isa_avx2)
SEMID_FAST_DECLARE_CPU_TRIE_HF(isa_base)

}  // namespace semid_fast
