// CUDA launcher of the transformers logits processor: the same result as the CPU kernel of
// trie_hf.h (same row logic, compiled for the device). Enqueues on `stream`, never
// synchronises, never allocates; returns cudaErrorInvalidValue for bad arguments, else the
// launch's cudaGetLastError().
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace semid_fast {
namespace cuda {

cudaError_t sid_constrain_f32(const int64_t* input_ids, int64_t rows, int64_t ids_stride,
                              int64_t start, int64_t step, const int64_t* inverse,
                              int64_t vocab_map, int64_t depth, const int64_t* child_offsets,
                              const int32_t* child_codes, const int64_t* terminal,
                              int64_t num_states, const int64_t* level_tokens, int64_t k,
                              int64_t eos, int64_t num_beams, const float* scores,
                              int64_t vocab, float* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace semid_fast
