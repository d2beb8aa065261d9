// CUDA kernels of the gumbel family: fused Gumbel-softmax forward and backward (see
// cuda_gumbel.h and gumbel.h for the math, philox.h for the noise).
//
// Design: one 256-thread block per row. Thread t takes the Philox counter groups
// first + t, first + t + 256, ... of its row, so one Philox call yields the noise of four
// consecutive elements, held in registers. Each thread keeps an online (max, first argmax,
// sum of exp(z - max), sum of dy * exp(z - max)) over its elements; one block reduction
// merges them. When the row's z (and g for the backward's parameter sums) fit in 48 KB of
// shared memory they are kept there, so the row is read once and written once; longer rows
// draw the noise again in the output pass instead. z = philox::perturb (__fmul_rn /
// __fadd_rn / __fdiv_rn on the device): rounded like the reference, never contracted to an FMA.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "semid_fast/cuda_common.cuh"
#include "semid_fast/cuda_gumbel.h"
#include "semid_fast/common.h"
#include "semid_fast/philox.h"

namespace semid_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
// Dynamic shared memory for the row cache: the 48 KB that a launch gets without opting in,
// less room for the reductions' static shared memory (about 260 bytes).
constexpr int64_t kCacheBytes = 46 * 1024;
constexpr int64_t kNoIndex = INT64_MAX;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Online softmax statistics of a set of elements: max m, the first index reaching it, and
// sums of exp(z - m) and dy * exp(z - m).
struct Stats {
  float m;
  int64_t at;
  float sum;
  float dot;
};

__device__ __forceinline__ Stats empty_stats() { return Stats{neg_inf(), kNoIndex, 0.f, 0.f}; }

// Adds element j (indices arrive in increasing order per thread: strict > keeps the first).
// The first element always sets `at`, so that a row of NaN (unchecked input) still yields an
// index inside the row.
__device__ __forceinline__ void push(Stats& a, float z, int64_t j, float dy) {
  if (a.at == kNoIndex) a.at = j;
  if (z > a.m) {
    const float r = a.m == neg_inf() ? 0.f : expf(a.m - z);
    a.sum = a.sum * r + 1.f;
    a.dot = a.dot * r + dy;
    a.m = z;
    a.at = j;
  } else if (z != neg_inf()) {
    const float e = expf(z - a.m);
    a.sum += e;
    a.dot += dy * e;
  }
}

__device__ __forceinline__ Stats merge(const Stats& a, const Stats& b) {
  // A side without elements never wins (also when the other's max is NaN).
  const bool b_wins = b.at != kNoIndex &&
                      (a.at == kNoIndex || b.m > a.m || (b.m == a.m && b.at < a.at));
  Stats out;
  out.m = b_wins ? b.m : a.m;
  out.at = b_wins ? b.at : a.at;
  const float ra = a.m == neg_inf() ? 0.f : expf(a.m - out.m);
  const float rb = b.m == neg_inf() ? 0.f : expf(b.m - out.m);
  out.sum = a.sum * ra + b.sum * rb;
  out.dot = a.dot * ra + b.dot * rb;
  return out;
}

__device__ __forceinline__ Stats shfl_down(const Stats& a, int delta) {
  Stats b;
  b.m = __shfl_down_sync(kFull, a.m, delta);
  b.at = __shfl_down_sync(kFull, a.at, delta);
  b.sum = __shfl_down_sync(kFull, a.sum, delta);
  b.dot = __shfl_down_sync(kFull, a.dot, delta);
  return b;
}

// The merged statistics of the whole block, returned to every thread.
__device__ Stats block_stats(Stats s) {
  __shared__ Stats warp_stats[kWarps];
  __shared__ Stats result;
  for (int delta = 16; delta > 0; delta >>= 1) s = merge(s, shfl_down(s, delta));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_stats[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < kWarps ? warp_stats[lane] : empty_stats();
    for (int delta = 16; delta > 0; delta >>= 1) s = merge(s, shfl_down(s, delta));
    if (lane == 0) result = s;
  }
  __syncthreads();
  return result;
}

__device__ float block_sum(float v) {
  __shared__ float partial[kWarps];
  __shared__ float result;
  for (int delta = 16; delta > 0; delta >>= 1) v += __shfl_down_sync(kFull, v, delta);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? partial[lane] : 0.f;
    for (int delta = 16; delta > 0; delta >>= 1) v += __shfl_down_sync(kFull, v, delta);
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

// Calls f(j, g, z) for this thread's elements j of the row starting at element `base`,
// four per Philox call.
template <typename T, typename F>
__device__ __forceinline__ void for_row_elements(const T* __restrict__ xr, int64_t base,
                                                 int64_t v, float tau, float scale,
                                                 uint64_t seed, uint64_t offset, F f) {
  const int64_t first = base >> 2, last = (base + v - 1) >> 2;
  for (int64_t group = first + threadIdx.x; group <= last; group += kThreads) {
    uint32_t words[4];
    philox::group_bits(seed, offset, uint64_t(group), words);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const int64_t j = group * 4 + lane - base;
      if (j < 0 || j >= v) continue;
      const float g = philox::gumbel_of_bits(words[lane]);
      const float z = philox::perturb(to_float(xr[j]), scale, g, tau);
      f(j, g, z);
    }
  }
}

template <typename T, bool HARD>
__global__ void __launch_bounds__(kThreads)
    softmax_fwd_kernel(const T* __restrict__ x, int64_t v, const float* __restrict__ tau,
                       int64_t tau_stride, const float* __restrict__ scale,
                       int64_t scale_stride, uint64_t seed, uint64_t offset, int cache,
                       T* __restrict__ y, int64_t* __restrict__ argmax) {
  extern __shared__ float z_cache[];
  const int64_t row = blockIdx.x;
  const float t = tau[row * tau_stride], s = scale[row * scale_stride];
  const int64_t base = row * v;
  const T* xr = x + base;
  T* yr = y + base;
  Stats st = empty_stats();
  for_row_elements(xr, base, v, t, s, seed, offset, [&](int64_t j, float, float z) {
    if (cache) z_cache[j] = z;
    push(st, z, j, 0.f);
  });
  st = block_stats(st);
  if (threadIdx.x == 0) argmax[row] = st.at;
  if (HARD) {
    for (int64_t j = threadIdx.x; j < v; j += kThreads)
      yr[j] = from_float<T>(j == st.at ? 1.f : 0.f);
    return;
  }
  const float inv = 1.f / st.sum;
  if (cache) {
    for (int64_t j = threadIdx.x; j < v; j += kThreads)
      yr[j] = from_float<T>(expf(z_cache[j] - st.m) * inv);
  } else {
    for_row_elements(xr, base, v, t, s, seed, offset, [&](int64_t j, float, float z) {
      yr[j] = from_float<T>(expf(z - st.m) * inv);
    });
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_bwd_kernel(const T* __restrict__ x, const T* __restrict__ dy, int64_t v,
                       const float* __restrict__ tau, int64_t tau_stride,
                       const float* __restrict__ scale, int64_t scale_stride, uint64_t seed,
                       uint64_t offset, int cache, float* __restrict__ dx,
                       float* __restrict__ row_gz, float* __restrict__ row_zz) {
  extern __shared__ float smem[];
  const bool sums = row_gz != nullptr;
  float* z_cache = smem;
  float* g_cache = smem + v;
  const int64_t row = blockIdx.x;
  const float t = tau[row * tau_stride], s = scale[row * scale_stride];
  const int64_t base = row * v;
  const T* xr = x + base;
  const T* dyr = dy + base;
  float* dxr = dx + base;
  Stats st = empty_stats();
  for_row_elements(xr, base, v, t, s, seed, offset, [&](int64_t j, float g, float z) {
    if (cache) {
      z_cache[j] = z;
      if (sums) g_cache[j] = g;
    }
    push(st, z, j, to_float(dyr[j]));
  });
  st = block_stats(st);
  const float inv = 1.f / st.sum, dot = st.dot / st.sum;
  float gz = 0.f, zz = 0.f;
  const auto output = [&](int64_t j, float g, float z) {
    const float dz = expf(z - st.m) * inv * (to_float(dyr[j]) - dot);
    dxr[j] = dz / t;
    if (sums && dz != 0.f) {  // dz == 0 for masked (-inf) entries: no 0 * inf
      gz += dz * g;
      zz += dz * z;
    }
  };
  if (cache) {
    for (int64_t j = threadIdx.x; j < v; j += kThreads)
      output(j, sums ? g_cache[j] : 0.f, z_cache[j]);
  } else {
    for_row_elements(xr, base, v, t, s, seed, offset, output);
  }
  if (sums) {
    gz = block_sum(gz);
    zz = block_sum(zz);
    if (threadIdx.x == 0) {
      row_gz[row] = gz;
      row_zz[row] = zz;
    }
  }
}

bool bad_sizes(int64_t rows, int64_t v, int dtype) {
  return rows < 0 || rows > INT_MAX || v <= 0 ||
         (dtype != kFloat32 && dtype != kFloat16 && dtype != kBFloat16);
}

template <typename T>
cudaError_t launch_fwd(const void* x, int64_t rows, int64_t v, const float* tau,
                       int64_t tau_stride, const float* scale, int64_t scale_stride,
                       uint64_t seed, uint64_t offset, int hard, void* y, int64_t* argmax,
                       cudaStream_t stream) {
  const int64_t bytes = v * 4;
  const int cache = bytes <= kCacheBytes;
  const size_t smem = cache ? size_t(bytes) : 0;
  const auto kernel = hard ? softmax_fwd_kernel<T, true> : softmax_fwd_kernel<T, false>;
  kernel<<<unsigned(rows), kThreads, smem, stream>>>(
      static_cast<const T*>(x), v, tau, tau_stride, scale, scale_stride, seed, offset, cache,
      static_cast<T*>(y), argmax);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const void* x, const void* dy, int64_t rows, int64_t v, const float* tau,
                       int64_t tau_stride, const float* scale, int64_t scale_stride,
                       uint64_t seed, uint64_t offset, float* dx, float* row_gz, float* row_zz,
                       cudaStream_t stream) {
  const int64_t bytes = v * 4 * (row_gz ? 2 : 1);
  const int cache = bytes <= kCacheBytes;
  const size_t smem = cache ? size_t(bytes) : 0;
  softmax_bwd_kernel<T><<<unsigned(rows), kThreads, smem, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(dy), v, tau, tau_stride, scale,
      scale_stride, seed, offset, cache, dx, row_gz, row_zz);
  return cudaGetLastError();
}

}  // namespace

cudaError_t gumbel_softmax_fwd(const void* x, int dtype, int64_t rows, int64_t v,
                               const float* tau, int64_t tau_stride, const float* scale,
                               int64_t scale_stride, uint64_t seed, uint64_t offset, int hard,
                               void* y, int64_t* argmax, cudaStream_t stream) {
  if (bad_sizes(rows, v, dtype)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (dtype == kFloat16)
    return launch_fwd<__half>(x, rows, v, tau, tau_stride, scale, scale_stride, seed, offset,
                              hard, y, argmax, stream);
  if (dtype == kBFloat16)
    return launch_fwd<__nv_bfloat16>(x, rows, v, tau, tau_stride, scale, scale_stride, seed,
                                     offset, hard, y, argmax, stream);
  return launch_fwd<float>(x, rows, v, tau, tau_stride, scale, scale_stride, seed, offset, hard,
                           y, argmax, stream);
}

cudaError_t gumbel_softmax_bwd(const void* x, const void* dy, int dtype, int64_t rows, int64_t v,
                               const float* tau, int64_t tau_stride, const float* scale,
                               int64_t scale_stride, uint64_t seed, uint64_t offset, float* dx,
                               float* row_gz, float* row_zz, cudaStream_t stream) {
  if (bad_sizes(rows, v, dtype) || (row_gz == nullptr) != (row_zz == nullptr))
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (dtype == kFloat16)
    return launch_bwd<__half>(x, dy, rows, v, tau, tau_stride, scale, scale_stride, seed, offset,
                              dx, row_gz, row_zz, stream);
  if (dtype == kBFloat16)
    return launch_bwd<__nv_bfloat16>(x, dy, rows, v, tau, tau_stride, scale, scale_stride, seed,
                                     offset, dx, row_gz, row_zz, stream);
  return launch_bwd<float>(x, dy, rows, v, tau, tau_stride, scale, scale_stride, seed, offset,
                           dx, row_gz, row_zz, stream);
}

}  // namespace cuda
}  // namespace semid_fast
