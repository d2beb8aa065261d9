// SEMID_FAST_HD marks the small functions that the CPU and CUDA kernels share: compiled for
// both by nvcc, plain inline functions for the host compiler.
#pragma once

#ifdef __CUDACC__
#define SEMID_FAST_HD __host__ __device__ __forceinline__
#else
#define SEMID_FAST_HD inline
#endif
