// CUDA launchers of the gumbel family: the math and layouts of gumbel.h, noise from
// philox.h. x, dy and y are float32, float16 or bfloat16 (dtype: DType of common.h), row-major
// (rows, v); dx, row_gz, row_zz are float32; argmax int64. Each launcher enqueues on `stream`,
// never synchronises or allocates, and returns cudaErrorInvalidValue for bad sizes or the
// launch's cudaGetLastError().
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace semid_fast {
namespace cuda {

cudaError_t gumbel_softmax_fwd(const void* x, int dtype, int64_t rows, int64_t v,
                               const float* tau, int64_t tau_stride, const float* scale,
                               int64_t scale_stride, uint64_t seed, uint64_t offset, int hard,
                               void* y, int64_t* argmax, cudaStream_t stream);

cudaError_t gumbel_softmax_bwd(const void* x, const void* dy, int dtype, int64_t rows, int64_t v,
                               const float* tau, int64_t tau_stride, const float* scale,
                               int64_t scale_stride, uint64_t seed, uint64_t offset, float* dx,
                               float* row_gz, float* row_zz, cudaStream_t stream);

}  // namespace cuda
}  // namespace semid_fast
