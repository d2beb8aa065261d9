// CPU kernels of the longid family: holistic scoring of every catalog item with a fused
// top-k, so no (B, N) score matrix is ever written.
//
// Two scans over the item codes, both streaming each item's codes once:
// * several queries: the caller interleaves the lookup tables 8 queries wide, so one code
//   fetches one 8-float vector (8 queries) and a single add accumulates them: no gathers;
// * one query: scalar lookups, eight items in flight to hide the load latency.
// Each thread keeps its own top-k per query over the item chunks it takes; the per-thread
// lists are merged at the end. Sums run over m in order, like the reference, so the scores
// agree bit for bit.
#include <omp.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "semid_fast/longid.h"

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

// The best hits of `best`, best first, padded with (-inf, -1) to topk.
void write_sorted(Hits& best, int64_t topk, float* scores, int64_t* ids) {
  const std::vector<Hit>& hits = best.sorted();
  for (int64_t j = 0; j < topk; ++j) {
    const bool have = j < int64_t(hits.size());
    scores[j] = have ? hits[j].score : NEG_INF;
    ids[j] = have ? hits[j].id : -1;
  }
}

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
      if (p.interleaved) {
        for (int64_t g = 0; g * LANES < p.b; ++g)
          ok &= scan_group(p, code, g, lo, hi, heaps.data() + g * LANES);
      } else {
        for (int64_t q = 0; q < p.b; ++q) ok &= scan_single(p, code, q, lo, hi, heaps[q]);
      }
    }
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

}  // namespace

// Benchmark floors (semid-fast bench compares holistic_topk with them; no op calls them).

int stream_read_floor(const uint8_t* bytes, int64_t n_bytes, uint64_t* out_sum, int n_threads) {
  if (n_bytes < 0 || out_sum == nullptr || (n_bytes > 0 && bytes == nullptr)) return kBadArgument;
  // Whole 64-byte lines per thread, four independent sums per thread: the loop runs at the
  // memory's speed, not at the latency of one add chain.
  const int64_t words = n_bytes / 8;
  const uint64_t* w = reinterpret_cast<const uint64_t*>(bytes);
  uint64_t total = 0;
#pragma omp parallel for num_threads(std::max(1, n_threads)) schedule(static) reduction(+ : total)
  for (int64_t line = 0; line < (words + 7) / 8; ++line) {
    uint64_t acc[8] = {};
    const int64_t lo = line * 8, hi = std::min(words, lo + 8);
    for (int64_t i = lo; i < hi; ++i) acc[i - lo] += w[i];
    for (uint64_t a : acc) total += a;
  }
  for (int64_t i = words * 8; i < n_bytes; ++i) total += bytes[i];
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

int holistic_topk_f32(const float* table, int interleaved, int64_t b, int64_t m, int64_t k,
                      const void* codes, int code_bytes, int64_t n, const int64_t* candidates,
                      int64_t c, const uint8_t* item_mask, int64_t mask_stride, float divisor,
                      int64_t topk, float* out_scores, int64_t* out_ids, int n_threads) {
  if (b < 0 || m <= 0 || k <= 0 || n < 0 || topk < 0 || divisor <= 0.0f) return kBadArgument;
  if (c > 0 && candidates == nullptr) return kBadArgument;
  if (b == 0 || topk == 0) return kOk;
  const Problem p{table, interleaved, b, m, k, n, candidates, c, item_mask, mask_stride, divisor, topk};
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
