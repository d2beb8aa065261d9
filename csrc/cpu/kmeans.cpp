// k-means on raw float32 pointers: the centroid update and greedy k-means++ (the assignment
// step is rq_encode_f32 with one level).
//
// Update: each thread sums its share of the rows into its own (k, d) float64 buffer, then the
// buffers are added in parallel. k-means++: every pick scores all rows against its few
// candidates in one pass (4 candidates per pass over a row's 8-float chunks), with per-thread
// float64 totals added in thread order, so a run is reproducible for a given thread count.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "semid_fast/kmeans.h"

namespace semid_fast {
namespace SEMID_FAST_ISA {
namespace {

constexpr int kMaxTrials = 64;

// out[t] = row . cands[t] for t < count (count <= 4; cands row-major with width d).
inline void dots4(const float* row, const float* cands, int64_t d, int count, float* out) {
  v8f acc[4] = {};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8) {
    const v8f xv = load8(row + j);
    for (int t = 0; t < 4; ++t)
      if (t < count) acc[t] += xv * load8(cands + t * d + j);
  }
  for (int t = 0; t < count; ++t) {
    float s = 0.0f;
    for (int l = 0; l < 8; ++l) s += acc[t][l];
    for (int64_t e = j; e < d; ++e) s += row[e] * cands[t * d + e];
    out[t] = s;
  }
}

// Squared distance by the norms: (||x||^2 - 2 x.c) + ||c||^2, clamped at 0.
inline float norm_distance(float x_sq, float dot, float c_sq) {
  return std::max(0.0f, (x_sq - 2.0f * dot) + c_sq);
}

}  // namespace

int kmeans_update_f32(const float* x, int64_t n, int64_t d, const int64_t* codes, int64_t k,
                      double* sums, int64_t* counts, int n_threads) {
  if (n < 0 || d <= 0 || k <= 0 || n_threads <= 0) return kBadArgument;
  int bad = 0;
#pragma omp parallel for num_threads(n_threads) schedule(static) reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) bad |= codes[i] < 0 || codes[i] >= k;
  if (bad) return kCodeOutOfRange;
  // As many per-thread copies as fit in 256 MB (at least one).
  const int64_t book = k * d;
  const int threads = int(std::max<int64_t>(
      1, std::min<int64_t>({n_threads, std::max<int64_t>(n, 1), (int64_t(32) << 20) / book})));
  std::vector<double> partial(threads * book, 0.0);
  std::vector<int64_t> partial_counts(threads * k, 0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    double* mine = partial.data() + t * book;
    int64_t* mine_counts = partial_counts.data() + t * k;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t c = codes[i];
      const float* row = x + i * d;
      double* s = mine + c * d;
      for (int64_t j = 0; j < d; ++j) s[j] += row[j];
      ++mine_counts[c];
    }
#pragma omp for schedule(static)
    for (int64_t j = 0; j < book; ++j) {
      double s = 0.0;
      for (int u = 0; u < threads; ++u) s += partial[u * book + j];
      sums[j] = s;
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < k; ++c) {
      int64_t s = 0;
      for (int u = 0; u < threads; ++u) s += partial_counts[u * k + c];
      counts[c] = s;
    }
  }
  return kOk;
}

int kmeanspp_f32(const float* x, int64_t n, int64_t d, int64_t k, int64_t first,
                 const double* draws, int64_t trials, int64_t* picks, int n_threads) {
  if (n <= 0 || d <= 0 || k <= 0 || k > n || first < 0 || first >= n || trials <= 0 ||
      trials > kMaxTrials || n_threads <= 0)
    return kBadArgument;
  std::vector<float> x_sq(n), cands(trials * d), c_sq(trials);
  std::vector<double> closest(n), after(trials * n), cumulative(n);
  std::vector<double> partial(n_threads * trials);
  std::vector<int64_t> rows(trials);
#pragma omp parallel for num_threads(n_threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) dots4(x + i * d, x + i * d, d, 1, &x_sq[i]);

  // Scores every row against `count` candidate rows: after[t][i] = min(closest[i], dist) and
  // the total of after[t] per candidate in totals.
  const auto score = [&](int64_t count, double* totals) {
    for (int64_t t = 0; t < count; ++t) {
      std::memcpy(&cands[t * d], x + rows[t] * d, sizeof(float) * d);
      c_sq[t] = x_sq[rows[t]];
    }
    std::fill(partial.begin(), partial.end(), 0.0);
#pragma omp parallel num_threads(n_threads)
    {
      double* mine = partial.data() + omp_get_thread_num() * trials;
      float dot[4];
#pragma omp for schedule(static)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t t0 = 0; t0 < count; t0 += 4) {
          const int group = int(std::min<int64_t>(4, count - t0));
          dots4(x + i * d, &cands[t0 * d], d, group, dot);
          for (int g = 0; g < group; ++g) {
            const int64_t t = t0 + g;
            const double dist = norm_distance(x_sq[i], dot[g], c_sq[t]);
            const double kept = std::min(closest[i], dist);
            after[t * n + i] = kept;
            mine[t] += kept;
          }
        }
    }
    for (int64_t t = 0; t < count; ++t) {
      totals[t] = 0.0;
      for (int u = 0; u < n_threads; ++u) totals[t] += partial[u * trials + t];
    }
  };

  std::fill(closest.begin(), closest.end(), std::numeric_limits<double>::infinity());
  rows[0] = first;
  picks[0] = first;
  double potential = 0.0;
  score(1, &potential);
  std::copy_n(after.begin(), n, closest.begin());
  std::vector<double> totals(trials);
  for (int64_t c = 1; c < k; ++c) {
    double run = 0.0;
    for (int64_t i = 0; i < n; ++i) cumulative[i] = run += closest[i];
    for (int64_t t = 0; t < trials; ++t) {
      // First row whose cumulative mass reaches the draw.
      const double threshold = draws[(c - 1) * trials + t] * potential;
      const int64_t at = std::lower_bound(cumulative.begin(), cumulative.end(), threshold) -
                         cumulative.begin();
      rows[t] = std::min(at, n - 1);
    }
    score(trials, totals.data());
    const int64_t best = std::min_element(totals.begin(), totals.end()) - totals.begin();
    potential = totals[best];
    std::copy_n(after.begin() + best * n, n, closest.begin());
    picks[c] = rows[best];
  }
  return kOk;
}

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
