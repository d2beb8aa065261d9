// k-means centroid update on raw float32 pointers: each thread sums its share of the rows into
// its own (k, d) float64 buffer, then the buffers are added column-block by column-block in
// parallel. The sums depend on the thread count only through float64 rounding.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "semid_fast/kmeans.h"

namespace semid_fast {
namespace SEMID_FAST_ISA {

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

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
