// Layout and ranking of the semantic-ID trie, shared by the CPU and CUDA builds.
//
// Trie layout (CSR, states numbered breadth-first: root 0, then every level-1 state, then
// level 2, ...; the children of a state are consecutive and sorted by code):
//   child_offsets (S + 1,) int64: the children of state s are the edges
//                 [child_offsets[s], child_offsets[s + 1])
//   child_codes   (S - 1,) int32: the code of edge e
//   next state of edge e: e + 1 (implicit: breadth-first numbering makes the edges, in CSR
//                 order, exactly the states 1 .. S-1 in order)
//   terminal      (S,) int64: the item whose full ID ends at s (the smallest item id when
//                 several share it), else -1
//   level_starts  (L + 2,) int64: the states of level d are [level_starts[d], level_starts[d+1])
//
// Beam states (int64): 0 <= s < S a live hypothesis at state s; -1 an empty slot; ~s
// (= -1 - s, s >= 1 a terminal state) a finished hypothesis whose ID ended at s.
//
// Beam step: per batch row, every beam j (in order) offers its candidates in this order:
// first "stop" (a live beam at a terminal state, or a finished beam carried on: score
// unchanged, no token, state ~s), then one candidate per child edge, code ascending (score
// beam_score + log_prob[code], state = child). The candidates of a row are numbered in that
// order (their rank); the best beam_width win: higher float32 score first, ties toward the
// smaller rank (= the smaller (parent, code), stop counting as code -1). Each candidate is
// one uint64 key, (order_word(score) << 32) | (0xFFFFFFFF - rank) (order_word: common.h),
// so the larger key wins; 0 means "no candidate".
//
// Pool of finished IDs (decoding that records every ID the step completes and never
// expands it again): per row, the pool (p entries: a terminal state and its score; any
// other state is an empty entry) and the beams of the step whose state is a terminal state
// are ranked together, pool entries first, then the beams in slot order (their rank); the
// best p win with the same key as above, empty entries (-inf, -1) last.
#pragma once
#include <cstdint>

#include "semid_fast/common.h"

namespace semid_fast {
namespace trie {

// Ranks are 32-bit: a row offers at most this many candidates (beam step, pool update).
constexpr int64_t kMaxCandidates = int64_t(0xFFFFFFFF);

SEMID_FAST_HD uint64_t candidate_key(float score, uint32_t rank) {
  return (uint64_t(order_word(score)) << 32) | uint64_t(0xFFFFFFFFu - rank);
}

SEMID_FAST_HD uint32_t key_rank(uint64_t key) { return 0xFFFFFFFFu - uint32_t(key & 0xFFFFFFFFu); }

// Whether st is a state of the trie where an ID ends (never reads out of bounds).
SEMID_FAST_HD bool is_id_state(int64_t st, const int64_t* terminal, int64_t s) {
  return st >= 0 && st < s && terminal[st] >= 0;
}

}  // namespace trie

#define SEMID_FAST_DECLARE_CPU_TRIE(ns)                                                       \
  namespace ns {                                                                             \
  /* Sorts the items by ID (shorter first when one ID is a prefix of another, then by item   \
     id) into order (N,), with the rows in that order in sorted_codes (N, L) (0 past the    \
     ID's end) and sorted_lengths (N,); writes lcp (N,): the number of leading codes row i  \
     shares with row i-1 (0 for i = 0), and level_counts (L,): the states of each level    \
     >= 1. codes (N, L) int64, lengths (N,) int64 in [1, L], vocab (L,) int64; codes        \
     beyond an ID's length are ignored. Status kCodeOutOfRange / kBadArgument on bad input. */ \
  int trie_sort(const int64_t* codes, const int64_t* lengths, int64_t n, int64_t l,          \
                const int64_t* vocab, int64_t* order, int64_t* sorted_codes,                 \
                int64_t* sorted_lengths, int64_t* lcp, int64_t* level_counts, int n_threads); \
  /* Fills the CSR arrays (sizes from trie_sort's counts) and edge_keys (S - 1,): parent *  \
     max_vocab + code of each edge, from trie_sort's outputs. */                            \
  int trie_fill(const int64_t* sorted_codes, const int64_t* sorted_lengths, int64_t n,       \
                int64_t l, const int64_t* order, const int64_t* lcp,                         \
                const int64_t* level_starts, int64_t max_vocab, int64_t* child_offsets,      \
                int32_t* child_codes, int64_t* edge_keys, int64_t* terminal);                \
  /* One constrained beam step for b rows of w_in beams -> w_out beams (see above).          \
     log_probs (b * w_in, v) float32, beam_scores (b, w_in) float32, states (b * w_in,)      \
     int64; outputs (b, w_out): scores float32, parents int64 (beam index in the row, -1),   \
     tokens int64 (code; -1 for stop and empty slots), next states int64. States outside    \
     the trie are empty slots (never read out of bounds); children with code >= v are not   \
     candidates. shift (b * w_in,) float32 or null: a child's score is                       \
     beam_score + (log_prob - shift[beam]) (null: shift 0, the same floats as no shift). */  \
  int trie_beam_step(const float* log_probs, const float* beam_scores, const int64_t* states, \
                     const float* shift, int64_t b, int64_t w_in, int64_t v,                 \
                     const int64_t* child_offsets, const int32_t* child_codes,               \
                     const int64_t* terminal, int64_t s, int64_t w_out, float* out_scores,   \
                     int64_t* out_parents, int64_t* out_tokens, int64_t* out_states,         \
                     int n_threads);                                                         \
  /* The shift of a renormalised step: out (r,) float32, per beam the log-sum-exp of its    \
     log-probs (r, v) over the children of its state with a code below v; 0 where the state \
     is not a live state, has no such child, or the maximum is +-inf; NaN if one is NaN. */   \
  int trie_children_logsumexp(const float* log_probs, const int64_t* states, int64_t r,      \
                              int64_t v, const int64_t* child_offsets,                       \
                              const int32_t* child_codes, int64_t s, float* out,             \
                              int n_threads);                                                \
  /* Pool of finished IDs (see below): merges the completed beams of b rows into the pool.  \
     pool_scores / pool_states (b, p) in, out_pool_scores / out_pool_states (b, p) out,     \
     scores / states (b, w) the beams after a step, out_states (b, w) those states with the \
     completed ones set to -1. */                                                            \
  int trie_pool_update(const float* pool_scores, const int64_t* pool_states,                 \
                       const float* scores, const int64_t* states, int64_t b, int64_t p,     \
                       int64_t w, const int64_t* terminal, int64_t s, float* out_pool_scores, \
                       int64_t* out_pool_states, int64_t* out_states, int n_threads);       \
  }

SEMID_FAST_DECLARE_CPU_TRIE(isa_avx2)
SEMID_FAST_DECLARE_CPU_TRIE(isa_base)

}  // namespace semid_fast
