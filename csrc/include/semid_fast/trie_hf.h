// Raw-pointer ABI of the transformers logits processor (semid_fast/hf.py): one call masks
// the scores of one generate() step to the children of each row's trie state.
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

namespace semid_fast {

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
