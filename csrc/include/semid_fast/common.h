// What every kernel family shares: the status codes and dtype codes of the raw-pointer ABI,
// the order-preserving float word, and (CPU kernels only) the 8-float vector types and the
// bounded top-k list.
#pragma once
#include <cstdint>

#include "semid_fast/host_device.h"

namespace semid_fast {

// Return value of every CPU kernel (the Python side maps them to exceptions).
enum Status : int {
  kOk = 0,
  kCodeOutOfRange = 1,  // a code outside [0, k) was found
  kBadArgument = 2,
};

// Element type of a `const void*` input of the CUDA launchers.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Unsigned word with the order of the float: -0.0 ties with +0.0; every NaN ranks above +inf,
// all NaNs equal (as torch.sort orders them); never 0, so 0 can mean "nothing".
SEMID_FAST_HD uint32_t order_word(float score) {
  if (score != score) return 0xFFFFFFFFu;
  union {
    float f;
    uint32_t u;
  } v{score};
  const uint32_t bits = v.u == 0x80000000u ? 0u : v.u;
  const uint32_t ord = (bits & 0x80000000u) ? (bits ^ 0x7FFFFFFFu) : bits;
  return ord ^ 0x80000000u;  // >= 0x007FFFFF (-inf): never 0
}

}  // namespace semid_fast

// CPU kernels only: compiled once per ISA, so everything below lives in that ISA's namespace
// (one name per ISA: the linker never swaps the AVX2 copy into the baseline kernels).
#if defined(SEMID_FAST_ISA) && !defined(__CUDACC__)
#include <algorithm>
#include <vector>

namespace semid_fast {
namespace SEMID_FAST_ISA {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4)));

inline v8f load8(const float* p) { return *reinterpret_cast<const v8f_unaligned*>(p); }
inline void store8(float* p, v8f v) { *reinterpret_cast<v8f_unaligned*>(p) = v; }
inline v8f splat(float s) { return v8f{s, s, s, s, s, s, s, s}; }
inline v8i splat_i(int32_t s) { return v8i{s, s, s, s, s, s, s, s}; }

// The best `capacity` items offered, under a strict total order (better(a, b): a ranks
// first), so the result does not depend on the order of the offers. Callers compare a
// candidate with worst() before building it. Up to kSorted items are kept as a sorted list
// (an insertion shifts a few items), more as a heap whose front is the worst kept item.
// reserve() allocates, so it belongs outside OpenMP regions; clear() and offer() never do.
template <typename Item, typename Better>
class TopK {
 public:
  static constexpr int64_t kSorted = 32;

  // Room for `most` items, which is also the capacity until clear(capacity) changes it.
  void reserve(int64_t most) {
    items_.clear();
    items_.reserve(size_t(most));
    set_capacity(most);
  }
  void clear() { items_.clear(); }
  // Keeps the best `capacity` from now on (at most what reserve() made room for).
  void clear(int64_t capacity) {
    items_.clear();
    set_capacity(std::min<int64_t>(capacity, int64_t(items_.capacity())));
  }
  bool full() const { return int64_t(items_.size()) == cap_; }
  int64_t size() const { return int64_t(items_.size()); }
  const Item& worst() const { return sorted_ ? items_.back() : items_.front(); }  // not empty

  void offer(const Item& item) {
    const bool room = int64_t(items_.size()) < cap_;
    if (!room && (items_.empty() || !Better()(item, worst()))) return;
    if (sorted_) {
      size_t i = items_.size();
      if (room) items_.push_back(item);
      else --i;  // the worst drops out
      Item* a = items_.data();
      for (; i > 0 && Better()(item, a[i - 1]); --i) a[i] = a[i - 1];
      a[i] = item;
    } else if (room) {
      items_.push_back(item);
      std::push_heap(items_.begin(), items_.end(), Better());
    } else {
      replace_worst(item);
    }
  }

  // The kept items, best first. The heap order is gone: clear() before offering again.
  const std::vector<Item>& sorted() {
    if (!sorted_) std::sort_heap(items_.begin(), items_.end(), Better());
    return items_;
  }
  const std::vector<Item>& items() const { return items_; }

 private:
  void set_capacity(int64_t capacity) {
    cap_ = capacity;
    sorted_ = capacity <= kSorted;
  }

  // One sift-down from the front (pop_heap + push_heap would take two passes).
  void replace_worst(const Item& item) {
    Item* a = items_.data();
    const size_t n = items_.size();
    size_t i = 0;
    for (size_t c = 1; c < n; c = 2 * i + 1) {
      if (c + 1 < n && Better()(a[c], a[c + 1])) ++c;  // the worse child
      if (!Better()(item, a[c])) break;
      a[i] = a[c];
      i = c;
    }
    a[i] = item;
  }

  std::vector<Item> items_;
  int64_t cap_ = 0;
  bool sorted_ = true;
};

}  // namespace SEMID_FAST_ISA
}  // namespace semid_fast
#endif
