// CPU kernel of the transformers logits processor: walk + mask in one pass per row, so a
// generate() step costs one call instead of a few dozen small torch ops. ABI: trie_hf.h.
// OpenMP over groups of num_beams rows (one row per group without the fallback).
#include <omp.h>

#include <algorithm>
#include <limits>

#include "semid_fast/quantize.h"
#include "semid_fast/trie_hf.h"

namespace semid_fast {
namespace SEMID_FAST_ISA {
namespace {

struct RowState {
  int64_t state;  // trie state after the walked tokens, -1 when dead
  bool finished;  // an eos among the generated tokens
};

RowState walk_row(const int64_t* generated, int64_t step, const int64_t* inverse,
                  int64_t vocab_map, int64_t depth, const int64_t* child_offsets,
                  const int32_t* child_codes, int64_t num_states, int64_t eos) {
  RowState rs{step > depth ? -1 : 0, false};
  for (int64_t j = 0; j < step; ++j) {
    const int64_t token = generated[j];
    if (eos >= 0 && token == eos) rs.finished = true;
    if (j >= depth || rs.state < 0) continue;
    const int64_t code = token >= 0 && token < vocab_map ? inverse[j * vocab_map + token] : -1;
    if (code < 0) {
      rs.state = -1;
      continue;
    }
    const int32_t* first = child_codes + child_offsets[rs.state];
    const int32_t* last = child_codes + child_offsets[rs.state + 1];
    const int32_t* hit = std::lower_bound(first, last, static_cast<int32_t>(code));
    rs.state = (hit != last && *hit == code) ? (hit - child_codes) + 1 : -1;
    if (rs.state >= num_states) rs.state = -1;  // a malformed trie never leads out of bounds
  }
  return rs;
}

// Calls keep(token) for every token the row may emit next.
template <typename Keep>
void for_each_allowed(const RowState& rs, int64_t step, int64_t depth,
                      const int64_t* child_offsets, const int32_t* child_codes,
                      const int64_t* terminal, const int64_t* level_tokens, int64_t k,
                      int64_t eos, Keep keep) {
  if (rs.state >= 0 && step < depth) {
    for (int64_t e = child_offsets[rs.state]; e < child_offsets[rs.state + 1]; ++e) {
      const int64_t code = child_codes[e];
      if (code >= 0 && code < k) keep(level_tokens[step * k + code]);
    }
  }
  if (eos >= 0 && (rs.finished || (rs.state >= 0 && terminal[rs.state] >= 0))) keep(eos);
}

}  // namespace

int sid_constrain_f32(const int64_t* input_ids, int64_t rows, int64_t ids_stride,
                      int64_t start, int64_t step, const int64_t* inverse, int64_t vocab_map,
                      int64_t depth, const int64_t* child_offsets, const int32_t* child_codes,
                      const int64_t* terminal, int64_t num_states, const int64_t* level_tokens,
                      int64_t k, int64_t eos, int64_t num_beams, const float* scores,
                      int64_t vocab, float* out, int n_threads) {
  if (rows < 0 || step < 0 || start < 0 || depth < 1 || vocab_map < 1 || num_states < 1 ||
      k < 1 || vocab < 1 || num_beams < 0 || (num_beams > 0 && rows % num_beams != 0))
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
      const RowState rs = walk_row(input_ids + r * ids_stride + start, step, inverse,
                                   vocab_map, depth, child_offsets, child_codes, num_states, eos);
      for_each_allowed(rs, step, depth, child_offsets, child_codes, terminal, level_tokens, k,
                       eos, [&](int64_t token) {
                         if (token < 0 || token >= vocab) return;
                         out_row[token] = in_row[token];
                         if (in_row[token] != neg_inf) all_unsatisfied = false;
                       });
    }
    if (num_beams == 0 || !all_unsatisfied) continue;
    for (int64_t r = g * group; r < (g + 1) * group; ++r) {
      float* out_row = out + r * vocab;
      const RowState rs = walk_row(input_ids + r * ids_stride + start, step, inverse,
                                   vocab_map, depth, child_offsets, child_codes, num_states, eos);
      for_each_allowed(rs, step, depth, child_offsets, child_codes, terminal, level_tokens, k,
                       eos, [&](int64_t token) {
                         if (token >= 0 && token < vocab) out_row[token] = 0.0f;
                       });
    }
  }
  return kOk;
}

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
