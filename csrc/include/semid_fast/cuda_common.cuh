// Small host-side helpers shared by the CUDA launchers.
#pragma once
#include <cstddef>
#include <cuda_runtime.h>

namespace semid_fast {
namespace cuda {

// Kernels asking for more than 48 KB of dynamic shared memory must opt in first. Clears the
// error it returns, so a failed opt-in does not poison later launches.
template <typename Kernel>
inline cudaError_t allow_dynamic_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (e != cudaSuccess) cudaGetLastError();
  return e;
}

}  // namespace cuda
}  // namespace semid_fast
