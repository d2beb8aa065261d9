// CUDA launcher of the trie family: the fused constrained beam step. Layout of the trie,
// beam states and ranking: trie.h (the CPU kernel computes the same result bit for bit).
//
// Layouts (row-major, contiguous, all on the device):
//   log_probs (b * w_in, v) float32; beam_scores (b, w_in) float32; states (b * w_in,) int64
//   child_offsets (s + 1,) int64; child_codes (s - 1,) int32; terminal (s,) int64
//   out_scores (b, w_out) float32; out_parents / out_tokens / out_states (b, w_out) int64
//
// Enqueues on `stream`, never synchronises, never allocates (CUDA-graph capturable);
// returns cudaErrorInvalidValue for unsupported arguments (w_out outside [1, kTrieMaxBeams],
// w_in > kTrieMaxBeamsIn) or the launch's cudaGetLastError().
//
// sid_constrain_f32: the logits processor of semid_fast.hf, the same result as the CPU
// kernel (row logic in trie_hf.h, compiled for the device); same stream/error contract.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

#include "semid_fast/trie_hf.h"

namespace semid_fast {
namespace cuda {

constexpr int64_t kTrieMaxBeams = 1024;    // beams kept per row
constexpr int64_t kTrieMaxBeamsIn = 8192;  // beams read per row

// shift (b * w_in,) float32 or null: a child's score is beam_score + (log_prob - shift[beam]).
cudaError_t trie_beam_step(const float* log_probs, const float* beam_scores,
                           const int64_t* states, const float* shift, int64_t b, int64_t w_in,
                           int64_t v, const int64_t* child_offsets, const int32_t* child_codes,
                           const int64_t* terminal, int64_t s, int64_t w_out, float* out_scores,
                           int64_t* out_parents, int64_t* out_tokens, int64_t* out_states,
                           cudaStream_t stream);

// Pool of finished IDs (trie.h): pool (b, p), beams (b, w), p and w in [1, kTrieMaxBeams];
// one block per row sorts the p + w keys. Same stream/error contract as above.
cudaError_t trie_pool_update(const float* pool_scores, const int64_t* pool_states,
                             const float* scores, const int64_t* states, int64_t b, int64_t p,
                             int64_t w, const int64_t* terminal, int64_t s,
                             float* out_pool_scores, int64_t* out_pool_states,
                             int64_t* out_states, cudaStream_t stream);

// Two launches: one thread per row decides whether it extends a row of the previous call
// (writing args.match, a rows-long int32 buffer the caller provides when prev_ids is given),
// then one block per group of rows masks the scores.
cudaError_t sid_constrain_f32(const trie_hf::ConstrainArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace semid_fast
