// CUDA kernels of the longid family: holistic scoring of long semantic IDs with a fused
// per-block top-k, on raw pointers (see cuda_longid.h for layouts and the key format).
//
// Design
// ------
// holistic_block_topk: one thread block per (item block of items_per_block items, group of
// QB queries), linearised with the query group fastest so that the blocks sharing an item
// block run side by side and its codes are read from HBM once (then L2) per batch of B.
//  1. The QB queries' tables are staged in shared memory interleaved, tab[(m * K + c)][j],
//     so one code fetches all QB values with one 4/8/16-byte shared load (QB = 1, 2, 4; the
//     largest that fits is used). If even one query's table does not fit, the table is read
//     through the read-only cache instead (slow fallback for huge M * K).
//  2. Each thread scores two items at a time (two independent add chains). It reads its
//     items' code rows straight from global memory in 16/4/1-byte chunks (widest aligned),
//     prefetching the next chunk, and adds the looked-up values in m order (add.rn.f32, no
//     FTZ even under --use_fast_math), then divides (div.rn.f32): bit-identical to the
//     reference. Random codes make the shared loads bank-conflicted (about 3 wavefronts
//     per 32 lookups); that, not HBM, is the expected bottleneck. Codes outside [0, K) are
//     clamped for the load (never out of bounds) and the item gets no key. Each (query,
//     item) stores a 32-bit order word in shared memory (0 = no item); the item id is
//     implied by the position.
//  3. Per query: an exact radix select (8-bit digits, MSB first) finds the topk-th largest
//     64-bit key: warp-aggregated shared histograms (__match_any_sync), triple-buffered so a
//     pass costs one barrier, every warp finding the digit itself from the histogram. It
//     skips the leading bytes shared by all real keys (block min / max gathered while the
//     keys are written), stops as soon as the digit's bin holds exactly the keys still
//     needed, and is skipped entirely when the block has <= topk real keys. The selected
//     keys (<= topk; real keys are unique) are compacted into a buffer aliasing the table
//     (no longer needed), bitonic-sorted descending (next_pow2(topk) wide; by one warp up
//     to 256) and written, padded with INT64_MIN.
// holistic_candidate_keys: one thread per (query, candidate), table through the read-only
// cache (a decode step scores few thousand items: latency, not bandwidth, matters).
//
// Launch: blockDim = min(512, items_per_block / 2); dynamic shared memory =
// max(QB*M*K*4, next_pow2(topk)*8) + QB*items_per_block*4 bytes (+3.1 KB static); the grid
// is split into several launches only beyond 2^31-1 blocks. __launch_bounds__(512, 2) caps
// registers at 64 so that two blocks can share an SM when shared memory allows (one block's
// selection phase then overlaps the other's scoring). No synchronisation, no allocation;
// every launcher returns cudaGetLastError().
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "semid_fast/cuda_common.cuh"
#include "semid_fast/cuda_longid.h"

namespace semid_fast {
namespace cuda {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr uint64_t kSignBit = 1ull << 63;
constexpr int kMaxThreads = 512;
constexpr int kCandThreads = 256;
constexpr int64_t kMaxGridX = INT_MAX;
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kStaticSmemReserve = 4096;  // the kernels' static shared memory, rounded up

// ---------------------------------------------------------------------------------------
// Scores and keys

// IEEE round-to-nearest add / divide without flush-to-zero, whatever the compile flags
// (--use_fast_math would turn __fadd_rn into add.rn.ftz): the scores must match the
// reference bit for bit, subnormals included.
__device__ __forceinline__ float add_exact(float a, float b) {
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float div_exact(float a, float b) {
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

// Unsigned order word of a score: (uint32)ord32(s) ^ 0x80000000, so that unsigned order
// equals score order. 0 is reserved for "no item"; only the NaN 0xFFFFFFFF maps there, it is
// moved to 1.
__device__ __forceinline__ uint32_t order_word(float sum, float divisor) {
  uint32_t bits = __float_as_uint(div_exact(sum, divisor));
  if (bits == 0x80000000u) bits = 0u;  // -0.0 ties with +0.0, as in the reference
  const uint32_t ord = (bits & 0x80000000u) ? (bits ^ 0x7FFFFFFFu) : bits;
  const uint32_t word = ord ^ 0x80000000u;
  return word == 0u ? 1u : word;
}

// 64-bit key in unsigned form (key ^ 2^63): larger = better; 0 = no item.
__device__ __forceinline__ uint64_t unsigned_key(uint32_t word, int64_t item) {
  return word == 0u ? 0ull
                    : (uint64_t(word) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(item));
}

__device__ __forceinline__ int64_t signed_key(uint64_t ukey) { return int64_t(ukey ^ kSignBit); }

// ---------------------------------------------------------------------------------------
// Code rows, read in chunks of U bytes (U/sizeof(T) codes)

template <int U>
struct Chunk {
  uint32_t w[(U + 3) / 4];
};

template <int U>
__device__ __forceinline__ Chunk<U> load_chunk(const unsigned char* p) {
  Chunk<U> c;
  if constexpr (U == 16) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    c.w[0] = v.x;
    c.w[1] = v.y;
    c.w[2] = v.z;
    c.w[3] = v.w;
  } else if constexpr (U == 8) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    c.w[0] = v.x;
    c.w[1] = v.y;
  } else if constexpr (U == 4) {
    c.w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
  } else if constexpr (U == 2) {
    c.w[0] = __ldg(reinterpret_cast<const unsigned short*>(p));
  } else {
    c.w[0] = __ldg(p);
  }
  return c;
}

// Code e of a chunk as an unsigned 32-bit value. Negative codes become >= 2^31 and int64
// codes with a non-zero high word become 0xFFFFFFFF, so "code >= K" (K < 2^31) is the one
// test for every out-of-range code.
template <typename T, int U>
__device__ __forceinline__ uint32_t code_at(const Chunk<U>& c, int e) {
  if constexpr (sizeof(T) == 1) {
    return (c.w[e >> 2] >> (8 * (e & 3))) & 0xFFu;
  } else if constexpr (sizeof(T) == 2) {
    return uint32_t(int32_t(int16_t(uint16_t(c.w[e >> 1] >> (16 * (e & 1))))));
  } else if constexpr (sizeof(T) == 4) {
    return c.w[e];
  } else {
    return c.w[2 * e + 1] != 0u ? 0xFFFFFFFFu : c.w[2 * e];
  }
}

// ---------------------------------------------------------------------------------------
// Interleaved table entries: QB queries' values of one (position, code)

template <int QB>
struct Vec;
template <>
struct Vec<1> {
  using type = float;
  static __device__ __forceinline__ float get(float v, int) { return v; }
  static __device__ __forceinline__ float make(const float* v) { return v[0]; }
};
template <>
struct Vec<2> {
  using type = float2;
  static __device__ __forceinline__ float get(float2 v, int j) { return j == 0 ? v.x : v.y; }
  static __device__ __forceinline__ float2 make(const float* v) { return make_float2(v[0], v[1]); }
};
template <>
struct Vec<4> {
  using type = float4;
  static __device__ __forceinline__ float get(float4 v, int j) {
    return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w;
  }
  static __device__ __forceinline__ float4 make(const float* v) {
    return make_float4(v[0], v[1], v[2], v[3]);
  }
};

// ---------------------------------------------------------------------------------------
// Per-block top-k kernel

struct BlockArgs {
  const float* table;
  const unsigned char* codes;
  const uint8_t* mask;
  int64_t* out;
  int64_t b, n, mask_stride, mk, row_bytes;
  int64_t groups, n_blocks, first;  // linear block id = first + blockIdx.x
  int m, k, ipb, topk, pow2k;
  int a_bytes;  // bytes of the table / sort-buffer region (multiple of 16)
  float divisor;
};

// Shared state of the selection. stat_* are per query slot, gathered while the order words
// are written: the largest and smallest non-zero word and the number of non-zero words.
struct SelectShared {
  int hist[3][256];  // triple-buffered: one barrier per radix pass
  unsigned stat_max[4], stat_min[4], stat_count[4];
  int count;  // keys compacted into the sort buffer
};

__device__ __forceinline__ unsigned lanemask_lt() {
  unsigned m;
  asm("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
  return m;
}

__device__ __forceinline__ unsigned warp_max(unsigned v) {
#if __CUDA_ARCH__ >= 800
  return __reduce_max_sync(kFull, v);
#else
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFull, v, o));
  return v;
#endif
}
__device__ __forceinline__ unsigned warp_min(unsigned v) {
#if __CUDA_ARCH__ >= 800
  return __reduce_min_sync(kFull, v);
#else
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(kFull, v, o));
  return v;
#endif
}
__device__ __forceinline__ unsigned warp_sum(unsigned v) {
#if __CUDA_ARCH__ >= 800
  return __reduce_add_sync(kFull, v);
#else
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
#endif
}

// Bitonic sort of buf[0, p), descending, by threads [0, nthreads) of the block (p and
// nthreads powers of two). WARP: one warp, so __syncwarp is the only barrier needed.
template <bool WARP>
__device__ __forceinline__ void bitonic_desc(unsigned long long* buf, int p, int t0,
                                             int nthreads) {
  for (int size = 2; size <= p; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = t0; t < (p >> 1); t += nthreads) {
        const int lo = 2 * t - (t & (stride - 1));  // index whose `stride` bit is clear
        const int hi = lo + stride;
        const unsigned long long x = buf[lo], y = buf[hi];
        const bool desc = (lo & size) == 0;
        if (desc ? x < y : x > y) {
          buf[lo] = y;
          buf[hi] = x;
        }
      }
      if (WARP) __syncwarp();
      else __syncthreads();
    }
  }
}

// Top `topk` keys of query slot j (order words keys[r] for item item0 + r, r < ipb) into
// out[0, topk), sorted descending, padded with INT64_MIN. Called by the whole block; ipb is
// a multiple of blockDim.x, itself a multiple of 32, so every warp runs every loop
// iteration in full and the warp collectives below see all 32 lanes.
__device__ __forceinline__ void select_topk(const uint32_t* keys, int j, int ipb,
                                            int64_t item0, int topk, int pow2k,
                                            unsigned long long* buf, SelectShared& sh,
                                            int64_t* out) {
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31;
  for (int i = tid; i < 3 * 256; i += nt) (&sh.hist[0][0])[i] = 0;
  if (tid == 0) sh.count = 0;
  __syncthreads();  // also orders this query after the previous one's use of buf / count

  // Threshold `thr`: the wanted keys are the non-zero ones >= thr.
  unsigned long long thr = 0ull;  // fewer than topk real keys: take them all
  const unsigned valid = sh.stat_count[j];
  if (valid > unsigned(topk)) {
    // Radix select (8-bit digits, most significant first) of the topk-th largest key; it is
    // a real key, hence unique. Bytes shared by every real key are known from the block
    // min / max and skipped: the search would pick them with nothing above.
    const unsigned hi = sh.stat_max[j], lo = sh.stat_min[j];
    const int same = hi == lo ? 4 : (__clz(hi ^ lo) >> 3);
    unsigned long long prefix = 0ull;
    if (same > 0) {
      const unsigned keep = same == 4 ? 0xFFFFFFFFu : ~(0xFFFFFFFFu >> (8 * same));
      prefix = static_cast<unsigned long long>(hi & keep) << 32;
    }
    int need = topk;  // keys still to take among those matching `prefix`
    for (int pass = same; pass < 8; ++pass) {
      const int shift = 56 - 8 * pass;
      int* cur = sh.hist[pass % 3];
      // The buffer of the next pass was last read two passes ago: the barrier of the
      // previous pass separates those reads from this zeroing.
      int* nxt = sh.hist[(pass + 1) % 3];
      for (int i = tid; i < 256; i += nt) nxt[i] = 0;
      const unsigned long long hi_mask = pass == 0 ? 0ull : (~0ull << (shift + 8));
      for (int r = tid; r < ipb; r += nt) {
        const unsigned long long u = unsigned_key(keys[r], item0 + r);
        const bool take = (u & hi_mask) == prefix;
        const unsigned digit = unsigned(u >> shift) & 0xFFu;
        const unsigned active = __ballot_sync(kFull, take);
        if (take) {
          // Scores cluster, so many lanes share a digit: one atomic per distinct digit.
          const unsigned peers = __match_any_sync(active, digit);
          if ((peers & lanemask_lt()) == 0u) atomicAdd(&cur[digit], __popc(peers));
        }
      }
      __syncthreads();
      // Every warp finds the digit itself (same data, same result): no second barrier.
      // Lane L holds bins 255-8L down to 248-8L; the bin where the count from the top
      // reaches `need` is the next digit.
      const int top = 255 - 8 * lane;
      int h[8], local = 0;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        h[i] = cur[top - i];
        local += h[i];
      }
      int incl = local;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(kFull, incl, o);
        if (lane >= o) incl += v;
      }
      const int excl = incl - local;
      const bool mine = excl < need && need <= incl;  // exactly one lane
      int my_digit = 0, my_need = 0, my_done = 1;
      if (mine) {
        int acc = excl;
        bool found = false;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (!found && acc + h[i] >= need) {
            found = true;
            my_digit = top - i;
            my_need = need - acc;
            my_done = h[i] == need - acc;
          }
          acc += h[i];
        }
      }
      const unsigned owner = __ballot_sync(kFull, mine);
      if (owner == 0u) break;  // cannot happen (need <= keys matching prefix); be safe
      const int src = __ffs(owner) - 1;
      prefix |= static_cast<unsigned long long>(__shfl_sync(kFull, my_digit, src)) << shift;
      need = __shfl_sync(kFull, my_need, src);
      if (__shfl_sync(kFull, my_done, src)) break;  // every key matching prefix is wanted
    }
    thr = prefix;
  }

  // Compact the wanted keys (at most topk) into buf.
  for (int r = tid; r < ipb; r += nt) {
    const unsigned long long u = unsigned_key(keys[r], item0 + r);
    const bool sel = u != 0ull && u >= thr;
    const unsigned bal = __ballot_sync(kFull, sel);
    if (bal != 0u) {
      int base = 0;
      if (lane == 0) base = atomicAdd(&sh.count, __popc(bal));
      base = __shfl_sync(kFull, base, 0);
      const int pos = base + __popc(bal & lanemask_lt());
      if (sel && pos < pow2k) buf[pos] = u;
    }
  }
  __syncthreads();
  const int count = sh.count < pow2k ? sh.count : pow2k;
  if (pow2k <= 256) {
    // Small lists: one warp sorts without block barriers.
    if (tid < 32) {
      for (int i = count + tid; i < pow2k; i += 32) buf[i] = 0ull;  // sentinels sort last
      __syncwarp();
      bitonic_desc<true>(buf, pow2k, tid, 32);
      for (int i = tid; i < topk; i += 32) out[i] = signed_key(buf[i]);
    }
  } else {
    for (int i = count + tid; i < pow2k; i += nt) buf[i] = 0ull;
    __syncthreads();
    bitonic_desc<false>(buf, pow2k, tid, nt);
    for (int i = tid; i < topk; i += nt) out[i] = signed_key(buf[i]);
  }
  __syncthreads();  // buf, count and hist are reused by the next query
}

template <typename T, int U, int QB, bool SMEM, bool GUARD>
__global__ void __launch_bounds__(kMaxThreads, 2) block_topk_kernel(const BlockArgs a) {
  extern __shared__ float4 smem_f4[];
  __shared__ SelectShared sh;
  using VT = Vec<QB>;
  using V = typename VT::type;
  using Idx = std::conditional_t<SMEM, int, int64_t>;  // table offsets: int fits in smem
  constexpr int E = U / int(sizeof(T));                 // codes per chunk

  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t lin = a.first + blockIdx.x;
  const int64_t g = lin % a.groups;
  const int64_t blk = lin / a.groups;
  const int64_t q0 = g * QB;
  const int64_t item0 = blk * a.ipb;

  V* tab = reinterpret_cast<V*>(smem_f4);
  uint32_t* keys =
      reinterpret_cast<uint32_t*>(reinterpret_cast<unsigned char*>(smem_f4) + a.a_bytes);
  if (tid < QB) {
    sh.stat_max[tid] = 0u;
    sh.stat_min[tid] = 0xFFFFFFFFu;
    sh.stat_count[tid] = 0u;
  }

  if constexpr (SMEM) {
    // Stage the QB tables interleaved. Several loads in flight per thread: the staging is
    // latency-bound otherwise.
    const float* src = a.table + q0 * a.mk;
    const int total = int(a.mk);
    constexpr int R = 8 / QB;
    for (int base = tid; base < total; base += R * nt) {
      float v[R][QB];
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        const int e = base + rr * nt;
#pragma unroll
        for (int j = 0; j < QB; ++j)
          v[rr][j] = (e < total && q0 + j < a.b) ? __ldg(src + int64_t(j) * a.mk + e) : 0.0f;
      }
#pragma unroll
      for (int rr = 0; rr < R; ++rr) {
        const int e = base + rr * nt;
        if (e < total) tab[e] = VT::make(v[rr]);
      }
    }
  }
  __syncthreads();  // table staged, stats initialised
  const float* tq = a.table + q0 * a.mk;  // global fallback (QB == 1)
  const int chunks = int(a.row_bytes / U);
  const uint32_t kmax = uint32_t(a.k - 1);

  // Score two items per thread per iteration: r and r + nt (ipb is a multiple of 2 * nt).
  for (int r = tid; r < a.ipb; r += 2 * nt) {
    const int r2 = r + nt;
    const int64_t ia = item0 + r, ib = item0 + r2;
    const bool va = ia < a.n, vb = ib < a.n;
    // Items past N (last block only) read the block's first row and get no key.
    const unsigned char* pa = a.codes + (va ? ia : item0) * a.row_bytes;
    const unsigned char* pb = a.codes + (vb ? ib : item0) * a.row_bytes;
    float sa[QB], sb[QB];
#pragma unroll
    for (int j = 0; j < QB; ++j) sa[j] = sb[j] = 0.0f;
    uint32_t ma = 0u, mb = 0u;  // largest code seen (out-of-range check)
    Chunk<U> ca = load_chunk<U>(pa), cb = load_chunk<U>(pb);
    Idx mk_off = 0;  // m * K of the current position
    for (int ch = 0; ch < chunks; ++ch) {
      // Prefetch the next chunk while this one is scored.
      const bool more = ch + 1 < chunks;
      const Chunk<U> na = more ? load_chunk<U>(pa + int64_t(ch + 1) * U) : ca;
      const Chunk<U> nb = more ? load_chunk<U>(pb + int64_t(ch + 1) * U) : cb;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        uint32_t xa = code_at<T, U>(ca, e), xb = code_at<T, U>(cb, e);
        if constexpr (GUARD) {
          ma = max(ma, xa);
          mb = max(mb, xb);
          xa = min(xa, kmax);
          xb = min(xb, kmax);
        }
        if constexpr (SMEM) {
          const V ta = tab[mk_off + Idx(xa)];
          const V tb = tab[mk_off + Idx(xb)];
#pragma unroll
          for (int j = 0; j < QB; ++j) {
            sa[j] = add_exact(sa[j], VT::get(ta, j));
            sb[j] = add_exact(sb[j], VT::get(tb, j));
          }
        } else {
          sa[0] = add_exact(sa[0], __ldg(tq + mk_off + Idx(xa)));
          sb[0] = add_exact(sb[0], __ldg(tq + mk_off + Idx(xb)));
        }
        mk_off += Idx(a.k);
      }
      ca = na;
      cb = nb;
    }
    const bool oka = va && !(GUARD && ma > kmax);
    const bool okb = vb && !(GUARD && mb > kmax);
#pragma unroll
    for (int j = 0; j < QB; ++j) {
      const int64_t q = q0 + j;
      if (q >= a.b) break;
      const uint8_t* mrow = a.mask ? a.mask + q * a.mask_stride : nullptr;
      const bool ea = oka && !(mrow && __ldg(mrow + ia) != 0);
      const bool eb = okb && !(mrow && __ldg(mrow + ib) != 0);
      const uint32_t wa = ea ? order_word(sa[j], a.divisor) : 0u;
      const uint32_t wb = eb ? order_word(sb[j], a.divisor) : 0u;
      keys[j * a.ipb + r] = wa;
      keys[j * a.ipb + r2] = wb;
      // Block stats of the real keys, for the selection's shortcuts (warp-reduced first).
      const unsigned mx = warp_max(max(wa, wb));
      const unsigned mn = warp_min(min(wa ? wa : 0xFFFFFFFFu, wb ? wb : 0xFFFFFFFFu));
      const unsigned cnt = warp_sum(unsigned(wa != 0u) + unsigned(wb != 0u));
      if ((tid & 31) == 0 && cnt != 0u) {
        atomicMax(&sh.stat_max[j], mx);
        atomicMin(&sh.stat_min[j], mn);
        atomicAdd(&sh.stat_count[j], cnt);
      }
    }
  }
  __syncthreads();  // keys complete; the table region becomes the sort buffer

  unsigned long long* buf = reinterpret_cast<unsigned long long*>(smem_f4);
#pragma unroll 1
  for (int j = 0; j < QB; ++j) {
    const int64_t q = q0 + j;
    if (q >= a.b) break;  // uniform across the block
    select_topk(keys + j * a.ipb, j, a.ipb, item0, a.topk, a.pow2k, buf, sh,
                a.out + (q * a.n_blocks + blk) * a.topk);
  }
}

// ---------------------------------------------------------------------------------------
// Candidate keys kernel

struct CandArgs {
  const float* table;
  const unsigned char* codes;
  const int64_t* cand;
  const uint8_t* mask;
  int64_t* keys;
  int64_t b, n, c, mask_stride, mk, row_bytes, q_first;
  int k;
  float divisor;
};

template <typename T, int U>
__global__ void __launch_bounds__(kCandThreads) candidate_keys_kernel(const CandArgs a) {
  constexpr int E = U / int(sizeof(T));
  const int64_t q = a.q_first + blockIdx.y;
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= a.c || q >= a.b) return;
  const int64_t id = __ldg(a.cand + q * a.c + j);
  unsigned long long u = 0ull;
  if (id >= 0 && id < a.n && !(a.mask && __ldg(a.mask + q * a.mask_stride + id) != 0)) {
    const float* tq = a.table + q * a.mk;
    const unsigned char* p = a.codes + id * a.row_bytes;
    const int chunks = int(a.row_bytes / U);
    const uint32_t kmax = uint32_t(a.k - 1);
    float s = 0.0f;
    uint32_t mx = 0u;
    int64_t mk_off = 0;
    for (int ch = 0; ch < chunks; ++ch) {
      const Chunk<U> cc = load_chunk<U>(p + int64_t(ch) * U);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        uint32_t x = code_at<T, U>(cc, e);
        mx = max(mx, x);
        x = min(x, kmax);
        s = add_exact(s, __ldg(tq + mk_off + x));
        mk_off += a.k;
      }
    }
    if (mx <= kmax) u = unsigned_key(order_word(s, a.divisor), id);
  }
  a.keys[q * a.c + j] = signed_key(u);
}

// ---------------------------------------------------------------------------------------
// Host side

int64_t next_pow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

// Widest chunk (16, 4 or the code size; 8 for int64) that divides the row and the
// pointer's alignment. 0: the pointer is not even aligned to the code size.
int chunk_bytes(const void* codes, int code_bytes, int64_t row_bytes) {
  const auto addr = reinterpret_cast<std::uintptr_t>(codes);
  if (addr % code_bytes != 0) return 0;
  if (row_bytes % 16 == 0 && addr % 16 == 0) return 16;
  if (code_bytes < 4 && row_bytes % 4 == 0 && addr % 4 == 0) return 4;
  return code_bytes;
}

bool valid_common(int64_t b, int64_t m, int64_t k, int code_bytes, int64_t n,
                  int64_t mask_stride, float divisor) {
  if (b < 0 || m < 1 || k < 1 || n < 0 || mask_stride < 0) return false;
  if (m > INT_MAX / 8 || k > INT_MAX) return false;  // codes < 2^31; row bytes fit an int
  if (n >= (int64_t(1) << 32)) return false;         // ids are the low 32 bits of a key
  if (code_bytes != 1 && code_bytes != 2 && code_bytes != 4 && code_bytes != 8) return false;
  if (!(divisor > 0.0f)) return false;  // also rejects NaN
  return true;
}

template <typename T, int U, int QB, bool SMEM, bool GUARD>
cudaError_t launch_block(BlockArgs a, int threads, int64_t total_blocks, cudaStream_t stream) {
  auto kernel = block_topk_kernel<T, U, QB, SMEM, GUARD>;
  const size_t smem = size_t(a.a_bytes) + size_t(QB) * size_t(a.ipb) * 4;
  const cudaError_t e = allow_dynamic_smem(kernel, smem);
  if (e != cudaSuccess) return e;
  for (int64_t first = 0; first < total_blocks; first += kMaxGridX) {
    const int64_t count = total_blocks - first < kMaxGridX ? total_blocks - first : kMaxGridX;
    a.first = first;
    kernel<<<dim3(unsigned(count)), dim3(threads), smem, stream>>>(a);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <typename T, int U, bool GUARD>
cudaError_t dispatch_qb(const BlockArgs& a, int qb, bool smem_table, int threads, int64_t total,
                        cudaStream_t stream) {
  if (!smem_table) return launch_block<T, U, 1, false, GUARD>(a, threads, total, stream);
  if (qb == 4) return launch_block<T, U, 4, true, GUARD>(a, threads, total, stream);
  if (qb == 2) return launch_block<T, U, 2, true, GUARD>(a, threads, total, stream);
  return launch_block<T, U, 1, true, GUARD>(a, threads, total, stream);
}

cudaError_t dispatch_block(const BlockArgs& a, int code_bytes, int u, int qb, bool smem_table,
                           int threads, int64_t total, cudaStream_t stream) {
#define SEMID_QB(T_, U_, G_) dispatch_qb<T_, U_, G_>(a, qb, smem_table, threads, total, stream)
  switch (code_bytes) {
    case 1:
      // uint8 codes cannot reach K >= 256: no range check needed.
      if (a.k >= 256) {
        if (u == 16) return SEMID_QB(uint8_t, 16, false);
        if (u == 4) return SEMID_QB(uint8_t, 4, false);
        return SEMID_QB(uint8_t, 1, false);
      }
      if (u == 16) return SEMID_QB(uint8_t, 16, true);
      if (u == 4) return SEMID_QB(uint8_t, 4, true);
      return SEMID_QB(uint8_t, 1, true);
    case 2:
      if (u == 16) return SEMID_QB(int16_t, 16, true);
      if (u == 4) return SEMID_QB(int16_t, 4, true);
      return SEMID_QB(int16_t, 2, true);
    case 4:
      if (u == 16) return SEMID_QB(int32_t, 16, true);
      return SEMID_QB(int32_t, 4, true);
    default:
      if (u == 16) return SEMID_QB(int64_t, 16, true);
      return SEMID_QB(int64_t, 8, true);
  }
#undef SEMID_QB
}

template <typename T, int U>
cudaError_t launch_cand(CandArgs a, cudaStream_t stream) {
  const int64_t gx = (a.c + kCandThreads - 1) / kCandThreads;
  if (gx > kMaxGridX) return cudaErrorInvalidValue;
  for (int64_t q = 0; q < a.b; q += kMaxGridY) {
    const int64_t gy = a.b - q < kMaxGridY ? a.b - q : kMaxGridY;
    a.q_first = q;
    candidate_keys_kernel<T, U><<<dim3(unsigned(gx), unsigned(gy)), dim3(kCandThreads), 0,
                                  stream>>>(a);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t holistic_block_topk(const float* table, int64_t b, int64_t m, int64_t k,
                                const void* codes, int code_bytes, int64_t n,
                                const uint8_t* item_mask, int64_t mask_stride, float divisor,
                                int64_t topk, int64_t items_per_block, int64_t* block_keys,
                                cudaStream_t stream) {
  if (!valid_common(b, m, k, code_bytes, n, mask_stride, divisor)) return cudaErrorInvalidValue;
  const int64_t ipb = items_per_block;
  if (ipb < 256 || ipb > kHolisticMaxK || (ipb & (ipb - 1)) != 0) return cudaErrorInvalidValue;
  if (topk < 0 || topk > ipb) return cudaErrorInvalidValue;
  if (n == 0 || b == 0 || topk == 0) return cudaSuccess;
  if (!table || !codes || !block_keys) return cudaErrorInvalidValue;
  const int64_t row_bytes = m * code_bytes;
  const int u = chunk_bytes(codes, code_bytes, row_bytes);
  if (u == 0) return cudaErrorInvalidValue;

  int dev = 0, optin = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return e;
  }

  // The most queries per block whose tables fit in shared memory next to the order words.
  const int64_t pow2k = next_pow2(topk);
  const int64_t mk = m * k;
  const bool small_table = mk <= (int64_t(1) << 20);  // beyond: never fits, and no overflow
  auto region_a = [&](int qb, bool smem_table) {
    const int64_t tab = smem_table ? int64_t(qb) * mk * 4 : 0;
    const int64_t a = tab > pow2k * 8 ? tab : pow2k * 8;
    return (a + 15) / 16 * 16;
  };
  auto fits = [&](int qb, bool smem_table) {
    if (smem_table && !small_table) return false;
    return region_a(qb, smem_table) + int64_t(qb) * ipb * 4 + kStaticSmemReserve <= optin;
  };
  int qb = b >= 3 ? 4 : int(b);
  while (qb > 1 && !fits(qb, true)) qb /= 2;
  const bool smem_table = fits(qb, true);
  if (!smem_table) qb = 1;
  if (!fits(qb, smem_table)) return cudaErrorInvalidValue;  // cannot happen on sm_80+

  const int64_t n_blocks = (n + ipb - 1) / ipb;
  const int64_t groups = (b + qb - 1) / qb;
  if (groups > INT64_MAX / n_blocks) return cudaErrorInvalidValue;

  BlockArgs a;
  a.table = table;
  a.codes = static_cast<const unsigned char*>(codes);
  a.mask = item_mask;
  a.out = block_keys;
  a.b = b;
  a.n = n;
  a.mask_stride = mask_stride;
  a.mk = mk;
  a.row_bytes = row_bytes;
  a.groups = groups;
  a.n_blocks = n_blocks;
  a.first = 0;
  a.m = int(m);
  a.k = int(k);
  a.ipb = int(ipb);
  a.topk = int(topk);
  a.pow2k = int(pow2k);
  a.a_bytes = int(region_a(qb, smem_table));
  a.divisor = divisor;
  const int threads = int(ipb / 2 < kMaxThreads ? ipb / 2 : kMaxThreads);
  return dispatch_block(a, code_bytes, u, qb, smem_table, threads, n_blocks * groups, stream);
}

cudaError_t holistic_candidate_keys(const float* table, int64_t b, int64_t m, int64_t k,
                                    const void* codes, int code_bytes, int64_t n,
                                    const int64_t* candidates, int64_t c,
                                    const uint8_t* item_mask, int64_t mask_stride,
                                    float divisor, int64_t* keys, cudaStream_t stream) {
  if (!valid_common(b, m, k, code_bytes, n, mask_stride, divisor) || c < 0)
    return cudaErrorInvalidValue;
  if (b == 0 || c == 0) return cudaSuccess;
  // n == 0 still writes sentinel keys; table and codes are then never read.
  if (!candidates || !keys || (n > 0 && (!table || !codes))) return cudaErrorInvalidValue;
  const int64_t row_bytes = m * code_bytes;
  const int u = chunk_bytes(codes, code_bytes, row_bytes);
  if (u == 0) return cudaErrorInvalidValue;

  CandArgs a;
  a.table = table;
  a.codes = static_cast<const unsigned char*>(codes);
  a.cand = candidates;
  a.mask = item_mask;
  a.keys = keys;
  a.b = b;
  a.n = n;
  a.c = c;
  a.mask_stride = mask_stride;
  a.mk = m * k;
  a.row_bytes = row_bytes;
  a.q_first = 0;
  a.k = int(k);
  a.divisor = divisor;
  switch (code_bytes) {
    case 1:
      if (u == 16) return launch_cand<uint8_t, 16>(a, stream);
      if (u == 4) return launch_cand<uint8_t, 4>(a, stream);
      return launch_cand<uint8_t, 1>(a, stream);
    case 2:
      if (u == 16) return launch_cand<int16_t, 16>(a, stream);
      if (u == 4) return launch_cand<int16_t, 4>(a, stream);
      return launch_cand<int16_t, 2>(a, stream);
    case 4:
      if (u == 16) return launch_cand<int32_t, 16>(a, stream);
      return launch_cand<int32_t, 4>(a, stream);
    default:
      if (u == 16) return launch_cand<int64_t, 16>(a, stream);
      return launch_cand<int64_t, 8>(a, stream);
  }
}

}  // namespace cuda
}  // namespace semid_fast
