// CPU kernels of the gumbel family: Gumbel-softmax forward and backward and Gumbel-top-k in
// one pass over memory per row, with the noise drawn from philox.h (never stored).
//
// Each thread takes whole rows. A row's noise is generated into a thread-local buffer 64
// elements at a time (with AVX2: 16 Philox blocks in two registers per counter word, then the
// two float32 logs on 8 vectors in lockstep), then combined with the row in cache. This file is
// compiled with
// -ffp-contract=off (CMakeLists.txt): the noise and z = (x + scale * g) / tau must round
// like the reference's separate operations, or noise, argmax and top-k indices could differ;
// and with -fno-trapping-math, so that loops with float selects vectorise.
#include <omp.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "semid_fast/gumbel.h"
#include "semid_fast/philox.h"

namespace semid_fast {
namespace SEMID_FAST_ISA {
namespace {

constexpr int64_t kBlock = 64;  // elements per Philox batch: 16 counter groups of 4
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#if defined(__AVX2__)
// high and low 32 bits of the 8 products a * b (unsigned 32 x 32 -> 64 bits per lane).
inline void mul_wide(__m256i a, __m256i b, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, b);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), b);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// The Philox words of the 16 groups g0 .. g0 + 15 (64 elements), in element order (w[0]
// holds elements 4 g0 .. 4 g0 + 7). The rounds run on 8 groups per register (word j of group
// i in lane i of c[j]), two registers in lockstep so that one's multiplies hide the other's
// latency; a 4 x 8 transpose in registers then puts each half in element order.
inline void philox_16_groups(uint64_t seed, uint64_t offset, uint64_t g0, __m256i w[8]) {
  alignas(32) uint32_t group_lo[16], group_hi[16];
  for (int i = 0; i < 16; ++i) {
    group_lo[i] = uint32_t(g0 + uint64_t(i));
    group_hi[i] = uint32_t((g0 + uint64_t(i)) >> 32);
  }
  __m256i c[2][4];
  for (int h = 0; h < 2; ++h) {
    c[h][0] = _mm256_load_si256(reinterpret_cast<const __m256i*>(group_lo + 8 * h));
    c[h][1] = _mm256_load_si256(reinterpret_cast<const __m256i*>(group_hi + 8 * h));
    c[h][2] = _mm256_set1_epi32(int(uint32_t(offset)));
    c[h][3] = _mm256_set1_epi32(int(uint32_t(offset >> 32)));
  }
  __m256i key0 = _mm256_set1_epi32(int(uint32_t(seed)));
  __m256i key1 = _mm256_set1_epi32(int(uint32_t(seed >> 32)));
  const __m256i round_a = _mm256_set1_epi32(int(philox::kRoundA));
  const __m256i round_b = _mm256_set1_epi32(int(philox::kRoundB));
  for (int round = 0; round < 10; ++round) {
    for (int h = 0; h < 2; ++h) {
      __m256i hi_b, lo_b, hi_a, lo_a;
      mul_wide(c[h][2], round_b, hi_b, lo_b);
      mul_wide(c[h][0], round_a, hi_a, lo_a);
      c[h][0] = _mm256_xor_si256(_mm256_xor_si256(hi_b, c[h][1]), key0);
      c[h][2] = _mm256_xor_si256(_mm256_xor_si256(hi_a, c[h][3]), key1);
      c[h][1] = lo_b;
      c[h][3] = lo_a;
    }
    key0 = _mm256_add_epi32(key0, _mm256_set1_epi32(int(philox::kKeyA)));
    key1 = _mm256_add_epi32(key1, _mm256_set1_epi32(int(philox::kKeyB)));
  }
  for (int h = 0; h < 2; ++h) {
    const __m256i w01_0145 = _mm256_unpacklo_epi32(c[h][0], c[h][1]);  // groups 0 1 | 4 5, words 0 1
    const __m256i w01_2367 = _mm256_unpackhi_epi32(c[h][0], c[h][1]);  // groups 2 3 | 6 7, words 0 1
    const __m256i w23_0145 = _mm256_unpacklo_epi32(c[h][2], c[h][3]);
    const __m256i w23_2367 = _mm256_unpackhi_epi32(c[h][2], c[h][3]);
    const __m256i g04 = _mm256_unpacklo_epi64(w01_0145, w23_0145);  // group 0 | group 4
    const __m256i g15 = _mm256_unpackhi_epi64(w01_0145, w23_0145);
    const __m256i g26 = _mm256_unpacklo_epi64(w01_2367, w23_2367);
    const __m256i g37 = _mm256_unpackhi_epi64(w01_2367, w23_2367);
    __m256i* out = w + 4 * h;
    out[0] = _mm256_permute2x128_si256(g04, g15, 0x20);
    out[1] = _mm256_permute2x128_si256(g26, g37, 0x20);
    out[2] = _mm256_permute2x128_si256(g04, g15, 0x31);
    out[3] = _mm256_permute2x128_si256(g26, g37, 0x31);
  }
}

// k and f = m - 1 of philox::log_positive (x = 2^k m, m in [sqrt(1/2), sqrt(2))).
inline __m256 log_split(__m256 x, __m256i& k) {
  const __m256i bits = _mm256_castps_si256(x);
  k = _mm256_srai_epi32(_mm256_sub_epi32(bits, _mm256_set1_epi32(0x3F3504F3)), 23);
  const __m256 m = _mm256_castsi256_ps(_mm256_sub_epi32(bits, _mm256_slli_epi32(k, 23)));
  return _mm256_add_ps(m, _mm256_set1_ps(-1.f));
}

// philox::log_positive on N x 8 lanes in place: the same operations in the same order, so the
// same bits -- as long as this file is compiled with -ffp-contract=off (GCC treats these
// intrinsics as plain vector arithmetic and would fuse them into FMAs). The N vectors go
// through the polynomial in lockstep, or each would wait on every multiply's and add's
// latency; f and k are recomputed for the tail rather than held in registers.
template <int N>
inline void log_positive_nx8(__m256 x[N]) {
  static constexpr float kPoly[9] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                                     -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                                     2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
  __m256 f[N], p[N];
  for (int v = 0; v < N; ++v) {
    __m256i k;
    f[v] = log_split(x[v], k);
    p[v] = _mm256_set1_ps(kPoly[0]);
  }
#pragma GCC unroll 8
  for (int c = 1; c < 9; ++c)
    for (int v = 0; v < N; ++v)
      p[v] = _mm256_add_ps(_mm256_mul_ps(p[v], f[v]), _mm256_set1_ps(kPoly[c]));
  for (int v = 0; v < N; ++v) {
    __m256i k;
    const __m256 fv = log_split(x[v], k);
    const __m256 z = _mm256_mul_ps(fv, fv);
    const __m256 kf = _mm256_cvtepi32_ps(k);
    __m256 y = _mm256_mul_ps(_mm256_mul_ps(p[v], fv), z);
    y = _mm256_add_ps(y, _mm256_mul_ps(kf, _mm256_set1_ps(-2.12194440e-4f)));
    y = _mm256_sub_ps(y, _mm256_mul_ps(_mm256_set1_ps(0.5f), z));  // y + -(z / 2)
    x[v] = _mm256_add_ps(_mm256_add_ps(fv, y), _mm256_mul_ps(kf, _mm256_set1_ps(0.693359375f)));
  }
}

// Words (bits) or noise of the 64 elements of groups g0 .. g0 + 15, in element order; the noise
// is philox::gumbel_of_bits, lane by lane.
inline void noise_block(uint64_t seed, uint64_t offset, uint64_t g0, uint32_t* bits,
                        float* noise) {
  __m256i w[8];
  philox_16_groups(seed, offset, g0, w);
  if (bits)
    for (int v = 0; v < 8; ++v) _mm256_storeu_si256(reinterpret_cast<__m256i*>(bits + 8 * v), w[v]);
  if (!noise) return;
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 g[8];
  for (int v = 0; v < 8; ++v) {  // u = (2 (r >> 9) + 1) 2^-24
    const __m256i odd = _mm256_or_si256(_mm256_slli_epi32(_mm256_srli_epi32(w[v], 9), 1),
                                        _mm256_set1_epi32(1));
    g[v] = _mm256_mul_ps(_mm256_cvtepi32_ps(odd), _mm256_set1_ps(5.9604644775390625e-08f));
  }
  log_positive_nx8<8>(g);
  for (int v = 0; v < 8; ++v) g[v] = _mm256_xor_ps(g[v], sign);
  log_positive_nx8<8>(g);
  for (int v = 0; v < 8; ++v) _mm256_storeu_ps(noise + 8 * v, _mm256_xor_ps(g[v], sign));
}
#else
inline void noise_block(uint64_t seed, uint64_t offset, uint64_t g0, uint32_t* bits,
                        float* noise) {
  for (int i = 0; i < kBlock / 4; ++i) {
    uint32_t words[4];
    philox::group_bits(seed, offset, g0 + uint64_t(i), words);
    for (int j = 0; j < 4; ++j) {
      if (bits) bits[4 * i + j] = words[j];
      if (noise) noise[4 * i + j] = philox::gumbel_of_bits(words[j]);
    }
  }
}
#endif

// Noise words and/or Gumbel noise of elements [e0, e0 + n): whole blocks straight into the
// outputs, the partial blocks at either end through a small buffer.
void fill_noise(uint64_t seed, uint64_t offset, int64_t e0, int64_t n, uint32_t* bits,
                float* noise) {
  if (n <= 0) return;
  const int64_t end = e0 + n;
  alignas(32) uint32_t part_bits[kBlock];
  alignas(32) float part_noise[kBlock];
  for (int64_t b = e0 & ~(kBlock - 1); b < end; b += kBlock) {
    const int64_t lo = std::max(e0, b), hi = std::min(end, b + kBlock);
    const uint64_t g0 = uint64_t(b) >> 2;
    if (hi - lo == kBlock) {
      noise_block(seed, offset, g0, bits ? bits + (b - e0) : nullptr,
                  noise ? noise + (b - e0) : nullptr);
      continue;
    }
    noise_block(seed, offset, g0, bits ? part_bits : nullptr, noise ? part_noise : nullptr);
    if (bits) std::copy(part_bits + (lo - b), part_bits + (hi - b), bits + (lo - e0));
    if (noise) std::copy(part_noise + (lo - b), part_noise + (hi - b), noise + (lo - e0));
  }
}

// z = (x + scale * g) / tau into z, and the first index of the largest z, in one pass (8
// lanes, each keeping its first maximum; rows too long for int32 lanes take a scalar scan).
int64_t perturb_argmax(const float* x, const float* g, int64_t v, float tau, float scale,
                       float* z) {
  int64_t j = 0;
  float best = kNegInf;
  int64_t at = 0;
  if (v >= 8 && v <= INT32_MAX) {
    v8f lane_best = kNegInf - v8f{};
    v8i lane_at = v8i{}, index = v8i{0, 1, 2, 3, 4, 5, 6, 7};
    for (; j + 8 <= v; j += 8) {  // philox::perturb lane by lane: one rounding per operation
      const v8f zz = (load8(x + j) + scale * load8(g + j)) / tau;
      store8(z + j, zz);
      const v8i gt = zz > lane_best;
      lane_best = gt ? zz : lane_best;
      lane_at = gt ? index : lane_at;
      index += 8;
    }
    for (int l = 0; l < 8; ++l) {
      if (lane_best[l] > best || (lane_best[l] == best && lane_best[l] > kNegInf && lane_at[l] < at)) {
        best = lane_best[l];
        at = lane_at[l];
      }
    }
  }
  for (; j < v; ++j) {
    z[j] = philox::perturb(x[j], scale, g[j], tau);
    if (z[j] > best) {
      best = z[j];
      at = j;
    }
  }
  return at;
}

// exp(x) on 4 x 8 lanes in place for x <= 0 (exp(-inf) = 0): exp(x) = 2^n exp(r),
// n = floor(x / ln 2 + 1/2), r = x - n ln 2 (ln 2 split in two), exp(r) by Cephes expf's
// polynomial; within about 2 ulp; results below 2^-126 are flushed to 0. The four vectors go
// through each step together, or every step would wait on the one before.
inline void exp_nonpositive_4x8(v8f x[4]) {
  v8f r[4], n[4], p[4];
  for (int k = 0; k < 4; ++k) {
    const v8f clamped = x[k] < -87.f ? -87.f - v8f{} : x[k];
    const v8f half_up = clamped * 1.44269504088896341f + 0.5f;
    const v8f truncated = __builtin_convertvector(__builtin_convertvector(half_up, v8i), v8f);
    n[k] = truncated > half_up ? truncated - 1.f : truncated;  // floor (|n| <= 126)
    r[k] = (clamped - n[k] * 0.693359375f) + n[k] * 2.12194440e-4f;
    p[k] = 1.9875691500e-4f - v8f{};
  }
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f,
                        5.0000001201e-1f})
    for (int k = 0; k < 4; ++k) p[k] = p[k] * r[k] + c;
  for (int k = 0; k < 4; ++k) {
    const v8f e = (p[k] * r[k]) * r[k] + r[k] + 1.f;
    const v8f two_n = (v8f)((__builtin_convertvector(n[k], v8i) + 127) << 23);
    x[k] = x[k] < -87.f ? v8f{} : e * two_n;
  }
}

// sum of a[j] * b[j] in 8 lanes (float sums do not vectorise otherwise without -ffast-math).
float lane_dot(const float* a, const float* b, int64_t v) {
  v8f acc = v8f{};
  int64_t j = 0;
  for (; j + 8 <= v; j += 8)
    acc += load8(a + j) * load8(b + j);
  float sum = 0.f;
  for (int l = 0; l < 8; ++l) sum += acc[l];
  for (; j < v; ++j) sum += a[j] * b[j];
  return sum;
}

// e = exp(z - max) in place, with sum(e) and (dy != nullptr) sum(e * dy) in the same pass,
// 32 elements at a time; the last partial block is padded with -inf (e = 0 there).
void exp_sum_dot(float* z, const float* dy, int64_t v, float max, float& sum, float& dot) {
  v8f acc_sum = v8f{}, acc_dot = v8f{};
  for (int64_t j = 0; j < v; j += 32) {
    const int64_t n = std::min<int64_t>(32, v - j);
    alignas(32) float zz[32], dd[32];
    const float* zs = z + j;
    const float* ds = dy ? dy + j : nullptr;
    if (n < 32) {
      std::fill(std::copy(z + j, z + j + n, zz), zz + 32, kNegInf);
      if (dy) std::fill(std::copy(dy + j, dy + j + n, dd), dd + 32, 0.f);
      zs = zz;
      ds = dy ? dd : nullptr;
    }
    v8f e[4];
    for (int k = 0; k < 4; ++k) e[k] = load8(zs + 8 * k) - max;
    exp_nonpositive_4x8(e);
    for (int k = 0; k < 4; ++k) {
      acc_sum += e[k];
      if (ds) acc_dot += e[k] * load8(ds + 8 * k);
      if (n == 32) store8(z + j + 8 * k, e[k]);
      else std::copy(&e[k][0], &e[k][0] + 8, zz + 8 * k);
    }
    if (n < 32) std::copy(zz, zz + n, z + j);
  }
  sum = dot = 0.f;
  for (int l = 0; l < 8; ++l) {
    sum += acc_sum[l];
    dot += acc_dot[l];
  }
}

template <typename Body>
void for_rows(int64_t rows, int64_t v, int n_threads, Body body) {
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(n_threads, rows)));
  // Two rows of scratch per thread, allocated before the region (a failure throws here).
  std::vector<float> scratch(size_t(threads) * 2 * size_t(v));
#pragma omp parallel num_threads(threads)
  {
    float* a = scratch.data() + size_t(omp_get_thread_num()) * 2 * size_t(v);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) body(i, a, a + v);
  }
}

}  // namespace

int gumbel_noise(uint64_t seed, uint64_t offset, int64_t start, int64_t n, uint32_t* bits,
                 float* noise, int n_threads) {
  if (n < 0 || start < 0 || n > INT64_MAX - 64 - start) return kBadArgument;  // element indices fit
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(std::max(1, n_threads)) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = c * kChunk, len = std::min(kChunk, n - lo);
    fill_noise(seed, offset, start + lo, len, bits ? bits + lo : nullptr,
               noise ? noise + lo : nullptr);
  }
  return kOk;
}

int gumbel_softmax_fwd_f32(const float* x, int64_t rows, int64_t v, const float* tau,
                           int64_t tau_stride, const float* scale, int64_t scale_stride,
                           uint64_t seed, uint64_t offset, int hard, float* y, int64_t* argmax,
                           int n_threads) {
  if (rows < 0 || v <= 0 || !tau || !scale) return kBadArgument;
  for_rows(rows, v, n_threads, [&](int64_t i, float* g, float*) {
    const float* xi = x + i * v;
    float* yi = y + i * v;
    fill_noise(seed, offset, i * v, v, nullptr, g);
    const int64_t at = perturb_argmax(xi, g, v, tau[i * tau_stride], scale[i * scale_stride], yi);
    argmax[i] = at;
    if (hard) {
      std::fill(yi, yi + v, 0.f);
      yi[at] = 1.f;
      return;
    }
    float total, unused;
    exp_sum_dot(yi, nullptr, v, yi[at], total, unused);
    const float inv = 1.f / total;
    for (int64_t j = 0; j < v; ++j) yi[j] *= inv;
  });
  return kOk;
}

int gumbel_softmax_bwd_f32(const float* x, const float* dy, int64_t rows, int64_t v,
                           const float* tau, int64_t tau_stride, const float* scale,
                           int64_t scale_stride, uint64_t seed, uint64_t offset, float* dx,
                           float* row_gz, float* row_zz, int n_threads) {
  if (rows < 0 || v <= 0 || !tau || !scale) return kBadArgument;
  for_rows(rows, v, n_threads, [&](int64_t i, float* g, float* y) {
    const float* xi = x + i * v;
    const float* dyi = dy + i * v;
    float* dxi = dx + i * v;
    const float t = tau[i * tau_stride], s = scale[i * scale_stride];
    fill_noise(seed, offset, i * v, v, nullptr, g);
    // Three passes over the row in cache: z and its max; e = exp(z - max) with sum(e) and
    // sum(dy * e); dz and dx.
    const int64_t at = perturb_argmax(xi, g, v, t, s, y);
    float total, dot;
    exp_sum_dot(y, dyi, v, y[at], total, dot);  // y holds e
    const float inv = 1.f / total;
    dot *= inv;
    for (int64_t j = 0; j < v; ++j) {  // y holds dz from here
      y[j] = (y[j] * inv) * (dyi[j] - dot);
      dxi[j] = y[j] / t;
    }
    if (row_gz || row_zz) {
      const float gz = lane_dot(y, g, v);
      // z again, 0 where dz == 0 (masked -inf entries: no 0 * inf); g is free to hold it.
      for (int64_t j = 0; j < v; ++j) g[j] = y[j] == 0.f ? 0.f : philox::perturb(xi[j], s, g[j], t);
      const float zz = lane_dot(y, g, v);
      if (row_gz) row_gz[i] = gz;
      if (row_zz) row_zz[i] = zz;
    }
  });
  return kOk;
}

int gumbel_topk_f32(const float* x, int64_t rows, int64_t v, const float* tau,
                    int64_t tau_stride, uint64_t seed, uint64_t offset, int64_t k,
                    float* out_scores, int64_t* out_idx, int n_threads) {
  if (rows < 0 || v <= 0 || k <= 0 || k > v || !tau) return kBadArgument;
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(n_threads, rows)));
  // Every thread's row of scores (and of indices for k > 1) allocated before the region.
  std::vector<float> all_scores(size_t(threads) * size_t(v));
  std::vector<int64_t> all_orders(k > 1 ? size_t(threads) * size_t(v) : 0);
#pragma omp parallel num_threads(threads)
  {
    const size_t mine = size_t(omp_get_thread_num()) * size_t(v);
    float* si = all_scores.data() + mine;
    int64_t* order = k > 1 ? all_orders.data() + mine : nullptr;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const float* xi = x + i * v;
      const float t = tau[i * tau_stride];
      fill_noise(seed, offset, i * v, v, nullptr, si);
      for (int64_t j = 0; j < v; ++j) si[j] = xi[j] / t + si[j];
      if (k == 1) {  // Gumbel-max: one scan
        int64_t at = 0;
        for (int64_t j = 1; j < v; ++j) at = si[j] > si[at] ? j : at;
        out_scores[i] = si[at];
        out_idx[i] = at;
        continue;
      }
      std::iota(order, order + v, int64_t(0));
      // A strict total order even on unchecked NaN scores (ranked first, as torch.topk
      // does): std::partial_sort needs one.
      const auto better = [si](int64_t a, int64_t b) {
        const bool nan_a = std::isnan(si[a]), nan_b = std::isnan(si[b]);
        if (nan_a != nan_b) return nan_a;
        if (!nan_a && si[a] != si[b]) return si[a] > si[b];
        return a < b;
      };
      std::partial_sort(order, order + k, order + v, better);
      for (int64_t r = 0; r < k; ++r) {
        out_idx[i * k + r] = order[r];
        out_scores[i * k + r] = si[order[r]];
      }
    }
  }
  return kOk;
}

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
