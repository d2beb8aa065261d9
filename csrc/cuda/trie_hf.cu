// CUDA kernel of the transformers logits processor. One block per group of num_beams rows
// (one row per block without the fallback): the block fills each row with -inf (coalesced),
// thread 0 walks the row's tokens (at most depth binary searches), then the threads share
// the children's token writes. Row logic: trie_hf.h.
#include <cuda_runtime.h>

#include "semid_fast/cuda_trie_hf.h"
#include "semid_fast/trie_hf.h"

namespace semid_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct ConstrainArgs {
  const int64_t* input_ids;
  int64_t ids_stride, start, step;
  const int64_t* inverse;
  int64_t vocab_map, depth;
  const int64_t* child_offsets;
  const int32_t* child_codes;
  const int64_t* terminal;
  int64_t num_states;
  const int64_t* level_tokens;
  int64_t k, eos, num_beams;
  const float* scores;
  int64_t vocab;
  float* out;
};

__device__ trie_hf::RowState shared_walk(const ConstrainArgs& a, int64_t r) {
  __shared__ trie_hf::RowState rs;
  __syncthreads();  // rs of the previous row is no longer read
  if (threadIdx.x == 0)
    rs = trie_hf::walk_row(a.input_ids + r * a.ids_stride + a.start, a.step, a.inverse,
                           a.vocab_map, a.depth, a.child_offsets, a.child_codes, a.num_states,
                           a.eos);
  __syncthreads();
  return rs;
}

__global__ void __launch_bounds__(kThreads) constrain_kernel(ConstrainArgs a) {
  const int64_t group = a.num_beams > 0 ? a.num_beams : 1;
  const int64_t first_row = int64_t(blockIdx.x) * group;
  const float neg_inf = -__int_as_float(0x7f800000);
  __shared__ int satisfied;
  if (threadIdx.x == 0) satisfied = 0;
  for (int64_t r = first_row; r < first_row + group; ++r) {
    const float* in_row = a.scores + r * a.vocab;
    float* out_row = a.out + r * a.vocab;
    for (int64_t t = threadIdx.x; t < a.vocab; t += blockDim.x) out_row[t] = neg_inf;
    const trie_hf::RowState rs = shared_walk(a, r);  // its barriers order the fill first
    trie_hf::for_each_allowed(rs, a.step, a.depth, a.child_offsets, a.child_codes, a.terminal,
                              a.level_tokens, a.k, a.eos, threadIdx.x, blockDim.x,
                              threadIdx.x == 0, [&](int64_t token) {
                                if (token < 0 || token >= a.vocab) return;
                                out_row[token] = in_row[token];
                                if (in_row[token] != neg_inf) satisfied = 1;
                              });
  }
  if (a.num_beams == 0) return;
  __syncthreads();
  if (satisfied) return;  // the same value in every thread after the barrier
  for (int64_t r = first_row; r < first_row + group; ++r) {
    float* out_row = a.out + r * a.vocab;
    const trie_hf::RowState rs = shared_walk(a, r);
    trie_hf::for_each_allowed(rs, a.step, a.depth, a.child_offsets, a.child_codes, a.terminal,
                              a.level_tokens, a.k, a.eos, threadIdx.x, blockDim.x,
                              threadIdx.x == 0, [&](int64_t token) {
                                if (token >= 0 && token < a.vocab) out_row[token] = 0.0f;
                              });
  }
}

}  // namespace

cudaError_t sid_constrain_f32(const int64_t* input_ids, int64_t rows, int64_t ids_stride,
                              int64_t start, int64_t step, const int64_t* inverse,
                              int64_t vocab_map, int64_t depth, const int64_t* child_offsets,
                              const int32_t* child_codes, const int64_t* terminal,
                              int64_t num_states, const int64_t* level_tokens, int64_t k,
                              int64_t eos, int64_t num_beams, const float* scores,
                              int64_t vocab, float* out, cudaStream_t stream) {
  if (!trie_hf::valid_args(rows, start, step, vocab_map, depth, num_states, k, vocab,
                           num_beams))
    return cudaErrorInvalidValue;
  const int64_t groups = num_beams > 0 ? rows / num_beams : rows;
  if (groups == 0) return cudaSuccess;
  if (groups > 0x7fffffff) return cudaErrorInvalidValue;
  const ConstrainArgs a{input_ids, ids_stride, start, step, inverse, vocab_map, depth,
                        child_offsets, child_codes, terminal, num_states, level_tokens, k,
                        eos, num_beams, scores, vocab, out};
  constrain_kernel<<<unsigned(groups), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace semid_fast
