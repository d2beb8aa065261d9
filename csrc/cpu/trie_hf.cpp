// CPU kernel of the transformers logits processor: walk + mask in one pass per row, so a
// generate() step costs one call instead of a few dozen small torch ops. Row logic and ABI:
// trie_hf.h. OpenMP over groups of num_beams rows (one row per group without the fallback).
#include <omp.h>

#include <algorithm>
#include <limits>

#include "semid_fast/quantize.h"
#include "semid_fast/trie_hf.h"

namespace semid_fast {
namespace SEMID_FAST_ISA {

int sid_constrain_f32(const int64_t* input_ids, int64_t rows, int64_t ids_stride,
                      int64_t start, int64_t step, const int64_t* inverse, int64_t vocab_map,
                      int64_t depth, const int64_t* child_offsets, const int32_t* child_codes,
                      const int64_t* terminal, int64_t num_states, const int64_t* level_tokens,
                      int64_t k, int64_t eos, int64_t num_beams, const float* scores,
                      int64_t vocab, float* out, int n_threads) {
  using trie_hf::RowState;
  if (!trie_hf::valid_args(rows, start, step, vocab_map, depth, num_states, k, vocab,
                           num_beams))
    return kBadArgument;
  const int64_t group = num_beams > 0 ? num_beams : 1;
  const int64_t groups = rows / group;
  const float neg_inf = -std::numeric_limits<float>::infinity();

#pragma omp parallel for schedule(static) num_threads(n_threads)
  for (int64_t g = 0; g < groups; ++g) {
    bool all_unsatisfied = true;
    for (int64_t r = g * group; r < (g + 1) * group; ++r) {
      const float* in_row = scores + r * vocab;
      float* out_row = out + r * vocab;
      std::fill(out_row, out_row + vocab, neg_inf);
      const RowState rs = trie_hf::walk_row(input_ids + r * ids_stride + start, step, inverse,
                                            vocab_map, depth, child_offsets, child_codes,
                                            num_states, eos);
      trie_hf::for_each_allowed(rs, step, depth, child_offsets, child_codes, terminal,
                                level_tokens, k, eos, 0, 1, true, [&](int64_t token) {
                                  if (token < 0 || token >= vocab) return;
                                  out_row[token] = in_row[token];
                                  if (in_row[token] != neg_inf) all_unsatisfied = false;
                                });
    }
    if (num_beams == 0 || !all_unsatisfied) continue;
    for (int64_t r = g * group; r < (g + 1) * group; ++r) {
      float* out_row = out + r * vocab;
      const RowState rs = trie_hf::walk_row(input_ids + r * ids_stride + start, step, inverse,
                                            vocab_map, depth, child_offsets, child_codes,
                                            num_states, eos);
      trie_hf::for_each_allowed(rs, step, depth, child_offsets, child_codes, terminal,
                                level_tokens, k, eos, 0, 1, true, [&](int64_t token) {
                                  if (token >= 0 && token < vocab) out_row[token] = 0.0f;
                                });
    }
  }
  return kOk;
}

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
