// CPU kernels of the longid family: holistic scoring of every catalog item with a fused
// top-k, so no (B, N) score matrix is ever written.
//
// Two scans over the item codes, both streaming each item's codes once:
// * several queries: the caller interleaves the lookup tables 8 queries wide, so one code
//   fetches one 8-float vector (8 queries) and a single add accumulates them: no gathers;
// * one query: scalar lookups, four items in flight to hide the load latency.
// Each thread keeps its own top-k per query over the item chunks it takes; the per-thread
// lists are merged at the end. Sums run over m in order, like the reference, so the scores
// agree bit for bit.
#include <omp.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "semid_fast/longid.h"
#include "semid_fast/quantize.h"

namespace semid_fast {
namespace SEMID_FAST_ISA {
namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4)));
constexpr int LANES = 8;
constexpr int64_t ITEM_CHUNK = 1024;
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

inline v8f load8(const float* p) { return *reinterpret_cast<const v8f_unaligned*>(p); }

struct Hit {
  float score;
  int64_t id;
};
// Higher score first, ties toward the smaller id.
inline bool better(const Hit& a, const Hit& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

// The best `cap` hits seen so far; a heap whose front is the worst kept hit.
struct TopK {
  std::vector<Hit> heap;
  int64_t cap = 0;

  void reset(int64_t c, int64_t most_items) {
    cap = c;
    heap.clear();
    heap.reserve(size_t(most_items));
  }
  float threshold() const { return int64_t(heap.size()) < cap ? NEG_INF : heap.front().score; }
  void push(float score, int64_t id) {
    const Hit h{score, id};
    if (int64_t(heap.size()) < cap) {
      heap.push_back(h);
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(h, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = h;
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }
};

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

// Items [lo, hi) against the 8 queries of group g (interleaved tables).
template <typename Reader>
bool scan_group(const Problem& p, Reader code, int64_t g, int64_t lo, int64_t hi,
                TopK* heaps) {
  const float* tg = p.table + g * p.m * p.k * LANES;
  const int64_t lanes = std::min<int64_t>(LANES, p.b - g * LANES);
  float thr[LANES];
  for (int q = 0; q < LANES; ++q) thr[q] = q < lanes ? heaps[q].threshold() : 0.0f;
  auto offer = [&](v8f s, int64_t item) {
    if (p.divisor != 1.0f) s = s / p.divisor;
    for (int q = 0; q < lanes; ++q)
      if (s[q] >= thr[q] && !excluded(p, g * LANES + q, item)) {
        heaps[q].push(s[q], item);
        thr[q] = heaps[q].threshold();
      }
  };
  int64_t i = lo;
  for (; i + 4 <= hi; i += 4) {
    v8f s0{}, s1{}, s2{}, s3{};
    for (int64_t mm = 0; mm < p.m; ++mm) {
      const float* row = tg + mm * p.k * LANES;
      s0 += load8(row + code(i, mm) * LANES);
      s1 += load8(row + code(i + 1, mm) * LANES);
      s2 += load8(row + code(i + 2, mm) * LANES);
      s3 += load8(row + code(i + 3, mm) * LANES);
    }
    offer(s0, i);
    offer(s1, i + 1);
    offer(s2, i + 2);
    offer(s3, i + 3);
  }
  for (; i < hi; ++i) {
    v8f s{};
    for (int64_t mm = 0; mm < p.m; ++mm)
      s += load8(tg + (mm * p.k + code(i, mm)) * LANES);
    offer(s, i);
  }
  return !code.bad;
}

// Items [lo, hi) against one query (plain tables). The positions are taken a slice at a
// time so that the slice of the table (about 16 KB) stays in L1 while every item of the
// chunk adds its lookups to a running partial sum; the sum order over m is unchanged.
// Kept scalar: gcc's SLP pass would pack the eight lookups into a vector one lane at a time.
template <typename Reader>
__attribute__((optimize("no-tree-slp-vectorize"))) bool scan_single(
    const Problem& p, Reader code, int64_t q, int64_t lo, int64_t hi, TopK& heap) {
  const float* tq = p.table + q * p.m * p.k;
  const int64_t slice = std::max<int64_t>(1, (16 * 1024 / 4) / p.k);
  float partial[ITEM_CHUNK];
  std::fill(partial, partial + (hi - lo), 0.0f);
  for (int64_t m0 = 0; m0 < p.m; m0 += slice) {
    const int64_t m1 = std::min(p.m, m0 + slice);
    int64_t i = lo;
    // Eight items in flight: eight independent add chains hide the lookups' latency.
    for (; i + 8 <= hi; i += 8) {
      float s[8];
      for (int j = 0; j < 8; ++j) s[j] = partial[i - lo + j];
      for (int64_t mm = m0; mm < m1; ++mm) {
        const float* row = tq + mm * p.k;
        for (int j = 0; j < 8; ++j) s[j] += row[code(i + j, mm)];
      }
      for (int j = 0; j < 8; ++j) partial[i - lo + j] = s[j];
    }
    for (; i < hi; ++i)
      for (int64_t mm = m0; mm < m1; ++mm) partial[i - lo] += tq[mm * p.k + code(i, mm)];
  }
  float thr = heap.threshold();
  for (int64_t i = lo; i < hi; ++i) {
    const float s = partial[i - lo] / p.divisor;
    if (s >= thr && !excluded(p, q, i)) {
      heap.push(s, i);
      thr = heap.threshold();
    }
  }
  return !code.bad;
}

void write_sorted(std::vector<Hit>& hits, int64_t topk, float* scores, int64_t* ids) {
  std::sort(hits.begin(), hits.end(), better);
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
  std::vector<std::vector<TopK>> per_thread(n_threads, std::vector<TopK>(p.b));
  // Allocated before the region (a failure throws here, not inside it); a heap never holds
  // more than the N items.
  for (auto& heaps : per_thread)
    for (TopK& h : heaps) h.reset(p.topk, std::min(p.topk, p.n));
  bool all_ok = true;
#pragma omp parallel num_threads(n_threads) reduction(&& : all_ok)
  {
    std::vector<TopK>& heaps = per_thread[omp_get_thread_num()];
    bool ok = true;
    // Dynamic chunks balance the threads when a core is shared; the exact comparator in
    // TopK::push makes the result independent of the order items arrive in.
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
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t q = 0; q < p.b; ++q) {
    std::vector<Hit> hits;
    for (auto& heaps : per_thread) hits.insert(hits.end(), heaps[q].heap.begin(), heaps[q].heap.end());
    write_sorted(hits, p.topk, out_scores + q * p.topk, out_ids + q * p.topk);
  }
  return all_ok ? kOk : kCodeOutOfRange;
}

// Each query scores its own candidate list (deduplicated; -1 padding and masked ids skipped).
template <typename Reader>
int scan_candidates(const Problem& p, Reader code, float* out_scores, int64_t* out_ids,
                    int n_threads) {
  bool all_ok = true;
#pragma omp parallel num_threads(n_threads) reduction(&& : all_ok)
  {
    std::vector<int64_t> ids;
    std::vector<Hit> hits;
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
      hits.clear();
      for (int64_t id : ids) hits.push_back({score_one(p, tq, stride, reader, id), id});
      const int64_t keep = std::min<int64_t>(p.topk, hits.size());
      std::partial_sort(hits.begin(), hits.begin() + keep, hits.end(), better);
      hits.resize(keep);
      write_sorted(hits, p.topk, out_scores + q * p.topk, out_ids + q * p.topk);
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
