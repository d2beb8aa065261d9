// CUDA launchers of the quantize family. Same layouts as quantize.h; x may be float32,
// float16 or bfloat16 (x_dtype: DType of common.h). Each launcher enqueues on `stream`,
// never synchronises, and returns the launch's cudaError_t. Out-of-range codes in the
// decoders contribute nothing.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace semid_fast {
namespace cuda {

cudaError_t rq_encode(const void* x, int x_dtype, int64_t n, int64_t d, const float* codebooks,
                      int64_t levels, int64_t k, int64_t* codes, float* quantized, float* errors,
                      cudaStream_t stream);
cudaError_t pq_encode(const void* x, int x_dtype, int64_t n, int64_t d, const float* codebooks,
                      int64_t m, int64_t k, int64_t* codes, cudaStream_t stream);
cudaError_t rq_decode(const int64_t* codes, int64_t n, int64_t levels, const float* codebooks,
                      int64_t k, int64_t d, float* out, cudaStream_t stream);
cudaError_t pq_decode(const int64_t* codes, int64_t n, int64_t m, const float* codebooks,
                      int64_t k, int64_t dsub, float* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace semid_fast
