// CPU kernels of the longid family: holistic scoring of every catalog item with a fused
// top-k, so no (B, N) score matrix is ever written.
//
// Exact scans over the item codes, streaming each item's codes once:
// * several queries: the caller interleaves the lookup tables 8 queries wide, so one code
//   fetches one 8-float vector (8 queries) and a single add accumulates them: no gathers;
// * one query: scalar lookups, eight items in flight to hide the load latency.
// In the AVX-512 build on CPUs with VBMI, large catalogs of uint8 codes take the bounded scan
// instead (below): upper bounds from rounded tables for 64 items per instruction, exact scores
// only for the items that can still enter the top-k.
// Each thread keeps its own top-k per query over the item chunks it takes; the per-thread
// lists are merged at the end. Sums run over m in order, like the reference, so the scores
// agree bit for bit.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "semid_fast/longid.h"

#if defined(__AVX512BW__)
#include <immintrin.h>
#endif

namespace semid_fast {
namespace SEMID_FAST_ISA {
namespace {

constexpr int LANES = kHolisticQueryLanes;
constexpr int64_t ITEM_CHUNK = 1024;
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

struct Hit {
  float score;
  int64_t id;
};
// Higher score first, ties toward the smaller id.
inline bool better(const Hit& a, const Hit& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}
struct Better {
  bool operator()(const Hit& a, const Hit& b) const { return better(a, b); }
};
using Hits = TopK<Hit, Better>;

// The score an item must reach to enter (NaN never does: it fails every comparison).
inline float threshold(const Hits& h) { return h.full() ? h.worst().score : NEG_INF; }

// Reads codes as unsigned offsets. GUARD (every type but uint8 with K = 256) clamps a code
// outside [0, k) to 0, so nothing is read out of bounds, and remembers it in `bad`.
// Negative codes become huge unsigned values, so one comparison rejects both ends.
template <typename T, bool GUARD>
struct CodeReader {
  const T* codes;
  int64_t m;
  uint64_t k;
  bool bad = false;

  inline int64_t operator()(int64_t item, int64_t mm) {
    const uint64_t c = uint64_t(std::make_unsigned_t<T>(codes[item * m + mm]));
    if (!GUARD) return int64_t(c);
    const bool out = c >= k;
    bad |= out;
    return out ? 0 : int64_t(c);
  }
};

struct Problem {
  const float* table;
  int interleaved;
  int64_t b, m, k, n;
  const int64_t* candidates;
  int64_t c;
  const uint8_t* mask;
  int64_t mask_stride;
  float divisor;
  int64_t topk;
  const uint8_t* packed;  // the codes transposed by holistic_pack_codes, or nullptr
};

inline bool excluded(const Problem& p, int64_t query, int64_t item) {
  return p.mask && p.mask[query * p.mask_stride + item];
}

// Query `q`'s table entry for (position mm, code): base and stride depend on the layout.
inline const float* query_table(const Problem& p, int64_t q, int64_t& stride) {
  if (p.interleaved) {
    stride = LANES;
    return p.table + (q / LANES) * p.m * p.k * LANES + q % LANES;
  }
  stride = 1;
  return p.table + q * p.m * p.k;
}

template <typename Reader>
inline float score_one(const Problem& p, const float* tq, int64_t stride, Reader& code,
                       int64_t item) {
  float s = 0.0f;
  for (int64_t mm = 0; mm < p.m; ++mm) s += tq[(mm * p.k + code(item, mm)) * stride];
  return s / p.divisor;
}

// Items [lo, hi) against the 8 queries of group g (interleaved tables). A group's table is
// M * K * 32 bytes (512 KB at M=64, K=256), far above L1, so the items go in blocks of
// BLOCK and the positions in slices whose table part fits L1 (SLICE_BYTES); a running
// partial sum per item carries the sum from slice to slice, so each item still sums over m
// in order. Every lookup then hits L1 instead of L2.
constexpr int64_t BLOCK = 256;
constexpr int64_t SLICE_BYTES = 32 * 1024;

template <typename Reader>
bool scan_group(const Problem& p, Reader code, int64_t g, int64_t lo, int64_t hi,
                Hits* heaps) {
  const float* tg = p.table + g * p.m * p.k * LANES;
  const int64_t lanes = std::min<int64_t>(LANES, p.b - g * LANES);
  const int64_t slice = std::max<int64_t>(1, SLICE_BYTES / (p.k * LANES * 4));
  float thr[LANES];
  for (int q = 0; q < LANES; ++q) thr[q] = q < lanes ? threshold(heaps[q]) : 0.0f;
  auto offer = [&](v8f s, int64_t item) {
    if (p.divisor != 1.0f) s = s / p.divisor;
    for (int q = 0; q < lanes; ++q)
      if (s[q] >= thr[q] && !excluded(p, g * LANES + q, item)) {
        heaps[q].offer({s[q], item});
        thr[q] = threshold(heaps[q]);
      }
  };
  v8f partial[BLOCK];
  for (int64_t b0 = lo; b0 < hi; b0 += BLOCK) {
    const int64_t b1 = std::min(hi, b0 + BLOCK);
    for (int64_t i = b0; i < b1; ++i) partial[i - b0] = v8f{};
    for (int64_t m0 = 0; m0 < p.m; m0 += slice) {
      const int64_t m1 = std::min(p.m, m0 + slice);
      int64_t i = b0;
      for (; i + 4 <= b1; i += 4) {
        v8f* part = partial + (i - b0);
        v8f s0 = part[0], s1 = part[1], s2 = part[2], s3 = part[3];
        for (int64_t mm = m0; mm < m1; ++mm) {
          const float* row = tg + mm * p.k * LANES;
          s0 += load8(row + code(i, mm) * LANES);
          s1 += load8(row + code(i + 1, mm) * LANES);
          s2 += load8(row + code(i + 2, mm) * LANES);
          s3 += load8(row + code(i + 3, mm) * LANES);
        }
        part[0] = s0;
        part[1] = s1;
        part[2] = s2;
        part[3] = s3;
      }
      for (; i < b1; ++i)
        for (int64_t mm = m0; mm < m1; ++mm)
          partial[i - b0] += load8(tg + (mm * p.k + code(i, mm)) * LANES);
    }
    for (int64_t i = b0; i < b1; ++i) offer(partial[i - b0], i);
  }
  return !code.bad;
}

// Items [lo, hi) against one query (plain tables): eight items in flight, eight independent
// add chains that hide the lookups' latency; each item's sum runs over m in order. The whole
// (M, K) table is read from L1/L2 (64 KB at M=64, K=256): measured faster than taking the
// positions a slice at a time through a buffer of partial sums.
// Kept scalar: gcc's SLP pass would pack the eight lookups into a vector one lane at a time.
template <typename Reader>
__attribute__((optimize("no-tree-slp-vectorize"))) bool scan_single(
    const Problem& p, Reader code, int64_t q, int64_t lo, int64_t hi, Hits& heap) {
  const float* tq = p.table + q * p.m * p.k;
  constexpr int J = 8;
  float thr = threshold(heap);
  auto offer = [&](float s, int64_t item) {
    s /= p.divisor;
    if (s >= thr && !excluded(p, q, item)) {
      heap.offer({s, item});
      thr = threshold(heap);
    }
  };
  int64_t i = lo;
  for (; i + J <= hi; i += J) {
    float s[J] = {};
    for (int64_t mm = 0; mm < p.m; ++mm) {
      const float* row = tq + mm * p.k;
      for (int j = 0; j < J; ++j) s[j] += row[code(i + j, mm)];
    }
    for (int j = 0; j < J; ++j) offer(s[j], i + j);
  }
  for (; i < hi; ++i) {
    float s = 0.0f;
    for (int64_t mm = 0; mm < p.m; ++mm) s += tq[mm * p.k + code(i, mm)];
    offer(s, i);
  }
  return !code.bad;
}

#if defined(__AVX512BW__)
// Bounded scan of the catalog (the AVX-512 build on CPUs with VBMI; uint8 codes, K <= 256,
// M = 16, 32, 64, 128, 192 or 256). Each query's table is rounded up onto a grid of 255 steps
// of one width, entries further below their position's best raised to the grid's floor, so an
// item's sum of grid steps (an integer below 2^16) bounds its exact score from above. The scan
// sums those steps for 64 items per instruction with in-register byte lookups (vpermi2b) and
// scores exactly (float32, in order, as above) only the items whose bound reaches the query's
// k-th best so far: the results are the exact scan's, bit for bit, for few exact lookups.

constexpr int64_t kChunk = kHolisticPackItems;  // items per chunk
constexpr int kGroups = kChunk / 64;            // 64-item lane groups per chunk
static_assert(ITEM_CHUNK % kChunk == 0, "the parallel loop hands out whole chunks");
constexpr int kGridSteps = 255;

struct Grid {    // one query's rounded table: bound = base + step * (the item's sum of steps)
  double base;   // sum over positions of the grid's floor
  double step;   // the grid's width
  double slack;  // the float32 sum's rounding error and more: exact sum <= bound + slack
};

struct alignas(64) Lanes64 {
  uint8_t code[64];
};

struct RoundedTables {
  std::vector<Lanes64> steps;  // (B, M, 256) entries in grid steps
  std::vector<Grid> grids;     // (B,)
  std::vector<double> best;    // (B, M) each position's best finite entry (scratch)
};

bool bounded_layout(int64_t m) {
  return m == 16 || m == 32 || m == 64 || m == 128 || m == 192 || m == 256;
}

// Rounds query q's table up onto its grid; false when the scores cannot be bounded (an
// entry of +inf, a position without a finite entry, or sums that could overflow float32).
bool round_up(const Problem& p, int64_t q, RoundedTables& rt) {
  int64_t stride;
  const float* tq = query_table(p, q, stride);
  double* best = rt.best.data() + q * p.m;
  // One position's entries at a time, contiguous and padded with NaN to 256 (16 vectors).
  alignas(64) float row[256];
  auto load_row = [&](int64_t mm) {
    for (int64_t c = 0; c < 256; ++c)
      row[c] = c < p.k ? tq[(mm * p.k + c) * stride] : std::numeric_limits<float>::quiet_NaN();
  };
  constexpr int kNaN = 0x81, kPlusInf = 0x08, kMinusInf = 0x10;  // vfpclassps categories
  // The grid's width spans every entry's gap below its position's best, except outliers
  // (masked codes, say) more than 8 times the median gap (estimated to a power of two from a
  // histogram of binary exponents): those are raised to the floor instead of coarsening the
  // grid for all the others.
  int64_t by_exponent[4][64] = {}, finite = 0;  // four histograms: no chain of increments
  double magnitude = 0;
  for (int64_t mm = 0; mm < p.m; ++mm) {
    load_row(mm);
    __m512 hi = _mm512_set1_ps(-std::numeric_limits<float>::infinity()), lo = _mm512_setzero_ps();
    __mmask16 plus_inf = 0;
    for (int c = 0; c < 256; c += 16) {
      const __m512 x = _mm512_load_ps(row + c);
      const __mmask16 ok = ~_mm512_fpclass_ps_mask(x, kNaN | kPlusInf | kMinusInf);
      plus_inf |= _mm512_fpclass_ps_mask(x, kPlusInf);
      hi = _mm512_mask_max_ps(hi, ok, hi, x);
      lo = _mm512_mask_min_ps(lo, ok, lo, x);
    }
    const float top = _mm512_reduce_max_ps(hi);
    if (plus_inf || !(top > -std::numeric_limits<float>::infinity())) return false;
    best[mm] = top;
    magnitude += std::max(std::fabs(top), std::fabs(_mm512_reduce_min_ps(lo)));
    alignas(64) int32_t bucket[16];
    for (int c = 0; c < 256; c += 16) {
      // 0 for a gap of 0, else 32 + its binary exponent, within [1, 63]; -1 for NaN, -inf.
      const __m512 gap = _mm512_sub_ps(_mm512_set1_ps(top), _mm512_load_ps(row + c));
      const __mmask16 ok = ~_mm512_fpclass_ps_mask(gap, kNaN | kPlusInf);
      __m512i e = _mm512_add_epi32(_mm512_cvttps_epi32(_mm512_getexp_ps(gap)), _mm512_set1_epi32(32));
      e = _mm512_min_epi32(_mm512_max_epi32(e, _mm512_set1_epi32(1)), _mm512_set1_epi32(63));
      e = _mm512_mask_mov_epi32(e, _mm512_cmpeq_ps_mask(gap, _mm512_setzero_ps()), _mm512_setzero_si512());
      _mm512_store_si512(bucket, _mm512_mask_mov_epi32(_mm512_set1_epi32(-1), ok, e));
      for (int j = 0; j < 16; ++j)
        if (bucket[j] >= 0) ++by_exponent[j % 4][bucket[j]], ++finite;
    }
  }
  if (magnitude * double(p.m) >= 0x1p120) return false;
  int median = 0;
  for (int64_t covered = 0;; ++median) {
    for (auto& h : by_exponent) covered += h[median];
    if (2 * covered >= finite) break;
  }
  const __m512 cap = _mm512_set1_ps(std::ldexp(8.0f, median - 31));  // median gap < 2^(median - 31)
  __m512 widest = _mm512_setzero_ps();
  for (int64_t mm = 0; mm < p.m; ++mm) {
    load_row(mm);
    for (int c = 0; c < 256; c += 16) {
      const __m512 gap = _mm512_sub_ps(_mm512_set1_ps(float(best[mm])), _mm512_load_ps(row + c));
      widest = _mm512_mask_max_ps(widest, _mm512_cmp_ps_mask(gap, cap, _CMP_LE_OQ), widest, gap);
    }
  }
  const float widest_gap = _mm512_reduce_max_ps(widest);
  const double width = widest_gap > 0 ? widest_gap : 1;  // 1: every entry equals the best
  Grid& g = rt.grids[q];
  g.step = width / kGridSteps;
  g.base = 0;
  const __m512d per_step = _mm512_set1_pd(1 / g.step);  // its rounding: the slack's last term
  uint8_t* steps = rt.steps[q * p.m * 4].code;
  for (int64_t mm = 0; mm < p.m; ++mm) {
    load_row(mm);
    const double floor = best[mm] - width;
    g.base += floor;
    const __m512d floor_v = _mm512_set1_pd(floor);
    for (int c = 0; c < 256; c += 8) {
      // NaN (never ranks), -inf, entries at or under the floor and codes >= K take step 0.
      const __m512d x = _mm512_cvtps_pd(_mm256_load_ps(row + c));
      __m512d up = _mm512_roundscale_pd(_mm512_mul_pd(_mm512_sub_pd(x, floor_v), per_step),
                                        _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
      up = _mm512_maskz_min_pd(_mm512_cmp_pd_mask(x, floor_v, _CMP_GT_OQ), up,
                               _mm512_set1_pd(kGridSteps));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(steps + mm * 256 + c),
                       _mm256_cvtepi32_epi8(_mm512_cvttpd_epi32(up)));
    }
  }
  // (M + 2) * 2^-22 is twice gamma_M, the relative error bound of M float32 additions; the
  // last term covers the double arithmetic of the grid.
  g.slack = double(p.m + 2) * 0x1p-22 * magnitude + 0x1p-40 * width * double(p.m);
  return true;
}

// The least sum of steps an item needs to still reach `worst`, the query's k-th best score so
// far (0, every item, while fewer than k are kept or when that score is -inf).
uint16_t steps_needed(const Grid& g, float worst, float divisor) {
  if (!(worst > NEG_INF)) return 0;
  // A float32 quotient sum / divisor >= worst needs sum >= divisor * worst, less a rounding.
  const double t = worst;
  const double sum = double(divisor) * (t - std::fabs(t) * 0x1p-21) - g.slack;
  const double need = std::ceil((sum - g.base) / g.step) - 1;
  return need <= 0 ? 0 : need >= 65535 ? 65535 : uint16_t(need);
}

// One thread's buffers for the bounded scan.
struct BoundedScratch {
  std::vector<Lanes64> codes;            // (M, kGroups) the chunk's codes, transposed
  std::vector<uint16_t> needed;          // (B,) steps_needed of the thread's own top-k lists
  std::vector<int64_t> queries, items;   // (B * kChunk + kPairsAtOnce,) pairs to score exactly
  std::vector<float> scores;             // their scores
  int64_t pairs = 0;                     // pairs waiting in queries/items
};

// Pairs are scored exactly once this many wait (or at the end of a thread's items): one
// chunk of a single query yields about one, and scoring them eight at a time hides the
// latency of their dependent adds and of fetching their codes.
constexpr int64_t kPairsAtOnce = 64;

// The 64 x 64 byte block at src (rows `stride` bytes apart) transposed: sink(r, v) receives
// register r, byte column column_of(r) of the rows with row i in lane i. Six rounds of
// two-register interleaves, each swapping one bit of the row index with one of the column
// index: rounds at distance 1, 2, 4 mix the registers of one group of 8 rows, rounds at
// distance 8, 16, 32 the registers i, i + 8, ..., i + 56, so each half runs on 8 registers.
template <int D, typename Interleave>
inline void transpose_round(__m512i* y, Interleave interleave) {
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    if (i & D) continue;
    const __m512i a = y[i], b = y[i + D];
    y[i] = interleave(a, b, false);
    y[i + D] = interleave(a, b, true);
  }
}
template <typename Sink>
inline void transpose64(const uint8_t* src, int64_t stride, Sink sink) {
  __m512i x[64];
  for (int j = 0; j < 8; ++j) {
    __m512i* y = x + 8 * j;
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) y[i] = _mm512_loadu_si512(src + (8 * j + i) * stride);
    transpose_round<1>(y, [](__m512i a, __m512i b, bool hi) {
      return hi ? _mm512_unpackhi_epi8(a, b) : _mm512_unpacklo_epi8(a, b);
    });
    transpose_round<2>(y, [](__m512i a, __m512i b, bool hi) {
      return hi ? _mm512_unpackhi_epi16(a, b) : _mm512_unpacklo_epi16(a, b);
    });
    transpose_round<4>(y, [](__m512i a, __m512i b, bool hi) {
      return hi ? _mm512_unpackhi_epi32(a, b) : _mm512_unpacklo_epi32(a, b);
    });
  }
  auto lanes = [](__m512i a, __m512i b, bool hi) {  // 128-bit lanes
    return hi ? _mm512_shuffle_i64x2(a, b, 0xDD) : _mm512_shuffle_i64x2(a, b, 0x88);
  };
  for (int i = 0; i < 8; ++i) {
    __m512i y[8];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) y[k] = x[i + 8 * k];
    transpose_round<1>(y, [](__m512i a, __m512i b, bool hi) {
      return hi ? _mm512_unpackhi_epi64(a, b) : _mm512_unpacklo_epi64(a, b);
    });
    transpose_round<2>(y, lanes);
    transpose_round<4>(y, lanes);
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) sink(i + 8 * k, y[k]);
  }
}
// The byte rounds reverse the order of the low four column bits.
constexpr int column_of(int r) {
  return ((r & 1) << 3) | ((r & 2) << 1) | ((r & 4) >> 1) | ((r & 8) >> 3) | (r & 48);
}

// A transposed chunk (the packed layout): M * kGroups vectors of 64 codes, vector
// slot(m, pos, g) holding position pos of the items of lane group g, in runs of
// kGroupsAtOnce groups (the groups summed together, see sum_steps) so that each pass of
// sum_steps reads its vectors in order. For M < 64 a 64-byte row holds
// 64 / M items, so group g is sub-item g % (64 / M) of the rows of tile g / (64 / M); lane l
// of group g is item chunk_item(m, g, l) of the chunk.
constexpr int kGroupsAtOnce = 4;
inline int64_t slot(int64_t m, int64_t pos, int64_t g) {
  return (g / kGroupsAtOnce * m + pos) * kGroupsAtOnce + g % kGroupsAtOnce;
}
inline int64_t items_per_row(int64_t m) { return m < 64 ? 64 / m : 1; }
inline int64_t chunk_item(int64_t m, int64_t g, int64_t lane) {
  const int64_t per_row = items_per_row(m);
  return (g / per_row) * 64 * per_row + lane * per_row + g % per_row;
}

// Transposes items [c0, c0 + kChunk) of codes (N, M) into `out` (a chunk as above); true if
// every code is < k.
inline bool transpose_chunk(const uint8_t* codes, int64_t c0, int64_t m, int64_t k,
                            Lanes64* out) {
  const int64_t per_row = items_per_row(m);
  const int64_t row_parts = m < 64 ? 1 : m / 64;  // 64-byte parts of an item's row
  const __m512i k_vec = _mm512_set1_epi8(char(k < 256 ? k : 0));
  __mmask64 out_of_range = 0;
  for (int64_t t = 0; t < kGroups / per_row; ++t)
    for (int64_t part = 0; part < row_parts; ++part) {
      const uint8_t* src = codes + (c0 + t * 64 * per_row) * m + part * 64;
      transpose64(src, 64 * row_parts, [&](int r, __m512i v) {
        // Column c of a row: position c mod M of sub-item c / M (M < 64), else position c.
        const int64_t col = column_of(r), pos = part * 64 + (m < 64 ? col % m : col);
        if (k < 256) out_of_range |= _mm512_cmpge_epu8_mask(v, k_vec);
        _mm512_store_si512(out[slot(m, pos, t * per_row + (m < 64 ? col / m : 0))].code, v);
      });
    }
  return out_of_range == 0;
}

// Each item's sum of grid steps for one query's table (M, 256): 16-bit lanes, even items of
// each lane group in `even`, odd ones in `odd`. Adding the looked-up bytes as 16-bit words
// sums even + 256 * odd (mod 2^16), so one shift recovers both: three operations per 64
// items and position besides the lookups. Four lane groups at a time keep every sum and the
// position's table in registers. `prefetch`, when set, is the next chunk's codes.
__attribute__((target("avx512vbmi"), always_inline)) inline void sum_steps(
    const uint8_t* steps, const Lanes64* chunk, int64_t m, const char* prefetch, __m512i* even,
    __m512i* odd) {
  const __m512i* table = reinterpret_cast<const __m512i*>(steps);
  for (int g0 = 0; g0 < kGroups; g0 += kGroupsAtOnce) {
    __m512i words[kGroupsAtOnce], high[kGroupsAtOnce];
    for (int g = 0; g < kGroupsAtOnce; ++g) words[g] = high[g] = _mm512_setzero_si512();
    for (int64_t pos = 0; pos < m; ++pos) {
      const __m512i t0 = _mm512_load_si512(table + 4 * pos), t1 = _mm512_load_si512(table + 4 * pos + 1);
      const __m512i t2 = _mm512_load_si512(table + 4 * pos + 2), t3 = _mm512_load_si512(table + 4 * pos + 3);
      for (int g = 0; g < kGroupsAtOnce; ++g) {
        // kChunk * M bytes ahead: one line per vector read, spread between the lookups (a
        // burst of them stalls on a full miss queue).
        if (prefetch) _mm_prefetch(prefetch + slot(m, pos, g0 + g) * 64, _MM_HINT_T1);
        const __m512i idx = _mm512_loadu_si512(chunk[slot(m, pos, g0 + g)].code);
        const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1);
        const __m512i hi = _mm512_permutex2var_epi8(t2, idx, t3);
        const __m512i step = _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi);
        words[g] = _mm512_add_epi16(words[g], step);
        high[g] = _mm512_add_epi16(high[g], _mm512_srli_epi16(step, 8));
      }
    }
    for (int g = 0; g < kGroupsAtOnce; ++g) {
      odd[g0 + g] = high[g];
      even[g0 + g] = _mm512_sub_epi16(words[g], _mm512_slli_epi16(high[g], 8));
    }
  }
}

// Exact scores (as score_one) of the (query, item) pairs [0, count) of `s`, eight at a time
// so that eight independent add chains hide the lookups' latency.
template <typename Reader>
__attribute__((optimize("no-tree-slp-vectorize"))) void score_pairs(const Problem& p,
                                                                    Reader& code, int64_t count,
                                                                    BoundedScratch& s) {
  constexpr int J = 8;
  int64_t i = 0, stride;
  for (; i + J <= count; i += J) {
    const float* tq[J];
    float sum[J] = {};
    for (int j = 0; j < J; ++j) tq[j] = query_table(p, s.queries[i + j], stride);
    for (int64_t mm = 0; mm < p.m; ++mm)
      for (int j = 0; j < J; ++j) sum[j] += tq[j][(mm * p.k + code(s.items[i + j], mm)) * stride];
    for (int j = 0; j < J; ++j) s.scores[i + j] = sum[j] / p.divisor;
  }
  for (; i < count; ++i) {
    const float* tq = query_table(p, s.queries[i], stride);
    s.scores[i] = score_one(p, tq, stride, code, s.items[i]);
  }
}

// Scores the waiting pairs exactly and offers them to their queries' lists.
template <bool GUARD>
void score_waiting_pairs(const Problem& p, const RoundedTables& rt,
                         CodeReader<uint8_t, GUARD>& code, BoundedScratch& s, Hits* heaps) {
  score_pairs(p, code, s.pairs, s);
  for (int64_t j = 0; j < s.pairs; ++j) {
    const int64_t q = s.queries[j];
    Hits& heap = heaps[q];
    if (!(s.scores[j] >= threshold(heap)) || excluded(p, q, s.items[j])) continue;
    heap.offer({s.scores[j], s.items[j]});
    if (heap.full()) s.needed[q] = steps_needed(rt.grids[q], heap.worst().score, p.divisor);
  }
  s.pairs = 0;
}

// While query q's top-k list is short (its first chunks) its need is 0 and every item would
// be scored exactly: instead score first the items of this chunk with the largest sums, as
// many as the list lacks, and set the need. Returns those items, one bit per lane of each sum
// vector (2 * g + parity), so they are not scored twice.
template <bool GUARD>
__attribute__((target("avx512vbmi"))) void fill_from_best_bounds(
    const Problem& p, const RoundedTables& rt, CodeReader<uint8_t, GUARD>& code, int64_t q,
    int64_t c0, const __m512i* even, const __m512i* odd, BoundedScratch& s, Hits& heap,
    uint32_t* scored) {
  alignas(64) uint16_t sums[2 * kGroups][32];
  for (int g = 0; g < kGroups; ++g) {
    _mm512_store_si512(sums[2 * g], even[g]);
    _mm512_store_si512(sums[2 * g + 1], odd[g]);
  }
  int64_t* order = s.items.data() + s.items.size() - kChunk;  // the pairs use the front
  for (int64_t i = 0; i < kChunk; ++i) order[i] = i;  // i = (2 * g + parity) * 32 + lane / 2
  const int64_t lacking = std::min(kChunk, p.topk - heap.size());
  auto sum_of = [&](int64_t i) { return sums[i / 32][i % 32]; };
  std::nth_element(order, order + lacking - 1, order + kChunk,
                   [&](int64_t a, int64_t b) { return sum_of(a) > sum_of(b); });
  int64_t stride;
  const float* tq = query_table(p, q, stride);
  for (int64_t j = 0; j < lacking; ++j) {
    const int64_t i = order[j], v = i / 32;
    const int64_t item = c0 + chunk_item(p.m, v / 2, 2 * (i % 32) + v % 2);
    scored[v] |= 1u << (i % 32);
    const float score = score_one(p, tq, stride, code, item);
    if (score >= threshold(heap) && !excluded(p, q, item)) heap.offer({score, item});
  }
  if (heap.full()) s.needed[q] = steps_needed(rt.grids[q], heap.worst().score, p.divisor);
}

// Items [c0, c0 + kChunk) against every query: transpose once (unless packed), then per
// query sum each item's steps (16-bit lanes: even items in one vector, odd in another) and
// score exactly the items whose sum reaches the query's need. False if a code is >= K.
template <bool GUARD>
__attribute__((target("avx512vbmi"))) bool scan_bounded_chunk(
    const Problem& p, const RoundedTables& rt, CodeReader<uint8_t, GUARD>& code, int64_t c0,
    BoundedScratch& s, Hits* heaps) {
  // Packed codes were transposed once (and are read only with K = 256, where every code is in
  // range); the next chunk is fetched while this one is summed: one core alone streams memory
  // far below its share of the bandwidth when its loads come in bursts.
  const bool packed = p.packed && p.k == 256;
  const uint8_t* next = packed ? p.packed + (c0 + kChunk) * p.m : code.codes + (c0 + kChunk) * p.m;
  const bool fetch_next = c0 + 2 * kChunk <= p.n;
  const Lanes64* chunk =
      packed ? reinterpret_cast<const Lanes64*>(p.packed + c0 * p.m) : s.codes.data();
  const bool in_range = packed || transpose_chunk(code.codes, c0, p.m, p.k, s.codes.data());
  // The (query, item) pairs whose sum reaches the query's need join those waiting.
  int64_t count = s.pairs;
  for (int64_t q = 0; q < p.b; ++q) {
    __m512i even[kGroups], odd[kGroups];
    sum_steps(rt.steps[q * p.m * 4].code, chunk, p.m,
              q == 0 && fetch_next ? reinterpret_cast<const char*>(next) : nullptr, even, odd);
    uint32_t scored[2 * kGroups] = {};
    Hits& heap = heaps[q];
    if (!heap.full()) fill_from_best_bounds(p, rt, code, q, c0, even, odd, s, heap, scored);
    const __m512i need = _mm512_set1_epi16(short(s.needed[q]));
    for (int g = 0; g < kGroups; ++g)
      for (int parity = 0; parity < 2; ++parity) {
        for (__mmask32 hits = _mm512_cmpge_epu16_mask(parity ? odd[g] : even[g], need) &
                              ~scored[2 * g + parity];
             hits; hits &= hits - 1) {
          const int64_t lane = 2 * __builtin_ctz(hits) + parity;
          s.queries[count] = q;
          s.items[count++] = c0 + chunk_item(p.m, g, lane);
        }
      }
  }
  s.pairs = count;
  if (s.pairs >= kPairsAtOnce) score_waiting_pairs(p, rt, code, s, heaps);
  return in_range;
}
#endif  // __AVX512BW__

// The best hits of `best`, best first, padded with (-inf, -1) to topk.
void write_sorted(Hits& best, int64_t topk, float* scores, int64_t* ids) {
  const std::vector<Hit>& hits = best.sorted();
  for (int64_t j = 0; j < topk; ++j) {
    const bool have = j < int64_t(hits.size());
    scores[j] = have ? hits[j].score : NEG_INF;
    ids[j] = have ? hits[j].id : -1;
  }
}

// Items [lo, hi) against every query, every lookup exact.
template <typename Reader>
bool scan_range(const Problem& p, Reader code, int64_t lo, int64_t hi, Hits* heaps) {
  bool ok = true;
  if (p.interleaved) {
    for (int64_t g = 0; g * LANES < p.b; ++g) ok &= scan_group(p, code, g, lo, hi, heaps + g * LANES);
  } else {
    for (int64_t q = 0; q < p.b; ++q) ok &= scan_single(p, code, q, lo, hi, heaps[q]);
  }
  return ok;
}

#if defined(__AVX512BW__)
// Whether the bounded scan takes this problem; if so, rounds the tables and allocates each
// thread's scratch (here, before any parallel region).
bool prepare_bounded(const Problem& p, int n_threads, RoundedTables& rt,
                     std::vector<BoundedScratch>& scratch) {
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi");
  if (!vbmi || p.k > 256 || !bounded_layout(p.m) ||
      p.n < (p.packed ? kChunk : kHolisticBoundedMinItems))
    return false;
  rt.steps.resize(size_t(p.b * p.m * 4));
  rt.grids.resize(size_t(p.b));
  rt.best.resize(size_t(p.b * p.m));
  bool all_rounded = true;
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(&& : all_rounded)
  for (int64_t q = 0; q < p.b; ++q) all_rounded = round_up(p, q, rt) && all_rounded;
  if (!all_rounded) return false;
  scratch.resize(size_t(n_threads));
  for (BoundedScratch& s : scratch) {
    s.codes.resize(size_t(p.m * kGroups));
    s.needed.assign(size_t(p.b), 0);
    s.queries.resize(size_t(p.b * kChunk + kPairsAtOnce));
    s.items.resize(size_t(p.b * kChunk + kPairsAtOnce));
    s.scores.resize(size_t(p.b * kChunk + kPairsAtOnce));
    s.pairs = 0;
  }
  return true;
}

// Items [lo, hi) against every query: whole chunks bounded, the rest (the catalog's last
// items) exact.
template <bool GUARD>
bool scan_range_bounded(const Problem& p, const RoundedTables& rt, CodeReader<uint8_t, GUARD> code,
                        int64_t lo, int64_t hi, BoundedScratch& s, Hits* heaps) {
  bool ok = true;
  int64_t c0 = lo;
  for (; c0 + kChunk <= hi; c0 += kChunk) ok &= scan_bounded_chunk(p, rt, code, c0, s, heaps);
  if (c0 < hi) ok &= scan_range(p, code, c0, hi, heaps);
  return ok && !code.bad;
}
#endif

template <typename Reader>
int scan_catalog(const Problem& p, Reader code, float* out_scores, int64_t* out_ids,
                 int n_threads) {
  const int64_t n_chunks = (p.n + ITEM_CHUNK - 1) / ITEM_CHUNK;
  n_threads = int(std::max<int64_t>(1, std::min<int64_t>(n_threads, n_chunks)));
  // Every list is allocated here, before the regions (a failure throws here, not inside
  // them); no list holds more than the N items.
  const int64_t keep = std::min(p.topk, p.n);
  std::vector<std::vector<Hits>> per_thread(n_threads, std::vector<Hits>(p.b));
  for (auto& heaps : per_thread)
    for (Hits& h : heaps) h.reserve(keep);
  std::vector<Hits> merged(n_threads);
  for (Hits& h : merged) h.reserve(keep);
#if defined(__AVX512BW__)
  constexpr bool bytes = std::is_same_v<Reader, CodeReader<uint8_t, false>> ||
                         std::is_same_v<Reader, CodeReader<uint8_t, true>>;
  RoundedTables rounded;
  std::vector<BoundedScratch> scratch;
  const bool bounded = bytes && prepare_bounded(p, n_threads, rounded, scratch);
#endif
  bool all_ok = true;
#pragma omp parallel num_threads(n_threads) reduction(&& : all_ok)
  {
    std::vector<Hits>& heaps = per_thread[omp_get_thread_num()];
    bool ok = true;
    // Dynamic chunks balance the threads when a core is shared; the exact comparator makes
    // the result independent of the order items arrive in.
#pragma omp for schedule(dynamic, 8)
    for (int64_t chunk = 0; chunk < n_chunks; ++chunk) {
      const int64_t lo = chunk * ITEM_CHUNK, hi = std::min(p.n, lo + ITEM_CHUNK);
#if defined(__AVX512BW__)
      if constexpr (bytes) {
        if (bounded) {
          ok &= scan_range_bounded(p, rounded, code, lo, hi, scratch[omp_get_thread_num()],
                                   heaps.data());
          continue;
        }
      }
#endif
      ok &= scan_range(p, code, lo, hi, heaps.data());
    }
#if defined(__AVX512BW__)
    if constexpr (bytes) {
      if (bounded) {  // the thread's last waiting pairs
        Reader reader = code;
        score_waiting_pairs(p, rounded, reader, scratch[omp_get_thread_num()], heaps.data());
        ok &= !reader.bad;
      }
    }
#endif
    all_ok = all_ok && ok;
  }
#pragma omp parallel num_threads(n_threads)
  {
    Hits& best = merged[omp_get_thread_num()];
#pragma omp for schedule(static)
    for (int64_t q = 0; q < p.b; ++q) {
      best.clear();
      for (auto& heaps : per_thread)
        for (const Hit& h : heaps[q].items()) best.offer(h);
      write_sorted(best, p.topk, out_scores + q * p.topk, out_ids + q * p.topk);
    }
  }
  return all_ok ? kOk : kCodeOutOfRange;
}

// Each query scores its own candidate list (deduplicated; -1 padding and masked ids skipped).
template <typename Reader>
int scan_candidates(const Problem& p, Reader code, float* out_scores, int64_t* out_ids,
                    int n_threads) {
  // Every thread's buffers are allocated here, before the region.
  n_threads = int(std::max<int64_t>(1, std::min<int64_t>(n_threads, p.b)));
  std::vector<std::vector<int64_t>> thread_ids(n_threads);
  std::vector<Hits> thread_best(n_threads);
  for (int t = 0; t < n_threads; ++t) {
    thread_ids[t].reserve(size_t(p.c));
    thread_best[t].reserve(std::min(p.topk, p.c));
  }
  bool all_ok = true;
#pragma omp parallel num_threads(n_threads) reduction(&& : all_ok)
  {
    std::vector<int64_t>& ids = thread_ids[omp_get_thread_num()];
    Hits& best = thread_best[omp_get_thread_num()];
    Reader reader = code;  // per thread: it records bad codes
    bool ok = true;
#pragma omp for schedule(dynamic, 4)
    for (int64_t q = 0; q < p.b; ++q) {
      ids.clear();
      for (int64_t j = 0; j < p.c; ++j) {
        const int64_t id = p.candidates[q * p.c + j];
        if (id < -1 || id >= p.n) ok = false;
        if (id >= 0 && id < p.n && !excluded(p, q, id)) ids.push_back(id);
      }
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      int64_t stride;
      const float* tq = query_table(p, q, stride);
      best.clear();
      for (int64_t id : ids) {
        const float s = score_one(p, tq, stride, reader, id);
        if (s >= threshold(best)) best.offer({s, id});
      }
      write_sorted(best, p.topk, out_scores + q * p.topk, out_ids + q * p.topk);
    }
    all_ok = all_ok && ok && !reader.bad;
  }
  return all_ok ? kOk : kCodeOutOfRange;
}

template <typename T, bool GUARD>
int dispatch(const Problem& p, const void* codes, float* s, int64_t* ids, int n_threads) {
  const CodeReader<T, GUARD> code{static_cast<const T*>(codes), p.m, uint64_t(p.k)};
  return p.c >= 0 ? scan_candidates(p, code, s, ids, n_threads)
                      : scan_catalog(p, code, s, ids, n_threads);
}

#if defined(__AVX512BW__)
// sum_steps `times` times over the same chunk and table (holistic_steps_floor's work).
__attribute__((target("avx512vbmi"))) uint64_t sum_steps_repeatedly(
    const uint8_t* table, const Lanes64* chunk, int64_t m, int64_t times) {
  __m512i keep = _mm512_setzero_si512();
  for (int64_t i = 0; i < times; ++i) {
    __m512i even[kGroups], odd[kGroups];
    sum_steps(table, chunk, m, nullptr, even, odd);
    for (int g = 0; g < kGroups; ++g) keep = _mm512_xor_si512(keep, _mm512_add_epi16(even[g], odd[g]));
  }
  return uint64_t(_mm512_reduce_add_epi64(keep));
}
#endif

}  // namespace

// Benchmark floors (semid-fast bench compares holistic_topk with them; no op calls them).

int stream_read_floor(const uint8_t* bytes, int64_t n_bytes, uint64_t* out_sum, int n_threads) {
  if (n_bytes < 0 || out_sum == nullptr || (n_bytes > 0 && bytes == nullptr)) return kBadArgument;
  // Each thread sums its share of whole 64-byte lines as 64-bit words in two 8-word vectors
  // and asks for the lines 4 KB ahead: one core alone reads several times slower without
  // (measured here: 8 GB/s for a word at a time, 29 GB/s this way, from L3).
  typedef uint64_t v8u __attribute__((vector_size(64)));
  typedef uint64_t v8u_unaligned __attribute__((vector_size(64), aligned(1)));
  constexpr int64_t AHEAD = 64;  // lines
  const int64_t lines = n_bytes / 64;
  uint64_t total = 0;
#pragma omp parallel num_threads(std::max(1, n_threads)) reduction(+ : total)
  {
    const int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
    const int64_t lo = lines * t / threads, hi = lines * (t + 1) / threads;
    v8u a = {}, b = {};
    int64_t i = lo;
    for (; i + 2 <= hi; i += 2) {
      if (i + AHEAD + 2 <= hi) {
        __builtin_prefetch(bytes + (i + AHEAD) * 64);
        __builtin_prefetch(bytes + (i + AHEAD + 1) * 64);
      }
      a += *reinterpret_cast<const v8u_unaligned*>(bytes + i * 64);
      b += *reinterpret_cast<const v8u_unaligned*>(bytes + (i + 1) * 64);
    }
    if (i < hi) a += *reinterpret_cast<const v8u_unaligned*>(bytes + i * 64);
    a += b;
    for (int j = 0; j < 8; ++j) total += a[j];
  }
  for (int64_t i = lines * 64; i < n_bytes; ++i) total += bytes[i];
  *out_sum = total;
  return kOk;
}

int holistic_lookup_floor_f32(const float* table, const uint8_t* codes, int64_t n, int64_t m,
                              int64_t groups, float* out, int n_threads) {
  if (n < 0 || m <= 0 || groups <= 0 || table == nullptr || out == nullptr) return kBadArgument;
  // The catalog scan's inner loop (one 8-lane load and add per item, position and group of
  // 8 queries, four items in flight), with every position reading the same 8 KB table
  // (256 codes x 8 lanes), so no lookup misses L1 and no top-k is kept: the lookup
  // throughput of this core for the scan's work.
#pragma omp parallel for num_threads(std::max(1, n_threads)) schedule(static)
  for (int64_t chunk = 0; chunk < (n + ITEM_CHUNK - 1) / ITEM_CHUNK; ++chunk) {
    const int64_t lo = chunk * ITEM_CHUNK, hi = std::min(n, lo + ITEM_CHUNK);
    v8f best{};
    for (int64_t g = 0; g < groups; ++g) {
      int64_t i = lo;
      for (; i + 4 <= hi; i += 4) {
        v8f s0{}, s1{}, s2{}, s3{};
        for (int64_t mm = 0; mm < m; ++mm) {
          s0 += load8(table + int64_t(codes[i * m + mm]) * LANES);
          s1 += load8(table + int64_t(codes[(i + 1) * m + mm]) * LANES);
          s2 += load8(table + int64_t(codes[(i + 2) * m + mm]) * LANES);
          s3 += load8(table + int64_t(codes[(i + 3) * m + mm]) * LANES);
        }
        best += s0 + s1 + s2 + s3;  // kept, so the compiler cannot drop the loop
      }
      for (; i < hi; ++i)
        for (int64_t mm = 0; mm < m; ++mm)
          best += load8(table + int64_t(codes[i * m + mm]) * LANES);
    }
    out[chunk] = best[0] + best[7];
  }
  return kOk;
}

int holistic_steps_floor(int64_t n, int64_t m, int64_t b, uint64_t* out, int n_threads) {
  if (n < 0 || b <= 0 || out == nullptr) return kBadArgument;
#if defined(__AVX512BW__)
  // The bounded scan's summing of grid steps (sum_steps) for B queries over N items, with
  // every code vector and table L1-resident (one chunk and one table, reused) and no
  // transpose, prefetch, exact scoring or top-k: this core's speed for the scan's lookups.
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi");
  if (!vbmi || !bounded_layout(m)) return kBadArgument;
  const int64_t chunks = n / kChunk;
  n_threads = int(std::max<int64_t>(1, std::min<int64_t>(n_threads, chunks)));
  std::vector<std::vector<Lanes64>> chunks_of(n_threads, std::vector<Lanes64>(size_t(m * kGroups)));
  std::vector<Lanes64> table(size_t(m * 4));
  for (int64_t i = 0; i < m * 256; ++i) table[i / 64].code[i % 64] = uint8_t(i * 37 % 251);
  for (auto& chunk : chunks_of)
    for (int64_t i = 0; i < m * kGroups * 64; ++i) chunk[i / 64].code[i % 64] = uint8_t(i * 131 + i / 64);
  uint64_t total = 0;
#pragma omp parallel num_threads(n_threads) reduction(^ : total)
  {
    const int t = omp_get_thread_num();
    total ^= sum_steps_repeatedly(table[0].code, chunks_of[t].data(), m,
                                  b * (chunks * (t + 1) / n_threads - chunks * t / n_threads));
  }
  *out = total;
  return kOk;
#else
  (void)m, (void)n_threads;
  return kBadArgument;  // the bounded scan is in the AVX-512 build only
#endif
}

int holistic_pack_codes(const uint8_t* codes, int64_t n, int64_t m, uint8_t* out, int n_threads) {
  if (n < 0 || m <= 0 || (n > 0 && (codes == nullptr || out == nullptr))) return kBadArgument;
#if defined(__AVX512BW__)
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi");
  if (!vbmi || !bounded_layout(m)) return kBadArgument;
  const int64_t chunks = n / kChunk;
#pragma omp parallel for num_threads(std::max(1, n_threads)) schedule(static)
  for (int64_t c = 0; c < chunks; ++c)
    transpose_chunk(codes, c * kChunk, m, 256, reinterpret_cast<Lanes64*>(out + c * kChunk * m));
  return kOk;
#else
  (void)n_threads;
  return kBadArgument;  // the bounded scan is in the AVX-512 build only
#endif
}

int holistic_topk_f32(const float* table, int interleaved, int64_t b, int64_t m, int64_t k,
                      const void* codes, int code_bytes, int64_t n, const uint8_t* packed,
                      const int64_t* candidates,
                      int64_t c, const uint8_t* item_mask, int64_t mask_stride, float divisor,
                      int64_t topk, float* out_scores, int64_t* out_ids, int n_threads) {
  if (b < 0 || m <= 0 || k <= 0 || n < 0 || topk < 0 || divisor <= 0.0f) return kBadArgument;
  if (c > 0 && candidates == nullptr) return kBadArgument;
  if (b == 0 || topk == 0) return kOk;
  const Problem p{table, interleaved, b, m, k, n, candidates, c, item_mask, mask_stride, divisor, topk,
                  code_bytes == 1 ? packed : nullptr};
  switch (code_bytes) {
    case 1:
      return k == 256 ? dispatch<uint8_t, false>(p, codes, out_scores, out_ids, n_threads)
                      : dispatch<uint8_t, true>(p, codes, out_scores, out_ids, n_threads);
    case 2: return dispatch<int16_t, true>(p, codes, out_scores, out_ids, n_threads);
    case 4: return dispatch<int32_t, true>(p, codes, out_scores, out_ids, n_threads);
    case 8: return dispatch<int64_t, true>(p, codes, out_scores, out_ids, n_threads);
    default: return kBadArgument;
  }
}

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
