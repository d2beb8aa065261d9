// The transformers logits processor (semid_fast/hf.py): one call masks the scores of one
// generate() step to the children of each row's trie state. Row logic shared by the CPU and
// CUDA kernels (__host__ __device__), then the CPU ABI; the CUDA launcher is in
// cuda_trie.h.
//
// Where the ID starts. `start` (one int64, read and written) holds the input column where
// the generated ID of the current generation starts. A call continues the previous one when
// `prev_ids` (the previous call's rows, contiguous (rows, prev_len), prev_len = length - 1)
// is given and every row of input_ids begins with one of those rows (beam search reorders
// and duplicates rows, so any previous row will do); otherwise it starts a new generation
// and `start` becomes `length`. The generated tokens of row r are then
// input_ids[r, start : length], step = length - start of them.
//
// The walk. Tokens map to codes through `inverse` (depth, vocab_map) int64 (level j: token
// id -> code, -1 for none; tokens outside [0, vocab_map) have no code) and are walked from the
// root of the trie (CSR layout of semid_fast/trie.h). After a complete ID (a terminal state)
// the `n_suffix` tokens of `suffix` follow in order (MiniOneRec's "\n"), then eos. A token
// that fits none of this gives the dead state -1. A row is finished once one of its tokens
// is eos (eos >= 0). Output (rows, vocab) float32: -inf, except these tokens keep their score:
//   * inside the ID (0 <= step < depth): the level-`step` token of each child code
//     (level_tokens (depth, k) int64);
//   * at a complete ID: suffix[0], or eos when there is no suffix;
//   * after i < n_suffix suffix tokens: suffix[i]; after all of them: eos;
//   * finished rows: eos;
//   * a row with none of the above (dead): eos, and *dead is set to 1 (the caller warns).
// With num_beams > 0, when every row of a group of num_beams consecutive rows has only -inf
// on its kept tokens, those tokens get 0 instead (transformers' fallback for unsatisfiable
// constraints). Tokens outside [0, vocab) are never written.
#pragma once
#include <cstdint>

#include "semid_fast/host_device.h"

namespace semid_fast {
namespace trie_hf {

struct ConstrainArgs {
  const int64_t* input_ids;  // (rows, length), row stride ids_stride, unit column stride
  int64_t rows, ids_stride, length;
  const int64_t* prev_ids;  // (rows, prev_len) contiguous, or null: a new generation
  int64_t prev_len;
  int32_t* match;  // CUDA only: per row, 1 when it extends a row of prev_ids
  int64_t* start;        // in: the previous call's start; out: this call's
  const int64_t* inverse;
  int64_t vocab_map, depth;
  const int64_t* child_offsets;
  const int32_t* child_codes;
  const int64_t* terminal;
  int64_t num_states;
  const int64_t* level_tokens;
  int64_t k;
  const int64_t* suffix;
  int64_t n_suffix, eos, num_beams;
  const float* scores;
  int64_t vocab;
  float* out;
  int32_t* dead;
};

// True when row[0, n) equals prev[0, n) (compared from the end: rows that share a prompt
// differ in their last tokens).
SEMID_FAST_HD bool same_prefix(const int64_t* row, const int64_t* prev, int64_t n) {
  for (int64_t c = n - 1; c >= 0; --c)
    if (row[c] != prev[c]) return false;
  return true;
}

// True when row r of input_ids begins with some row of prev_ids. Its parent is row r itself
// under greedy search and sampling and a beam of the same batch item under beam search, so
// the search goes outward from r.
SEMID_FAST_HD bool extends_a_row(const ConstrainArgs& a, int64_t r) {
  const int64_t* row = a.input_ids + r * a.ids_stride;
  for (int64_t d = 0; d < 2 * a.rows; ++d) {
    const int64_t j = d % 2 ? r - (d + 1) / 2 : r + d / 2;
    if (j < 0 || j >= a.rows) continue;
    if (same_prefix(row, a.prev_ids + j * a.prev_len, a.prev_len)) return true;
  }
  return false;
}

// The start column of this call given whether every row extends a previous row.
SEMID_FAST_HD int64_t start_column(const ConstrainArgs& a, bool continues) {
  const int64_t s = continues ? *a.start : a.length;
  return s < 0 || s > a.length ? a.length : s;
}

struct RowState {
  int64_t state;   // trie state after the walked tokens, -1 when dead
  int64_t suffix;  // suffix tokens read after the complete ID, -1 while inside the ID
  bool finished;   // an eos among the generated tokens
};

// The state of one row's `step` generated tokens (see above).
SEMID_FAST_HD RowState walk_row(const ConstrainArgs& a, const int64_t* generated,
                                int64_t step) {
  RowState rs{0, -1, false};
  for (int64_t j = 0; j < step; ++j) {
    const int64_t token = generated[j];
    if (a.eos >= 0 && token == a.eos) {
      rs.finished = true;
      rs.state = -1;
    }
    if (rs.state < 0) continue;
    if (rs.suffix >= 0) {
      const bool next = rs.suffix < a.n_suffix && token == a.suffix[rs.suffix];
      rs.suffix = next ? rs.suffix + 1 : -1;
      if (!next) rs.state = -1;
      continue;
    }
    if (a.n_suffix > 0 && a.terminal[rs.state] >= 0 && token == a.suffix[0]) {
      rs.suffix = 1;
      continue;
    }
    if (j >= a.depth) {
      rs.state = -1;
      continue;
    }
    const int64_t code =
        token >= 0 && token < a.vocab_map ? a.inverse[j * a.vocab_map + token] : -1;
    // Children are sorted by code: binary search in [lo, hi).
    int64_t lo = a.child_offsets[rs.state], hi = a.child_offsets[rs.state + 1];
    const int64_t end = hi;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (a.child_codes[mid] < code) lo = mid + 1; else hi = mid;
    }
    const bool hit = code >= 0 && lo < end && a.child_codes[lo] == code;
    rs.state = hit && lo + 1 < a.num_states ? lo + 1 : -1;  // edge e leads to state e + 1
  }
  return rs;
}

// The one token other than the children that the row may emit next (suffix, eos), -1 when
// none; `dead` is set when the row may emit nothing else either.
SEMID_FAST_HD int64_t single_token(const ConstrainArgs& a, const RowState& rs, int64_t step,
                                   bool* dead) {
  int64_t token = -1;
  bool children = false;
  if (rs.finished) {
    token = a.eos;
  } else if (rs.state >= 0 && rs.suffix >= 0) {
    token = rs.suffix < a.n_suffix ? a.suffix[rs.suffix] : a.eos;
  } else if (rs.state >= 0) {
    if (a.terminal[rs.state] >= 0) token = a.n_suffix > 0 ? a.suffix[0] : a.eos;
    children = step < a.depth && a.child_offsets[rs.state + 1] > a.child_offsets[rs.state];
  }
  *dead = token < 0 && !children;
  return *dead ? a.eos : token;
}

// Calls keep(token) for every token the row may emit next: the children's level-`step`
// tokens from the `first`-th child on, every `stride`-th (a thread's share), then the single
// token when `with_single` (the thread that writes it). Returns whether the row is dead.
template <typename Keep>
SEMID_FAST_HD bool for_each_allowed(const ConstrainArgs& a, const RowState& rs, int64_t step,
                                    int64_t first, int64_t stride, bool with_single,
                                    Keep keep) {
  if (rs.state >= 0 && rs.suffix < 0 && step < a.depth) {
    for (int64_t e = a.child_offsets[rs.state] + first; e < a.child_offsets[rs.state + 1];
         e += stride) {
      const int64_t code = a.child_codes[e];
      if (code >= 0 && code < a.k) keep(a.level_tokens[step * a.k + code]);
    }
  }
  bool dead = false;
  const int64_t token = single_token(a, rs, step, &dead);
  if (with_single && token >= 0) keep(token);
  return dead;
}

SEMID_FAST_HD bool valid_args(const ConstrainArgs& a) {
  return a.rows >= 0 && a.length >= 0 && a.vocab_map >= 1 && a.depth >= 1 &&
         a.num_states >= 1 && a.k >= 1 && a.vocab >= 1 && a.num_beams >= 0 &&
         a.n_suffix >= 0 && (a.n_suffix == 0 || a.suffix != nullptr) &&
         (a.prev_ids == nullptr || a.prev_len == a.length - 1) &&
         (a.num_beams == 0 || a.rows % a.num_beams == 0) && a.start != nullptr &&
         a.dead != nullptr;
}

}  // namespace trie_hf

#define SEMID_FAST_DECLARE_CPU_TRIE_HF(ns)                                   \
  namespace ns {                                                            \
  int sid_constrain_f32(const trie_hf::ConstrainArgs& args, int n_threads); \
  }

SEMID_FAST_DECLARE_CPU_TRIE_HF(isa_avx2)
SEMID_FAST_DECLARE_CPU_TRIE_HF(isa_base)

}  // namespace semid_fast
