// CPU kernels of the quantize family (RQ / PQ encode and decode) on raw float32 pointers.
//
// Compiled once per ISA (SEMID_FAST_ISA names the namespace; CMake adds -mavx2 -mfma for
// isa_avx2, AVX-512 F/VL/BW/DQ for isa_avx512). The hot loop is a register-blocked "small
// GEMM": a tile of TR rows against a panel of TC codewords stored transposed (d-major), so
// each step is TR broadcasts, two VW-float loads and 2*TR fused multiply-adds (6 x 16 with
// 8-float registers, 12 x 32 with AVX-512's 32 16-float ones). The nearest codeword maximises
// r.c - ||c||^2 / 2 (||r||^2 does not change the choice); the running argmax stays in vector
// registers, ties going to the smaller code. Nothing of size (n, k) is ever written.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "semid_fast/quantize.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace semid_fast {
namespace SEMID_FAST_ISA {
namespace {

// The register tile: TR rows against TC = 2 * VW codewords, VW floats per vector.
#ifdef __AVX512F__
typedef float vtf __attribute__((vector_size(64)));
typedef int32_t vti __attribute__((vector_size(64)));
typedef float vtf_unaligned __attribute__((vector_size(64), aligned(4)));
constexpr int VW = 16;
constexpr int TR = 12;  // 24 accumulators + 2 panel vectors + 1 broadcast of the 32 registers
#else
typedef v8f vtf;
typedef v8i vti;
typedef v8f_unaligned vtf_unaligned;
constexpr int VW = 8;
constexpr int TR = 6;  // 12 accumulators + 2 panel vectors + 1 broadcast of the 16 registers
#endif
constexpr int TC = 2 * VW;  // codewords per panel
inline vtf loadv(const float* p) { return *reinterpret_cast<const vtf_unaligned*>(p); }
inline void storev(float* p, vtf v) { *reinterpret_cast<vtf_unaligned*>(p) = v; }
// A broadcast: `vtf{} + s` would cost a scalar add per call (0 + s is not s for -0).
#ifdef __AVX512F__
inline vtf splatv(float s) { return vtf(_mm512_set1_ps(s)); }
#else
inline vtf splatv(float s) { return splat(s); }
#endif
inline vti splatv_i(int32_t s) { return vti{} + s; }
constexpr int64_t ROW_BLOCK = 8 * TR;  // rows sharing one panel while it sits in L1
// Beam search by tables while they take at most 64 MB.
constexpr int64_t kMaxCrossTableFloats = int64_t(16) << 20;
static_assert(ROW_BLOCK % 16 == 0, "the PQ lane kernel takes rows 16 at a time");

// Maximum (minimum) of the 8 lanes, broadcast to every lane, by three swap-and-compare steps.
template <typename V>
inline V lane_reduce(V v, bool take_max) {
  const v8i swaps[3] = {{4, 5, 6, 7, 0, 1, 2, 3}, {2, 3, 0, 1, 6, 7, 4, 5}, {1, 0, 3, 2, 5, 4, 7, 6}};
  for (const v8i& perm : swaps) {
    const V other = __builtin_shuffle(v, perm);
    v = take_max ? (other > v ? other : v) : (other < v ? other : v);
  }
  return v;
}
inline v8f lane_max(v8f v) { return lane_reduce(v, true); }
inline v8i lane_min(v8i v) { return lane_reduce(v, false); }
// The largest (smallest) lane as a scalar, for either vector width.
inline float hmax(v8f v) { return lane_max(v)[0]; }
inline int32_t hmin(v8i v) { return lane_min(v)[0]; }
#ifdef __AVX512F__
template <typename Half, typename V>
inline void halves(const V& v, Half& lo, Half& hi) {
  std::memcpy(&lo, &v, sizeof(Half));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
}
inline float hmax(vtf v) {
  v8f lo, hi;
  halves(v, lo, hi);
  return hmax(lo > hi ? lo : hi);
}
inline int32_t hmin(vti v) {
  v8i lo, hi;
  halves(v, lo, hi);
  return hmin(lo < hi ? lo : hi);
}
#endif
// 0, 1, ..., VW - 1.
inline vti lane_ids() {
  vti v{};
  for (int i = 0; i < VW; ++i) v[i] = i;
  return v;
}

// Whether any lane of a comparison mask (lanes 0 or -1) is set.
inline bool any_lane(v8i mask) {
#ifdef __AVX2__
  return !_mm256_testz_si256((__m256i)mask, (__m256i)mask);
#else
  v8i folded = mask | __builtin_shuffle(mask, v8i{4, 5, 6, 7, 0, 1, 2, 3});
  folded |= __builtin_shuffle(folded, v8i{2, 3, 0, 1, 6, 7, 4, 5});
  return (folded[0] | folded[1]) != 0;
#endif
}
// Bit i set where lane i of a is less than b's (lanes_less) or not greater than b's
// (lanes_not_greater: a NaN lane included).
inline uint32_t lanes_less(vtf a, vtf b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(__m512(a), __m512(b), _CMP_LT_OQ);
#elif defined(__AVX2__)
  return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(__m256(a), __m256(b), _CMP_LT_OQ)));
#else
  uint32_t bits = 0;
  for (int i = 0; i < VW; ++i) bits |= uint32_t(a[i] < b[i]) << i;
  return bits;
#endif
}
inline uint32_t lanes_not_greater(vtf a, vtf b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(__m512(a), __m512(b), _CMP_NGT_UQ);
#elif defined(__AVX2__)
  return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(__m256(a), __m256(b), _CMP_NGT_UQ)));
#else
  uint32_t bits = 0;
  for (int i = 0; i < VW; ++i) bits |= uint32_t(!(a[i] > b[i])) << i;
  return bits;
#endif
}

// Codebook of k codewords of width d, re-laid as ceil(k/TC) panels of (d, TC) floats, with
// -||c||^2 / 2 per codeword (padding gets -inf so it never wins). The nearest codeword is the
// one of largest score r.c - ||c||^2 / 2: the same argmin as ||r - c||^2, one op cheaper.
struct Panels {
  int64_t k = 0, d = 0, n_panels = 0;
  std::vector<float> data, bias;

  Panels(const float* codebook, int64_t k_, int64_t d_) : k(k_), d(d_) {
    n_panels = (k + TC - 1) / TC;
    data.assign(n_panels * d * TC, 0.0f);
    bias.assign(n_panels * TC, -std::numeric_limits<float>::infinity());
    for (int64_t c = 0; c < k; ++c) {
      const float* row = codebook + c * d;
      float* panel = data.data() + (c / TC) * d * TC + (c % TC);
      float norm = 0.0f;
      for (int64_t j = 0; j < d; ++j) {
        panel[j * TC] = row[j];
        norm += row[j] * row[j];
      }
      bias[c] = -0.5f * norm;
    }
  }
  const float* panel(int64_t p) const { return data.data() + p * d * TC; }
  // ||c||^2 of code c, recovered from the bias.
  float norm(int64_t c) const { return -2.0f * bias[c]; }
};

// One panel set per RQ level.
std::vector<Panels> level_panels(const float* codebooks, int64_t levels, int64_t k,
                                 int64_t d) {
  std::vector<Panels> panels;
  panels.reserve(levels);
  for (int64_t l = 0; l < levels; ++l) panels.emplace_back(codebooks + l * k * d, k, d);
  return panels;
}

// No more beams than encodings exist (k^levels): the beam buffers scale with the width.
int64_t useful_beam_width(int64_t beam_width, int64_t levels, int64_t k) {
  int64_t encodings = 1;
  for (int64_t l = 0; l < levels && encodings < beam_width; ++l) encodings *= k;
  return std::min(beam_width, encodings);
}

// acc[r] = bias + rows[r] . panel columns, for TR rows with leading dimension ld. FIXED_D > 0
// fixes the width at compile time, so short PQ sub-vectors run fully unrolled.
template <int FIXED_D>
inline void score_tile(const float* rows, int64_t ld, const float* panel, int64_t d,
                       const float* bias, vtf acc[TR][2]) {
  const vtf b0 = loadv(bias), b1 = loadv(bias + VW);
  for (int r = 0; r < TR; ++r) {
    acc[r][0] = b0;
    acc[r][1] = b1;
  }
  const int64_t width = FIXED_D > 0 ? FIXED_D : d;
  for (int64_t j = 0; j < width; ++j) {
    const vtf p0 = loadv(panel + j * TC), p1 = loadv(panel + j * TC + VW);
    for (int r = 0; r < TR; ++r) {
      const vtf xv = splatv(rows[r * ld + j]);
      acc[r][0] += xv * p0;
      acc[r][1] += xv * p1;
    }
  }
}

// Running argmax of TR rows kept as TC lanes each; lane c of panel p is code p*TC + c.
struct TileArgmax {
  vtf best[TR][2];
  vti index[TR][2];

  void reset() {
    const vtf lowest = splatv(-std::numeric_limits<float>::infinity());
    for (int r = 0; r < TR; ++r)
      for (int h = 0; h < 2; ++h) {
        best[r][h] = lowest;
        index[r][h] = vti{};
      }
  }
  void update(const vtf acc[TR][2], int32_t first_code) {
    const vti c0 = lane_ids() + first_code, c1 = lane_ids() + (first_code + VW);
    for (int r = 0; r < TR; ++r) {
      // Strict '>': an earlier (smaller) code keeps a tie.
      const vti m0 = acc[r][0] > best[r][0], m1 = acc[r][1] > best[r][1];
      best[r][0] = m0 ? acc[r][0] : best[r][0];
      best[r][1] = m1 ? acc[r][1] : best[r][1];
      index[r][0] = m0 ? c0 : index[r][0];
      index[r][1] = m1 ? c1 : index[r][1];
    }
  }
  // Largest score of row r across its TC lanes; ties to the smaller code.
  int32_t result(int r) const {
    const vtf b0 = best[r][0], b1 = best[r][1];
    const vtf top = splatv(hmax(b0 > b1 ? b0 : b1));
    const vti none = splatv_i(std::numeric_limits<int32_t>::max());
    const vti i0 = b0 == top ? index[r][0] : none, i1 = b1 == top ? index[r][1] : none;
    return hmin(i0 < i1 ? i0 : i1);
  }
};

// Nearest codeword of each of `count` rows (a multiple of TR, <= ROW_BLOCK, stride ld).
template <int FIXED_D>
void nearest_codes_fixed(const float* rows, int64_t count, int64_t ld, const Panels& cb,
                         int32_t* out) {
  TileArgmax argmax[ROW_BLOCK / TR];
  for (int64_t t = 0; t < count / TR; ++t) argmax[t].reset();
  vtf acc[TR][2];
  for (int64_t p = 0; p < cb.n_panels; ++p) {
    const float* panel = cb.panel(p);
    const float* bias = cb.bias.data() + p * TC;
    for (int64_t t = 0; t < count / TR; ++t) {
      score_tile<FIXED_D>(rows + t * TR * ld, ld, panel, cb.d, bias, acc);
      argmax[t].update(acc, int32_t(p * TC));
    }
  }
  for (int64_t t = 0; t < count / TR; ++t)
    for (int r = 0; r < TR; ++r) out[t * TR + r] = argmax[t].result(r);
}

// Index of the largest of `count` scores (a multiple of 8); ties to the smaller index.
inline int32_t argmax_scores(const float* scores, int64_t count) {
  v8f top = load8(scores);
  for (int64_t c = 8; c < count; c += 8) {
    const v8f s = load8(scores + c);
    top = s > top ? s : top;
  }
  const float best = lane_max(top)[0];
  for (int64_t c = 0; c < count; c += 8) {
#ifdef __AVX2__
    const __m256 hit = _mm256_cmp_ps(_mm256_loadu_ps(scores + c), _mm256_set1_ps(best), _CMP_EQ_OQ);
    const int mask = _mm256_movemask_ps(hit);
    if (mask) return int32_t(c + __builtin_ctz(mask));
#else
    for (int l = 0; l < 8; ++l)
      if (scores[c + l] == best) return int32_t(c + l);
#endif
  }
  return 0;
}

// Short sub-vectors (PQ): so few multiply-adds per score that keeping a running argmax in
// memory would cost more than the scores. Each tile instead writes its scores for all codes
// to an L1-resident buffer (`scores`, TR * n_panels * TC floats), then one max pass and one
// find pass pick the code.
template <int FIXED_D>
void nearest_codes_short(const float* rows, int64_t count, int64_t ld, const Panels& cb,
                         float* scores, int32_t* out) {
  const int64_t kp = cb.n_panels * TC;
  vtf acc[TR][2];
  for (int64_t t = 0; t < count / TR; ++t) {
    for (int64_t p = 0; p < cb.n_panels; ++p) {
      score_tile<FIXED_D>(rows + t * TR * ld, ld, cb.panel(p), cb.d, cb.bias.data() + p * TC,
                          acc);
      for (int r = 0; r < TR; ++r) {
        storev(&scores[r * kp + p * TC], acc[r][0]);
        storev(&scores[r * kp + p * TC + VW], acc[r][1]);
      }
    }
    for (int r = 0; r < TR; ++r) out[t * TR + r] = argmax_scores(&scores[r * kp], kp);
  }
}

// Floats of scratch that nearest_codes needs for a codebook of k codewords.
int64_t nearest_scratch(int64_t k) { return TR * ((k + TC - 1) / TC * TC); }

void nearest_codes(const float* rows, int64_t count, int64_t ld, const Panels& cb,
                   float* scratch, int32_t* out) {
  switch (cb.d) {
    case 1: return nearest_codes_short<1>(rows, count, ld, cb, scratch, out);
    case 2: return nearest_codes_short<2>(rows, count, ld, cb, scratch, out);
    case 4: return nearest_codes_short<4>(rows, count, ld, cb, scratch, out);
    case 8: return nearest_codes_short<8>(rows, count, ld, cb, scratch, out);
    case 16: return nearest_codes_short<16>(rows, count, ld, cb, scratch, out);
    default:
      return cb.d < 16 ? nearest_codes_short<0>(rows, count, ld, cb, scratch, out)
                       : nearest_codes_fixed<0>(rows, count, ld, cb, out);
  }
}

// Copies `rows` rows of x into buf, zero-padded to a whole number of TR-row tiles; returns
// the padded count.
int64_t load_rows(const float* x, int64_t rows, int64_t d, float* buf) {
  const int64_t padded = (rows + TR - 1) / TR * TR;
  std::memcpy(buf, x, sizeof(float) * rows * d);
  std::fill(buf + rows * d, buf + padded * d, 0.0f);
  return padded;
}

// PQ sub-vectors of 1-8 dims: eight rows ride in the vector lanes and the codewords stream
// past one at a time, each costing DS multiply-adds and a compare-and-select per row group.
// The running argmax stays in registers; GROUPS independent row groups times CODES codewords
// scored side by side hide the latency of the multiply-add and compare-select chains. Strict
// '>' and codes compared in order keep the smaller code on a tie.
template <int DS, int GROUPS, int CODES>
void nearest_codes_lanes(const float* rows, int64_t count, int64_t ld, const float* codebook,
                         const Panels& cb, int32_t* out) {
  for (int64_t r0 = 0; r0 < count; r0 += 8 * GROUPS) {
    v8f xt[GROUPS][DS], best[GROUPS];
    v8i index[GROUPS];
    for (int g = 0; g < GROUPS; ++g) {
      const float* base = rows + (r0 + 8 * g) * ld;
      for (int j = 0; j < DS; ++j)
        xt[g][j] = v8f{base[j], base[ld + j], base[2 * ld + j], base[3 * ld + j],
                       base[4 * ld + j], base[5 * ld + j], base[6 * ld + j], base[7 * ld + j]};
      best[g] = splat(-std::numeric_limits<float>::infinity());
      index[g] = v8i{};
    }
    const auto score_codes = [&](int64_t c0, auto n_codes) {
      constexpr int U = decltype(n_codes)::value;
      v8f score[U][GROUPS];
      for (int u = 0; u < U; ++u)
        for (int g = 0; g < GROUPS; ++g) score[u][g] = splat(cb.bias[c0 + u]);
      for (int j = 0; j < DS; ++j)
        for (int u = 0; u < U; ++u) {
          const v8f wj = splat(codebook[(c0 + u) * DS + j]);
          for (int g = 0; g < GROUPS; ++g) score[u][g] += xt[g][j] * wj;
        }
      for (int u = 0; u < U; ++u) {
        const v8i code = splat_i(int32_t(c0 + u));
        for (int g = 0; g < GROUPS; ++g) {
          const v8i better = score[u][g] > best[g];
          best[g] = better ? score[u][g] : best[g];
          index[g] = better ? code : index[g];
        }
      }
    };
    int64_t c = 0;
    for (; c + CODES <= cb.k; c += CODES) score_codes(c, std::integral_constant<int, CODES>{});
    for (; c < cb.k; ++c) score_codes(c, std::integral_constant<int, 1>{});
    for (int g = 0; g < GROUPS; ++g)
      for (int l = 0; l < 8; ++l) out[r0 + 8 * g + l] = index[g][l];
  }
}

// Nearest codeword per row for PQ: the lane kernel for 1-8 dims (count a multiple of 16
// and of TR).
void nearest_codes_pq(const float* rows, int64_t count, int64_t ld, const float* codebook,
                      const Panels& cb, float* scratch, int32_t* out) {
  switch (cb.d) {
    case 1: return nearest_codes_lanes<1, 2, 2>(rows, count, ld, codebook, cb, out);
    case 2: return nearest_codes_lanes<2, 2, 2>(rows, count, ld, codebook, cb, out);
    case 4: return nearest_codes_lanes<4, 2, 1>(rows, count, ld, codebook, cb, out);
    case 8: return nearest_codes_lanes<8, 1, 4>(rows, count, ld, codebook, cb, out);
    default: return nearest_codes(rows, count, ld, cb, scratch, out);
  }
}

float squared_norm(const float* v, int64_t d) {
  float s = 0.0f;
  for (int64_t j = 0; j < d; ++j) s += v[j] * v[j];
  return s;
}

int rq_encode_greedy(const float* x, int64_t n, int64_t d, const float* codebooks,
                     int64_t levels, int64_t k, int64_t* codes, float* quantized,
                     float* errors, int n_threads) {
  std::vector<Panels> panels = level_panels(codebooks, levels, k, d);
  const int64_t n_blocks = (n + ROW_BLOCK - 1) / ROW_BLOCK;
  // Every thread's buffers (residuals, sums, scratch) allocated before the region.
  const int64_t per_thread = 2 * ROW_BLOCK * d + nearest_scratch(k);
  std::vector<float> buffers(size_t(n_threads) * size_t(per_thread));

#pragma omp parallel num_threads(n_threads)
  {
    float* residual = buffers.data() + int64_t(omp_get_thread_num()) * per_thread;
    float* sum = residual + ROW_BLOCK * d;
    float* scratch = sum + ROW_BLOCK * d;
    int32_t best[ROW_BLOCK];
#pragma omp for schedule(dynamic, 4)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t row0 = b * ROW_BLOCK, rows = std::min(ROW_BLOCK, n - row0);
      const int64_t padded = load_rows(x + row0 * d, rows, d, residual);
      std::fill(sum, sum + rows * d, 0.0f);
      for (int64_t l = 0; l < levels; ++l) {
        nearest_codes(residual, padded, d, panels[l], scratch, best);
        const float* cb = codebooks + l * k * d;
        for (int64_t r = 0; r < rows; ++r) {
          const float* c = cb + int64_t(best[r]) * d;
          float* res = residual + r * d;
          float* acc = sum + r * d;
          for (int64_t j = 0; j < d; ++j) {
            res[j] -= c[j];
            acc[j] += c[j];
          }
          codes[(row0 + r) * levels + l] = best[r];
          if (errors) errors[(row0 + r) * levels + l] = squared_norm(res, d);
        }
      }
      if (quantized) std::memcpy(quantized + row0 * d, sum, sizeof(float) * rows * d);
    }
  }
  return kOk;
}

// A beam candidate is one key, (order_word(error) << 32) | (beam * kp + code): the smaller
// key is the smaller error, ties toward the earlier (beam, code) pair.
using Candidates = TopK<uint64_t, std::less<uint64_t>>;

// Offers the candidates of one row, `beams` runs of kp scores (the first k of each real), in
// (beam, code) order; most lose to the worst kept one at the first compare. A function of its
// own so that the scan keeps its few values in registers.
void best_candidates(const float* scores, int64_t beams, int64_t k, int64_t kp,
                     Candidates& best) {
  // The worst kept error once the list is full; NaN (no compare holds) until then.
  float worst = __builtin_nanf("");
  const auto offer = [&](int64_t b, int64_t c, float v) {
    // Worse in float, or equal and later in the scan: worse in key order too.
    if (v >= worst) return;
    best.offer((uint64_t(order_word(v)) << 32) | uint64_t(b * kp + c));
    if (best.full()) worst = scores[best.worst() & 0xFFFFFFFFu];
  };
  const int64_t k8 = k / 8 * 8;
  for (int64_t b = 0; b < beams; ++b) {
    const float* run = scores + b * kp;
    // Eight at a time: once the list is full, most chunks hold no candidate that beats it.
    for (int64_t c = 0; c < k8; c += 8) {
      const v8f v = load8(run + c);
      if (!any_lane(~(v >= splat(worst)))) continue;
      for (int lane = 0; lane < 8; ++lane) offer(b, c + lane, run[c + lane]);
    }
    for (int64_t c = k8; c < k; ++c) offer(b, c, run[c]);
  }
}

// One thread's buffers of the beam search: beams of a group of rows (slot r * beams + b holds
// beam b of row r), their candidate scores, and the kept candidates of a row.
struct BeamBuffers {
  std::vector<float> res, next, cand, err, next_err, errs_hist, next_errs_hist;
  std::vector<int32_t> hist, next_hist;
  Candidates best;

  BeamBuffers(int64_t slot_rows, int64_t d, int64_t kp, int64_t levels, int64_t beam_width)
      : res(slot_rows * d), next(slot_rows * d), cand(slot_rows * kp), err(slot_rows),
        next_err(slot_rows), errs_hist(slot_rows * levels), next_errs_hist(slot_rows * levels),
        hist(slot_rows * levels), next_hist(slot_rows * levels) {
    best.reserve(beam_width);
  }
};

// Beam search: per row, the `beam_width` partial encodings of smallest total squared error.
// Rows go in groups whose beams are scored together, so each codebook panel is read once per
// group rather than once per row.
int rq_encode_beam(const float* x, int64_t n, int64_t d, const float* codebooks,
                   int64_t levels, int64_t k, int64_t beam_width, int64_t* codes,
                   float* quantized, float* errors, int n_threads) {
  std::vector<Panels> panels = level_panels(codebooks, levels, k, d);
  const int64_t kp = panels[0].n_panels * TC;
  beam_width = useful_beam_width(beam_width, levels, k);
  // About 64 beams per group, and the candidate scores within ~4 MB.
  const int64_t group = std::max<int64_t>(
      1, std::min<int64_t>(64 / beam_width, (int64_t(1) << 20) / (beam_width * kp)));
  const int64_t slot_rows = (group * beam_width + TR - 1) / TR * TR;
  const int64_t n_groups = (n + group - 1) / group;
  n_threads = int(std::min<int64_t>(n_threads, n_groups));
  // Every thread's buffers allocated here: a failure throws before the region.
  std::vector<BeamBuffers> buffers;
  buffers.reserve(n_threads);
  for (int t = 0; t < n_threads; ++t) buffers.emplace_back(slot_rows, d, kp, levels, beam_width);

#pragma omp parallel num_threads(n_threads)
  {
    BeamBuffers& buf = buffers[omp_get_thread_num()];
    std::vector<float>& res = buf.res;
    std::vector<float>& next = buf.next;
    std::vector<float>& cand = buf.cand;
    std::vector<float>& err = buf.err;
    std::vector<float>& next_err = buf.next_err;
    std::vector<float>& errs_hist = buf.errs_hist;
    std::vector<float>& next_errs_hist = buf.next_errs_hist;
    std::vector<int32_t>& hist = buf.hist;
    std::vector<int32_t>& next_hist = buf.next_hist;
    vtf acc[TR][2];
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < n_groups; ++g) {
      const int64_t row0 = g * group, rows = std::min(group, n - row0);
      std::fill(res.begin(), res.end(), 0.0f);  // slots past the last row stay finite
      std::memcpy(res.data(), x + row0 * d, sizeof(float) * rows * d);
      for (int64_t r = 0; r < rows; ++r) err[r] = squared_norm(res.data() + r * d, d);
      int64_t beams = 1;
      for (int64_t l = 0; l < levels; ++l) {
        const Panels& cb = panels[l];
        const int64_t slots = rows * beams, tiles = (slots + TR - 1) / TR;
        for (int64_t p = 0; p < cb.n_panels; ++p)
          for (int64_t t = 0; t < tiles; ++t) {
            score_tile<0>(res.data() + t * TR * d, d, cb.panel(p), d, cb.bias.data() + p * TC,
                          acc);
            // ||r - c||^2 = ||r||^2 - 2 (r.c - ||c||^2 / 2)
            for (int r = 0; r < TR && t * TR + r < slots; ++r) {
              float* out = cand.data() + (t * TR + r) * kp + p * TC;
              const vtf e = splatv(err[t * TR + r]);
              storev(out, e - 2.0f * acc[r][0]);
              storev(out + VW, e - 2.0f * acc[r][1]);
            }
          }
        const int64_t keep = std::min<int64_t>(beam_width, beams * k);
        const float* cbl = codebooks + l * k * d;
        for (int64_t r = 0; r < rows; ++r) {
          buf.best.clear(keep);
          best_candidates(cand.data() + r * beams * kp, beams, k, kp, buf.best);
          const float* row_cand = cand.data() + r * beams * kp;
          const std::vector<uint64_t>& kept = buf.best.sorted();
          for (int64_t j = 0; j < keep; ++j) {
            const int64_t pair = int64_t(kept[j] & 0xFFFFFFFFu);
            const int64_t parent = r * beams + pair / kp, code = pair % kp;
            const int64_t slot = r * keep + j;
            const float* src = res.data() + parent * d;
            const float* c = cbl + code * d;
            float* dst = next.data() + slot * d;
            for (int64_t e = 0; e < d; ++e) dst[e] = src[e] - c[e];
            next_err[slot] = row_cand[pair];
            std::copy_n(hist.begin() + parent * levels, l, next_hist.begin() + slot * levels);
            std::copy_n(errs_hist.begin() + parent * levels, l,
                        next_errs_hist.begin() + slot * levels);
            next_hist[slot * levels + l] = int32_t(code);
            next_errs_hist[slot * levels + l] = squared_norm(dst, d);
          }
        }
        std::swap(res, next);
        std::swap(err, next_err);
        std::swap(hist, next_hist);
        std::swap(errs_hist, next_errs_hist);
        beams = keep;
      }
      for (int64_t r = 0; r < rows; ++r) {  // the best beam of row r is its first slot
        const int64_t i = row0 + r, best = r * beams;
        for (int64_t l = 0; l < levels; ++l) {
          codes[i * levels + l] = hist[best * levels + l];
          if (errors) errors[i * levels + l] = errs_hist[best * levels + l];
        }
        if (quantized)
          for (int64_t e = 0; e < d; ++e) quantized[i * d + e] = x[i * d + e] - res[best * d + e];
      }
    }
  }
  return kOk;
}

// Beam search from look-up tables (the cross-product tables of faiss's use_beam_LUT). With
// r = x - sum_{m<l} C_m[h_m] the residual of a beam whose codes so far are h,
//   ||r - c||^2 = ||r||^2 + (||c||^2 - 2 x.c) + 2 sum_{m<l} C_m[h_m].c,
// and ||r||^2 is the error the beam was kept with. So x.c for the codewords of every level is
// one register-blocked pass per row (what greedy encoding costs), the codeword products
// C_m . C_l are tables computed once, and a candidate costs l table reads instead of d
// multiply-adds: no residual is ever formed. Scalings by 2 and -2 are exact, so the tables
// hold 2 C_m.C_l and the scores ||c||^2 - 2 x.c. Candidates are ranked as in rq_encode_beam.
struct CrossTables {
  int64_t levels = 0, kp = 0;
  std::vector<float> data;  // pair (m, l), m < l: (kp, kp) at pair_offset, row = code of m

  int64_t pair_offset(int64_t m, int64_t l) const { return (l * (l - 1) / 2 + m) * kp * kp; }
  const float* row(int64_t m, int64_t l, int64_t code) const {
    return data.data() + pair_offset(m, l) + code * kp;
  }
};

// Floats the tables of `levels` codebooks of k codewords take.
int64_t cross_table_floats(int64_t levels, int64_t k) {
  const int64_t kp = (k + TC - 1) / TC * TC;
  return levels * (levels - 1) / 2 * kp * kp;
}

void fill_cross_tables(const float* codebooks, int64_t levels, int64_t k, int64_t d,
                       const std::vector<Panels>& panels, CrossTables& t, int n_threads) {
  t.levels = levels;
  t.kp = panels[0].n_panels * TC;
  t.data.assign(cross_table_floats(levels, k), 0.0f);
  const int64_t tiles = (k + TR - 1) / TR;
  const std::vector<float> zero(TC, 0.0f);
  // Codebooks zero-padded to whole tiles of rows, so every tile reads real memory.
  std::vector<float> padded(levels * tiles * TR * d, 0.0f);
  for (int64_t m = 0; m < levels; ++m)
    std::memcpy(padded.data() + m * tiles * TR * d, codebooks + m * k * d, sizeof(float) * k * d);
  const int64_t pairs = levels * (levels - 1) / 2;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) collapse(2)
  for (int64_t pair = 0; pair < pairs; ++pair)
    for (int64_t p = 0; p < t.kp / TC; ++p) {
      int64_t l = 1;
      while (l * (l + 1) / 2 <= pair) ++l;
      const int64_t m = pair - l * (l - 1) / 2;
      vtf acc[TR][2];
      float* table = t.data.data() + t.pair_offset(m, l);
      for (int64_t tile = 0; tile < tiles; ++tile) {
        score_tile<0>(padded.data() + (m * tiles + tile) * TR * d, d, panels[l].panel(p), d,
                      zero.data(), acc);
        for (int r = 0; r < TR && tile * TR + r < k; ++r) {
          float* out = table + (tile * TR + r) * t.kp + p * TC;
          storev(out, 2.0f * acc[r][0]);
          storev(out + VW, 2.0f * acc[r][1]);
        }
      }
    }
}

// One thread's buffers of the table beam search.
struct LutBuffers {
  std::vector<float> rows, scores, cand, low_heap, err, next_err, errs_hist, next_errs_hist;
  std::vector<int32_t> hist, next_hist;
  Candidates best;

  LutBuffers(int64_t d, int64_t levels, int64_t kp, int64_t beam_width)
      : rows(ROW_BLOCK * d), scores(ROW_BLOCK * levels * kp), cand(beam_width * kp),
        low_heap(beam_width),
        err(beam_width), next_err(beam_width), errs_hist(beam_width * levels),
        next_errs_hist(beam_width * levels), hist(beam_width * levels),
        next_hist(beam_width * levels) {
    best.reserve(beam_width);
  }
};

// Replaces the largest of a max-heap of n floats (none NaN) by a smaller x: one pass down.
inline void heap_replace_top(float* heap, int64_t n, float x) {
  int64_t i = 0;
  for (int64_t c = 1; c < n; c = 2 * i + 1) {
    c += c + 1 < n && heap[c + 1] > heap[c];
    if (!(heap[c] > x)) break;
    heap[i] = heap[c];
    i = c;
  }
  heap[i] = x;
}

// Scores the k candidates of each of `beams` beams at level l (error + scores s + the l table
// rows of the beam's codes) into buf.cand, then offers buf.best only those that can be kept.
// A running threshold (best_candidates) mispredicts a branch on most of its early offers;
// here the first pass also takes the minimum of each group (one lane of a run of chunks of
// one beam): `keep` groups whose minimum is at most t hold `keep` candidates at most t, so the
// keep-th smallest group minimum bounds the worst kept candidate, and the second pass offers
// only candidates at most that bound (NaN included: it ranks last, offered when the bound is
// +inf). The kept set is the same: TopK's result does not depend on what else was offered.
// The keep smallest minima are a max-heap that most groups' minima (a whole beam's, once the
// better beams have been seen) skip with one compare. FIXED is l when known at compile time
// (-1: not).
template <int FIXED>
void lut_candidates(const float* s, const CrossTables& tables, int64_t l, int64_t levels,
                    int64_t beams, int64_t k, int64_t keep, LutBuffers& buf) {
  const int64_t kp = tables.kp, chunks = kp / VW;
  const int64_t depth = FIXED >= 0 ? FIXED : l;
  // Groups per beam: enough for twice `keep` groups in all, at most one chunk each.
  int64_t segments = 1;
  while (segments < chunks && beams * VW * segments < 2 * keep) segments *= 2;
  const int64_t per_segment = (chunks + segments - 1) / segments;
  float* heap = buf.low_heap.data();  // heap[0]: the largest of the keep smallest minima
  std::fill(heap, heap + keep, std::numeric_limits<float>::infinity());
  for (int64_t b = 0; b < beams; ++b) {
    const float* rows_of[64];  // the table row of each earlier level (levels <= 64)
    for (int64_t m = 0; m < depth; ++m) rows_of[m] = tables.row(m, l, buf.hist[b * levels + m]);
    const vtf e = splatv(buf.err[b]);
    float* out = buf.cand.data() + b * kp;
    for (int64_t c0 = 0; c0 < chunks; c0 += per_segment) {
      vtf low = splatv(std::numeric_limits<float>::infinity());
      for (int64_t c = VW * c0; c < VW * std::min(chunks, c0 + per_segment); c += VW) {
        vtf v = e + loadv(s + c);
        for (int64_t m = 0; m < depth; ++m) v += loadv(rows_of[m] + c);
        storev(out + c, v);
        low = v < low ? v : low;  // NaN never replaces; padding lanes hold +inf
      }
      // The lanes below the heap's largest, lowest first (the largest falls as they enter).
      for (uint32_t m = lanes_less(low, splatv(heap[0])); m; m &= m - 1) {
        const float v = low[__builtin_ctz(m)];
        if (v < heap[0]) heap_replace_top(heap, keep, v);
      }
    }
  }
  const vtf bound_v = splatv(heap[0]);
  for (int64_t b = 0; b < beams; ++b) {
    const float* run = buf.cand.data() + b * kp;
    for (int64_t c = 0; c < kp; c += VW) {
      uint32_t m = lanes_not_greater(loadv(run + c), bound_v);
      if (k - c < VW) m &= (uint32_t(1) << std::max<int64_t>(k - c, 0)) - 1;  // codes >= k
      for (; m; m &= m - 1) {
        const int64_t code = c + __builtin_ctz(m);
        buf.best.offer((uint64_t(order_word(run[code])) << 32) | uint64_t(b * kp + code));
      }
    }
  }
}

int rq_encode_beam_lut(const float* x, int64_t n, int64_t d, const float* codebooks,
                       int64_t levels, int64_t k, int64_t beam_width, int64_t* codes,
                       float* quantized, float* errors, int n_threads) {
  std::vector<Panels> panels = level_panels(codebooks, levels, k, d);
  const int64_t kp = panels[0].n_panels * TC;
  beam_width = useful_beam_width(beam_width, levels, k);
  CrossTables tables;
  fill_cross_tables(codebooks, levels, k, d, panels, tables, n_threads);
  const int64_t n_blocks = (n + ROW_BLOCK - 1) / ROW_BLOCK;
  n_threads = int(std::min<int64_t>(n_threads, n_blocks));
  std::vector<LutBuffers> buffers;  // allocated here: a failure throws before the region
  buffers.reserve(n_threads);
  for (int t = 0; t < n_threads; ++t) buffers.emplace_back(d, levels, kp, beam_width);

#pragma omp parallel num_threads(n_threads)
  {
    LutBuffers& buf = buffers[omp_get_thread_num()];
    vtf acc[TR][2];
#pragma omp for schedule(dynamic, 1)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t row0 = blk * ROW_BLOCK, count = std::min(ROW_BLOCK, n - row0);
      const int64_t tiles = load_rows(x + row0 * d, count, d, buf.rows.data()) / TR;
      // scores[r][l][c] = ||c||^2 - 2 x_r.c (= -2 times the tile's r.c - ||c||^2 / 2).
      for (int64_t l = 0; l < levels; ++l)
        for (int64_t p = 0; p < panels[l].n_panels; ++p)
          for (int64_t t = 0; t < tiles; ++t) {
            score_tile<0>(buf.rows.data() + t * TR * d, d, panels[l].panel(p), d,
                          panels[l].bias.data() + p * TC, acc);
            for (int r = 0; r < TR && t * TR + r < count; ++r) {
              float* out = buf.scores.data() + ((t * TR + r) * levels + l) * kp + p * TC;
              storev(out, -2.0f * acc[r][0]);
              storev(out + VW, -2.0f * acc[r][1]);
            }
          }
      for (int64_t r = 0; r < count; ++r) {
        const int64_t i = row0 + r;
        buf.err[0] = squared_norm(x + i * d, d);
        int64_t beams = 1;
        for (int64_t l = 0; l < levels; ++l) {
          const int64_t keep = std::min<int64_t>(beam_width, beams * k);
          buf.best.clear(keep);
          const float* s = buf.scores.data() + (r * levels + l) * kp;
          switch (l) {  // the table rows summed per candidate, unrolled for shallow levels
            case 0: lut_candidates<0>(s, tables, l, levels, beams, k, keep, buf); break;
            case 1: lut_candidates<1>(s, tables, l, levels, beams, k, keep, buf); break;
            case 2: lut_candidates<2>(s, tables, l, levels, beams, k, keep, buf); break;
            case 3: lut_candidates<3>(s, tables, l, levels, beams, k, keep, buf); break;
            default: lut_candidates<-1>(s, tables, l, levels, beams, k, keep, buf); break;
          }
          const std::vector<uint64_t>& kept = buf.best.sorted();
          for (int64_t j = 0; j < keep; ++j) {
            const int64_t pair = int64_t(kept[j] & 0xFFFFFFFFu);
            const int64_t parent = pair / kp, code = pair % kp;
            std::copy_n(buf.hist.begin() + parent * levels, l, buf.next_hist.begin() + j * levels);
            std::copy_n(buf.errs_hist.begin() + parent * levels, l,
                        buf.next_errs_hist.begin() + j * levels);
            buf.next_hist[j * levels + l] = int32_t(code);
            buf.next_err[j] = buf.cand[pair];
            buf.next_errs_hist[j * levels + l] = buf.cand[pair];
          }
          std::swap(buf.err, buf.next_err);
          std::swap(buf.hist, buf.next_hist);
          std::swap(buf.errs_hist, buf.next_errs_hist);
          beams = keep;
        }
        for (int64_t l = 0; l < levels; ++l) {  // the best beam is the first
          codes[i * levels + l] = buf.hist[l];
          if (errors) errors[i * levels + l] = std::max(0.0f, buf.errs_hist[l]);
        }
        if (quantized) {
          float* q = quantized + i * d;
          std::fill(q, q + d, 0.0f);
          for (int64_t l = 0; l < levels; ++l) {
            const float* c = codebooks + (l * k + buf.hist[l]) * d;
            for (int64_t e = 0; e < d; ++e) q[e] += c[e];
          }
        }
      }
    }
  }
  return kOk;
}

// Balanced assignment by Sinkhorn-Knopp (LC-Rec / LETTER / DIGER's vq.py): the (n, k) float32
// squared distances are centred on the batch, (d - middle) / amplitude with middle the mean
// of their global max and min and amplitude = max - middle + 1e-5 (in float32, as there),
// then in float64 Q = exp(-d / eps) is alternately normalised over rows and columns, and
// each row takes the argmax of Q after the last column normalisation. Q stays the kernel
// scaled by a row vector a and a column vector b, Q = diag(a) exp(-d / eps) diag(b), so an
// iteration is a = 1 / (kernel b), b = 1 / (kernel^T a): one pass over the kernel, each row
// read twice while it sits in L1. Constant factors (1/n, 1/k, each row's exp(-min / eps))
// and a rescaling of b to max 1 change neither Q's row argmax nor the next iterate's shape.
// The final Q is taken as (a_i kernel_ic) / column sum c, the published last normalisation:
// a column that one row dominates gives that row exactly 1 there, as it gives exactly 1/k in
// the published Q, so such ties go to the smaller code on both sides.
//
// On entry `kern` holds the float32 distances (as doubles); on exit the kernel. `partial`
// holds n_threads * k doubles, `a` n doubles and `b` 2 k doubles.
void sinkhorn_codes(double* kern, int64_t n, int64_t k, double eps, int64_t iters,
                    int64_t* codes, int n_threads, double* partial, double* a, double* b) {
  double* col_sum = b + k;
  float lo = std::numeric_limits<float>::infinity(), hi = -lo;
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(min : lo) \
    reduction(max : hi)
  for (int64_t e = 0; e < n * k; ++e) {
    const float v = float(kern[e]);
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const float middle = (hi + lo) / 2.0f;
  const float amplitude = hi - middle + 1e-5f;
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    double* row = kern + i * k;
    double row_min = std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < k; ++c) {
      row[c] = double((float(row[c]) - middle) / amplitude);
      row_min = std::min(row_min, row[c]);
    }
    for (int64_t c = 0; c < k; ++c) row[c] = std::exp((row_min - row[c]) / eps);
  }
  std::fill(b, b + k, 1.0);
  for (int64_t it = 0; it < iters; ++it) {
    std::fill(partial, partial + int64_t(n_threads) * k, 0.0);  // also of threads not started
#pragma omp parallel num_threads(n_threads)
    {
      double* col = partial + int64_t(omp_get_thread_num()) * k;
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        const double* row = kern + i * k;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t c = 0; c < k; ++c) s += row[c] * b[c];
        // Every row has a kernel entry of 1; s is 0 only where b underflowed there.
        const double ai = s > 0.0 ? 1.0 / s : 0.0;
        a[i] = ai;
#pragma omp simd
        for (int64_t c = 0; c < k; ++c) col[c] += ai * row[c];
      }
    }
    double top = 0.0;
    for (int64_t c = 0; c < k; ++c) {
      double sum = 0.0;
      for (int t = 0; t < n_threads; ++t) sum += partial[int64_t(t) * k + c];
      // A column no row reaches (its kernel underflowed everywhere) is never chosen.
      col_sum[c] = sum;
      b[c] = sum > 0.0 ? 1.0 / sum : 0.0;
      top = std::max(top, b[c]);
    }
    if (top > 0.0)
      for (int64_t c = 0; c < k; ++c) b[c] /= top;
  }
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double* row = kern + i * k;
    const auto q_of = [&](int64_t c) {
      if (iters == 0) return row[c];
      return col_sum[c] > 0.0 ? (a[i] * row[c]) / col_sum[c] : 0.0;
    };
    int64_t best = 0;
    double best_q = q_of(0);
    for (int64_t c = 1; c < k; ++c) {
      const double q = q_of(c);
      if (q > best_q) {  // ties keep the smaller code
        best_q = q;
        best = c;
      }
    }
    codes[i] = best;
  }
}

// Greedy RQ where level l assigns by Sinkhorn when eps[l] > 0 (nearest codeword otherwise).
// Levels run one after the other over all rows: a Sinkhorn level needs every row's distances.
int rq_encode_sk(const float* x, int64_t n, int64_t d, const float* codebooks, int64_t levels,
                 int64_t k, const double* eps, int64_t iters, int64_t* codes, float* quantized,
                 float* errors, int n_threads) {
  std::vector<Panels> panels;
  panels.reserve(levels);
  bool any_sk = false;
  for (int64_t l = 0; l < levels; ++l) {
    panels.emplace_back(codebooks + l * k * d, k, d);
    any_sk = any_sk || eps[l] > 0.0;
  }
  const int64_t n_blocks = (n + ROW_BLOCK - 1) / ROW_BLOCK;
  std::vector<float> residual(x, x + n * d);
  const int64_t per_thread = ROW_BLOCK * d + nearest_scratch(k);
  std::vector<float> blocks(size_t(n_threads) * size_t(per_thread));
  std::vector<int32_t> best(n);
  std::vector<double> kern(any_sk ? n * k : 0), partial(any_sk ? int64_t(n_threads) * k : 0);
  std::vector<double> a(any_sk ? n : 0), b(2 * k);
  std::vector<int64_t> sk_codes(any_sk ? n : 0);
  if (quantized) std::fill(quantized, quantized + n * d, 0.0f);

  for (int64_t l = 0; l < levels; ++l) {
    const Panels& cb = panels[l];
    const bool sk = eps[l] > 0.0;
#pragma omp parallel num_threads(n_threads)
    {
      float* buf = blocks.data() + int64_t(omp_get_thread_num()) * per_thread;
      float* scratch = buf + ROW_BLOCK * d;
      vtf acc[TR][2];
#pragma omp for schedule(dynamic, 4)
      for (int64_t blk = 0; blk < n_blocks; ++blk) {
        const int64_t row0 = blk * ROW_BLOCK, rows = std::min(ROW_BLOCK, n - row0);
        const int64_t padded = load_rows(residual.data() + row0 * d, rows, d, buf);
        if (!sk) {
          int32_t block_best[ROW_BLOCK];  // the padding rows get codes too
          nearest_codes(buf, padded, d, cb, scratch, block_best);
          std::copy_n(block_best, rows, best.data() + row0);
          continue;
        }
        // ||r - c||^2 = ||r||^2 - 2 (r.c - ||c||^2 / 2), in float32 like the published code.
        for (int64_t t = 0; t < padded / TR; ++t) {
          float norms[TR];
          for (int r = 0; r < TR; ++r) norms[r] = squared_norm(buf + (t * TR + r) * d, d);
          for (int64_t p = 0; p < cb.n_panels; ++p) {
            score_tile<0>(buf + t * TR * d, d, cb.panel(p), d, cb.bias.data() + p * TC, acc);
            for (int r = 0; r < TR && t * TR + r < rows; ++r) {
              double* out = kern.data() + (row0 + t * TR + r) * k;
              for (int h = 0; h < 2; ++h)
                for (int lane = 0; lane < VW; ++lane) {
                  const int64_t c = p * TC + h * VW + lane;
                  if (c < k) out[c] = double(norms[r] - 2.0f * acc[r][h][lane]);
                }
            }
          }
        }
      }
    }
    if (sk) {
      sinkhorn_codes(kern.data(), n, k, eps[l], iters, sk_codes.data(), n_threads,
                     partial.data(), a.data(), b.data());
      for (int64_t i = 0; i < n; ++i) best[i] = int32_t(sk_codes[i]);
    }
    const float* book = codebooks + l * k * d;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* c = book + int64_t(best[i]) * d;
      float* res = residual.data() + i * d;
      for (int64_t j = 0; j < d; ++j) res[j] -= c[j];
      if (quantized)
        for (int64_t j = 0; j < d; ++j) quantized[i * d + j] += c[j];
      codes[i * levels + l] = best[i];
      if (errors) errors[i * levels + l] = squared_norm(res, d);
    }
  }
  return kOk;
}

}  // namespace

int rq_encode_f32(const float* x, int64_t n, int64_t d, const float* codebooks, int64_t levels,
                  int64_t k, int64_t beam_width, const double* eps, int64_t sk_iters,
                  int64_t* codes, float* quantized, float* errors, int n_threads) {
  if (n < 0 || d <= 0 || levels <= 0 || k <= 0 || k > (int64_t(1) << 24) || beam_width <= 0 ||
      n_threads <= 0 || sk_iters < 0 || (eps && beam_width != 1))
    return kBadArgument;
  if (eps)
    for (int64_t l = 0; l < levels; ++l)
      if (!(eps[l] >= 0.0) || std::isinf(eps[l])) return kBadArgument;
  if (n == 0) return kOk;
  if (beam_width > kRqMaxBeamCandidates / k) return kBadArgument;
  if (beam_width == 1 && eps)
    return rq_encode_sk(x, n, d, codebooks, levels, k, eps, sk_iters, codes, quantized, errors,
                        n_threads);
  if (beam_width == 1)
    return rq_encode_greedy(x, n, d, codebooks, levels, k, codes, quantized, errors, n_threads);
  // Tables pay off once the rows outweigh them (n * beam_width candidates of k * d
  // multiply-adds saved per level, against k * k * d per table) and while they stay small.
  const bool lut = levels > 1 && levels <= 64 && cross_table_floats(levels, k) <= kMaxCrossTableFloats &&
                   n * (beam_width - 1) >= k * levels;
  if (lut)
    return rq_encode_beam_lut(x, n, d, codebooks, levels, k, beam_width, codes, quantized,
                              errors, n_threads);
  return rq_encode_beam(x, n, d, codebooks, levels, k, beam_width, codes, quantized, errors,
                        n_threads);
}

int sinkhorn_codes_f32(const float* dist, int64_t n, int64_t k, double eps, int64_t iters,
                       int64_t* codes, int n_threads) {
  if (n < 0 || k <= 0 || !(eps > 0.0) || std::isinf(eps) || iters < 0 || n_threads <= 0)
    return kBadArgument;
  if (n == 0) return kOk;
  std::vector<double> kern(dist, dist + n * k), partial(int64_t(n_threads) * k), a(n), b(2 * k);
  sinkhorn_codes(kern.data(), n, k, eps, iters, codes, n_threads, partial.data(), a.data(),
                 b.data());
  return kOk;
}

int pq_encode_f32(const float* x, int64_t n, int64_t d, const float* codebooks, int64_t m,
                  int64_t k, int64_t* codes, int n_threads) {
  if (n < 0 || m <= 0 || k <= 0 || k > (int64_t(1) << 24) || d % m != 0 || n_threads <= 0)
    return kBadArgument;
  if (n == 0) return kOk;
  const int64_t dsub = d / m;
  std::vector<Panels> panels;
  panels.reserve(m);
  for (int64_t s = 0; s < m; ++s) panels.emplace_back(codebooks + s * k * dsub, k, dsub);
  const int64_t n_blocks = (n + ROW_BLOCK - 1) / ROW_BLOCK;
  // Every thread's row block and scratch allocated before the region.
  const int64_t per_thread = ROW_BLOCK * d + nearest_scratch(k);
  std::vector<float> buffers(size_t(n_threads) * size_t(per_thread));

#pragma omp parallel num_threads(n_threads)
  {
    float* block = buffers.data() + int64_t(omp_get_thread_num()) * per_thread;
    float* scratch = block + ROW_BLOCK * d;
    int32_t best[ROW_BLOCK];
#pragma omp for schedule(dynamic, 4)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t row0 = b * ROW_BLOCK, rows = std::min(ROW_BLOCK, n - row0);
      load_rows(x + row0 * d, rows, d, block);
      // A short last block is zero-padded to a whole block: ROW_BLOCK is a multiple of both
      // the lane kernel's 16 rows and the panel kernel's TR.
      const int64_t padded = ROW_BLOCK;
      std::fill(block + rows * d, block + ROW_BLOCK * d, 0.0f);
      for (int64_t s = 0; s < m; ++s) {
        // Sub-vector s of each row: columns [s*dsub, (s+1)*dsub) with the full row stride.
        nearest_codes_pq(block + s * dsub, padded, d, codebooks + s * k * dsub, panels[s],
                         scratch, best);
        for (int64_t r = 0; r < rows; ++r) codes[(row0 + r) * m + s] = best[r];
      }
    }
  }
  return kOk;
}

int rq_quantize_bwd_f32(const float* x, int64_t n, int64_t d, const float* codebooks,
                        int64_t levels, int64_t k, const int64_t* codes,
                        const float* grad_quantized, float x_scale, float codebook_scale,
                        float* grad_x, float* grad_codebooks, int n_threads) {
  if (n < 0 || levels <= 0 || k <= 0 || d <= 0 || n_threads <= 0) return kBadArgument;
  for (int64_t e = 0; e < n * levels; ++e)
    if (codes[e] < 0 || codes[e] >= k) return kCodeOutOfRange;
  // Each thread sums its rows into its own codebook gradient; as many threads as keep those
  // copies within 256 MB.
  const int64_t book = levels * k * d;
  const int threads = int(std::max<int64_t>(
      1, std::min<int64_t>({n_threads, std::max<int64_t>(n, 1), (int64_t(64) << 20) / book})));
  std::vector<float> partial(threads * book, 0.0f);
  std::vector<float> residuals(size_t(threads) * size_t(d));  // allocated before the region
#pragma omp parallel num_threads(threads)
  {
    float* mine = partial.data() + omp_get_thread_num() * book;
    float* residual = residuals.data() + int64_t(omp_get_thread_num()) * d;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      std::copy(x + i * d, x + (i + 1) * d, residual);
      for (int64_t l = 0; l < levels; ++l) {
        const int64_t c = codes[i * levels + l];
        const float* e = codebooks + (l * k + c) * d;
        float* g = mine + (l * k + c) * d;
        for (int64_t j = 0; j < d; ++j) {
          residual[j] -= e[j];  // r_{l+1}
          g[j] += residual[j];
        }
        if (l == 0) {
          float* gx = grad_x + i * d;
          const float* gq = grad_quantized ? grad_quantized + i * d : nullptr;
          for (int64_t j = 0; j < d; ++j) gx[j] = -x_scale * residual[j] + (gq ? gq[j] : 0.0f);
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < book; ++j) {
      float sum = 0.0f;
      for (int t = 0; t < threads; ++t) sum += partial[t * book + j];
      grad_codebooks[j] = -codebook_scale * sum;
    }
  }
  return kOk;
}

namespace {

// pq_decode outputs at least this large are written into lines prefetched ahead.
constexpr int64_t kPrefetchBytes = int64_t(8) << 20;

// Asks for the cache line at p, to be written: prefetchw where the ISA has it (every AVX-512
// CPU does), elsewhere a read prefetch (which gets the line exclusive when no other core holds
// it). Never faults: a line of a page not yet mapped is dropped.
inline void prefetch_for_write(const void* p) {
#if defined(__AVX512F__)
  asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1, 3);
#endif
}

// The codes of a row lie in [0, k): one unsigned compare each (a negative code wraps past k),
// which vectorises.
inline bool row_in_range(const int64_t* c, int64_t groups, int64_t k) {
  uint64_t outside = 0;
  for (int64_t g = 0; g < groups; ++g) outside |= uint64_t(uint64_t(c[g]) >= uint64_t(k));
  return outside == 0;
}

// One row of rq_decode (its codes c) into o (d floats).
inline void rq_decode_row(const int64_t* c, int64_t levels, const float* codebooks, int64_t k,
                          int64_t d, float* o) {
  const int64_t d8 = d / 8 * 8;
  const float* w0 = codebooks + c[0] * d;
  // Chunks of 32 floats summed over the levels in registers, then written once.
  int64_t j = 0;
  for (; j + 32 <= d8; j += 32) {
    v8f a0 = load8(w0 + j), a1 = load8(w0 + j + 8), a2 = load8(w0 + j + 16),
        a3 = load8(w0 + j + 24);
    for (int64_t l = 1; l < levels; ++l) {
      const float* w = codebooks + (l * k + c[l]) * d + j;
      a0 += load8(w);
      a1 += load8(w + 8);
      a2 += load8(w + 16);
      a3 += load8(w + 24);
    }
    store8(o + j, a0);
    store8(o + j + 8, a1);
    store8(o + j + 16, a2);
    store8(o + j + 24, a3);
  }
  for (; j < d8; j += 8) {
    v8f a = load8(w0 + j);
    for (int64_t l = 1; l < levels; ++l) a += load8(codebooks + (l * k + c[l]) * d + j);
    store8(o + j, a);
  }
  for (; j < d; ++j) {
    float a = w0[j];
    for (int64_t l = 1; l < levels; ++l) a += codebooks[(l * k + c[l]) * d + j];
    o[j] = a;
  }
}

// One row of pq_decode (its codes c) into o (m * dsub floats).
inline void pq_decode_row(const int64_t* c, int64_t m, const float* codebooks, int64_t k,
                          int64_t dsub, float* o) {
  int64_t s = 0;
#ifdef __AVX512F__
  // 8-float sub-vectors in pairs: one 16-float store each.
  if (dsub == 8)
    for (; s + 2 <= m; s += 2) {
      const __m256 lo = _mm256_loadu_ps(codebooks + (s * k + c[s]) * 8);
      const __m256 hi = _mm256_loadu_ps(codebooks + ((s + 1) * k + c[s + 1]) * 8);
      _mm512_storeu_ps(o + s * 8, _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1));
    }
#endif
  for (; s < m; ++s) {
    const float* w = codebooks + (s * k + c[s]) * dsub;
    float* dst = o + s * dsub;
    if (dsub % 8 == 0)
      for (int64_t j = 0; j < dsub; j += 8) store8(dst + j, load8(w + j));
    else
      std::memcpy(dst, w, sizeof(float) * dsub);
  }
}

// Both decoders: n rows of `groups` codes to rows of `width` floats, decode_row(c, o) writing
// one. Rows are split statically across threads, so the pages of a fresh output are first
// touched (faulted in) by all threads at once (runs of rows taken dynamically measured
// slower). Stores go through the cache: streaming stores measured slower into fresh pages
// (the OS zeroes them through the cache) and, with both threads running, into a 100 MB out=
// too (it stayed in this machine's 480 MB L3 between calls; one thread alone gained from
// them). With `prefetch` (pq_decode, whose rows are codeword copies, so the stores set the
// pace) a large output's lines are prefetched for writing about 4 KB ahead: lines the OS has
// just zeroed come back from L2/L3 before the stores need them (~5% faster fresh); rq_decode's
// rows are sums over the levels, where it measured no gain. A row with an out-of-range code
// is written as zeros and the call returns kCodeOutOfRange.
template <typename DecodeRow>
int decode_rows(const int64_t* codes, int64_t n, int64_t groups, int64_t k, int64_t width,
                float* out, int n_threads, bool prefetch, const DecodeRow& decode_row) {
  const int64_t row_bytes = width * int64_t(sizeof(float));
  const bool prefetching = prefetch && n * row_bytes >= kPrefetchBytes;
  const int64_t ahead = prefetching ? std::max<int64_t>(1, 4096 / row_bytes) : 0;
  int bad = 0;
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) {
    const int64_t* c = codes + i * groups;
    float* o = out + i * width;
    if (ahead && i + ahead < n) {
      const char* next = reinterpret_cast<const char*>(out + (i + ahead) * width);
      for (int64_t b = 0; b < row_bytes; b += 64) prefetch_for_write(next + b);
    }
    if (row_in_range(c, groups, k)) {
      decode_row(c, o);
    } else {
      bad = 1;
      std::fill(o, o + width, 0.0f);
    }
  }
  return bad ? kCodeOutOfRange : kOk;
}

}  // namespace

int rq_decode_f32(const int64_t* codes, int64_t n, int64_t levels, const float* codebooks,
                  int64_t k, int64_t d, float* out, int n_threads) {
  if (n < 0 || levels <= 0 || k <= 0 || d <= 0 || n_threads <= 0) return kBadArgument;
  const auto row = [&](const int64_t* c, float* o) {
    rq_decode_row(c, levels, codebooks, k, d, o);
  };
  return decode_rows(codes, n, levels, k, d, out, n_threads, false, row);
}

int pq_decode_f32(const int64_t* codes, int64_t n, int64_t m, const float* codebooks, int64_t k,
                  int64_t dsub, float* out, int n_threads) {
  if (n < 0 || m <= 0 || k <= 0 || dsub <= 0 || n_threads <= 0) return kBadArgument;
  const auto row = [&](const int64_t* c, float* o) { pq_decode_row(c, m, codebooks, k, dsub, o); };
  return decode_rows(codes, n, m, k, m * dsub, out, n_threads, true, row);
}

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
