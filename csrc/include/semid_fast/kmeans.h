// Raw-pointer ABI of k-means' centroid update (CPU). The assignment step is rq_encode_f32
// with one level (quantize.h), so k-means and RQ encoding share one nearest-codeword kernel.
//
//   x       (n, d) float32, row-major contiguous
//   codes   (n,)   int64, the cluster of each row, in [0, k)
//   sums    (k, d) float64 out: sum of the rows of each cluster
//   counts  (k,)   int64 out: rows per cluster
// Returns kCodeOutOfRange (outputs unwritten) when a code is outside [0, k).
//
// Greedy k-means++ (scikit-learn's rule) from random numbers drawn by the caller:
//   first   the first pick, a row index in [0, n)
//   draws   (k - 1, trials) float64 uniforms in [0, 1): for pick c, trial t's candidate is the
//           first row whose cumulative squared distance reaches draws[c-1][t] * total
//   picks   (k,) int64 out: the row index of each initial centroid
// Each pick is the candidate that leaves the smallest total squared distance (ties: the
// earlier trial). Squared distances are ||x||^2 - 2 x.c + ||c||^2 in float32, clamped at 0,
// summed in float64.
#pragma once
#include <cstdint>

#include "semid_fast/common.h"

namespace semid_fast {

#define SEMID_FAST_DECLARE_CPU_KMEANS(ns)                                                     \
  namespace ns {                                                                             \
  int kmeans_update_f32(const float* x, int64_t n, int64_t d, const int64_t* codes, int64_t k, \
                        double* sums, int64_t* counts, int n_threads);                       \
  int kmeanspp_f32(const float* x, int64_t n, int64_t d, int64_t k, int64_t first,            \
                   const double* draws, int64_t trials, int64_t* picks, int n_threads);       \
  }

SEMID_FAST_DECLARE_CPU_KMEANS(isa_avx2)
SEMID_FAST_DECLARE_CPU_KMEANS(isa_base)
SEMID_FAST_DECLARE_CPU_KMEANS(isa_avx512)  // defined where the build has AVX-512

}  // namespace semid_fast
