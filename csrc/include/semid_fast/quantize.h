// Raw-pointer ABI of the quantize family, shared by the CPU and CUDA builds.
// No torch header here: Python passes data_ptr() integers, sizes and the stream.
//
// Layouts (all row-major and contiguous; Python makes them so before the call):
//   x          (n, d)              float32 on CPU; float32/float16/bfloat16 on CUDA (x_dtype)
//   codebooks  (levels|m, k, d|dsub)  float32
//   codes      (n, levels|m)       int64
//   quantized  (n, d)              float32, optional (nullptr): sum of the chosen codewords
//   errors     (n, levels)         float32, optional (nullptr): ||residual after level l||^2
//
//   eps        (levels)            float64, optional (nullptr: no Sinkhorn): level l assigns
//                                  codes by Sinkhorn-Knopp with epsilon eps[l] when > 0
//                                  (greedy only; sk_iters iterations), by nearest codeword
//                                  when 0
//
// sinkhorn_codes_f32: the Sinkhorn assignment of n rows from their (n, k) float32 distances.
//
// rq_quantize backward, from the codes of the forward: with r_0 = x, e_l = codebooks[l][code_l]
// and r_{l+1} = r_l - e_l (so e_l - r_l = -r_{l+1}),
//   grad_x = x_scale * (e_0 - r_0) + grad_quantized (nullptr: 0)                  (n, d)
//   grad_codebooks[l][c] = codebook_scale * sum of (e_l - r_l) over rows with code_l = c
// Returns kCodeOutOfRange (outputs unwritten) when a code is outside [0, k).
#pragma once
#include <cstdint>

#include "semid_fast/common.h"

namespace semid_fast {

// Beam search scores beam_width * k candidates per row (256 MB at this bound).
constexpr int64_t kRqMaxBeamCandidates = int64_t(1) << 26;

#define SEMID_FAST_DECLARE_CPU_QUANTIZE(ns)                                                   \
  namespace ns {                                                                             \
  int rq_encode_f32(const float* x, int64_t n, int64_t d, const float* codebooks,             \
                    int64_t levels, int64_t k, int64_t beam_width, const double* eps,         \
                    int64_t sk_iters, int64_t* codes, float* quantized, float* errors,        \
                    int n_threads);                                                          \
  int sinkhorn_codes_f32(const float* dist, int64_t n, int64_t k, double eps, int64_t iters,  \
                         int64_t* codes, int n_threads);                                     \
  int pq_encode_f32(const float* x, int64_t n, int64_t d, const float* codebooks, int64_t m,  \
                    int64_t k, int64_t* codes, int n_threads);                               \
  int rq_decode_f32(const int64_t* codes, int64_t n, int64_t levels, const float* codebooks,  \
                    int64_t k, int64_t d, float* out, int n_threads);                        \
  int rq_quantize_bwd_f32(const float* x, int64_t n, int64_t d, const float* codebooks,       \
                          int64_t levels, int64_t k, const int64_t* codes,                    \
                          const float* grad_quantized, float x_scale, float codebook_scale,   \
                          float* grad_x, float* grad_codebooks, int n_threads);               \
  int pq_decode_f32(const int64_t* codes, int64_t n, int64_t m, const float* codebooks,       \
                    int64_t k, int64_t dsub, float* out, int n_threads);                     \
  }

SEMID_FAST_DECLARE_CPU_QUANTIZE(isa_avx2)
SEMID_FAST_DECLARE_CPU_QUANTIZE(isa_base)
SEMID_FAST_DECLARE_CPU_QUANTIZE(isa_avx512)  // defined where the build has AVX-512

}  // namespace semid_fast
