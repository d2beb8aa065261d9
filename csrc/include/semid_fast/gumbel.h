// Raw-pointer ABI of the gumbel family (CPU): Gumbel-softmax forward/backward, Gumbel-top-k
// and the raw noise stream, all drawn from philox.h (noise of element e of the row-major
// (rows, v) layout, keyed by (seed, offset)).
//
// Per-row parameters: tau[i * tau_stride] and scale[i * scale_stride] (stride 0: one value
// for every row). All float arrays are float32, contiguous, row-major.
//   z[i, j] = (x[i, j] + scale_i * g[i, j]) / tau_i     (product, sum and quotient each
//                                                        rounded once: no FMA)
//   softmax fwd: y = softmax(z) per row (hard: one-hot of argmax), argmax[i] = first index of
//                the largest z (int64).
//   softmax bwd: from x, dy (the gradient of the soft output): dx = dz / tau_i with
//                dz = y * (dy - sum(dy * y)); optional per-row sums row_gz[i] = sum_j dz*g and
//                row_zz[i] = sum_j dz*z (nullptr: not computed).
//   topk:        scores = x / tau_i + g; the k best per row, best first, ties toward the
//                smaller index: out_scores (rows, k) float32, out_idx (rows, k) int64.
// Return kOk, or kBadArgument (common.h).
#pragma once
#include <cstdint>

#include "semid_fast/common.h"

namespace semid_fast {

#define SEMID_FAST_DECLARE_CPU_GUMBEL(ns)                                                       \
  namespace ns {                                                                               \
  int gumbel_noise(uint64_t seed, uint64_t offset, int64_t start, int64_t n, uint32_t* bits,   \
                   float* noise, int n_threads);                                               \
  int gumbel_softmax_fwd_f32(const float* x, int64_t rows, int64_t v, const float* tau,        \
                             int64_t tau_stride, const float* scale, int64_t scale_stride,     \
                             uint64_t seed, uint64_t offset, int hard, float* y,               \
                             int64_t* argmax, int n_threads);                                  \
  int gumbel_softmax_bwd_f32(const float* x, const float* dy, int64_t rows, int64_t v,         \
                             const float* tau, int64_t tau_stride, const float* scale,         \
                             int64_t scale_stride, uint64_t seed, uint64_t offset, float* dx,  \
                             float* row_gz, float* row_zz, int n_threads);                     \
  int gumbel_topk_f32(const float* x, int64_t rows, int64_t v, const float* tau,               \
                      int64_t tau_stride, uint64_t seed, uint64_t offset, int64_t k,           \
                      float* out_scores, int64_t* out_idx, int n_threads);                     \
  }

SEMID_FAST_DECLARE_CPU_GUMBEL(isa_avx2)
SEMID_FAST_DECLARE_CPU_GUMBEL(isa_base)

}  // namespace semid_fast
