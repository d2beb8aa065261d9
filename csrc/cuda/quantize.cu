// CUDA kernels of the quantize family: RQ / PQ encode and decode on raw pointers.
//
// Design
// ------
// Encode (rq_encode, pq_encode) is a small SGEMM fused with an argmin, so no (n, k) distance
// matrix ever reaches global memory. Distance = ||c||^2 - 2 r.c in fp32 (||r||^2 does not
// change the argmin); ties go to the smaller code, like the CPU backend.
//
// * encode_tiled_kernel<BM, BK, PQ> (the fast path). 256 threads; a block owns BM rows
//   (64, 32 or 16) and keeps their residuals in shared memory, transposed (dim-major) so a
//   thread reads its TM = BM/16 rows with one vector load. Codebooks stream through a
//   double-buffered shared tile of BK dims x 128 codewords (BK = 16, or 8 when the vector
//   is <= 8 wide), staged through registers because the tile is transposed on the way in;
//   the tile is XOR-swizzled in float4 groups so that both the transposing stores and the
//   float4 reads are free of bank conflicts. Each thread accumulates a TM x 8 register tile
//   (its 8 codewords are two float4 groups 64 apart, again for conflict-free reads). ||c||^2
//   is accumulated by the loading threads from the values they load (no workspace, no
//   extra pass) and reduced with 3 shuffles per tile. A running argmin per (thread, row)
//   lives in registers across all k-tiles; a 16-lane shuffle reduction ends the level.
//   RQ then subtracts the chosen codewords from the shared residuals, writes the optional
//   `quantized` (sum of codewords, same summation order as the reference) and `errors`
//   (||r||^2 after the level), and moves on to the next level inside the same kernel.
//   PQ uses the same kernel with one (row tile, sub-space) pair per work item.
//   Limit: BM=16 needs about 68 * roundup(d, 16) bytes of shared memory for the residual,
//   so d <= ~3100 on H100 (227 KB per block) and d <= ~2190 on A100 (163 KB).
// * encode_rows_kernel<R, PQ> (fallback for wider vectors): R = 8/4/2/1 rows per block in
//   shared memory, one warp per codeword at a time. Much slower per FLOP but handles d up
//   to ~58000 (H100) / ~41000 (A100); beyond that the launcher returns
//   cudaErrorInvalidValue.
//
// Decode (rq_decode, pq_decode) is a memory-bound gather: one thread per output float (or
// float4 when the width is a multiple of 4 and the pointers are 16-byte aligned), grid-stride
// loops, int64 offsets. Codes outside [0, k) contribute nothing (PQ writes zeros there).
//
// All launchers validate sizes (cudaErrorInvalidValue for unsupported ones), return
// cudaSuccess without launching when n == 0, launch on the given stream, never synchronise
// and return cudaGetLastError(). No cudaMalloc: everything lives in shared memory/registers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "semid_fast/cuda_common.cuh"
#include "semid_fast/cuda_quantize.h"
#include "semid_fast/common.h"

namespace semid_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;        // every kernel here uses 256-thread blocks
constexpr int kBN = 128;             // codewords per shared-memory tile (tiled encoder)
constexpr unsigned kFull = 0xffffffffu;
constexpr int64_t kMaxGrid = INT_MAX;  // gridDim.x limit; kernels grid-stride beyond it
constexpr int64_t kMaxK = int64_t(1) << 24;

__device__ __forceinline__ float load_float(const void* __restrict__ x, int dtype, int64_t i) {
  if (dtype == kFloat16) return __half2float(static_cast<const __half*>(x)[i]);
  if (dtype == kBFloat16) return __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]);
  return static_cast<const float*>(x)[i];
}

// Position of codeword column n (0..127) in row kk of a swizzled codebook tile: float4
// groups are XOR-ed with kk % 8, which keeps each group contiguous (float4 reads) while
// spreading the 8 dims that a warp stores for one group over 8 different banks.
__device__ __forceinline__ int swizzle(int n, int kk) {
  return ((((n >> 2) ^ (kk & 7))) << 2) | (n & 3);
}

// Merge (value, index) candidates: smaller value wins, ties go to the smaller index.
__device__ __forceinline__ void argmin_merge(float& best, int& idx, float v, int i) {
  if (v < best || (v == best && i < idx)) {
    best = v;
    idx = i;
  }
}

// ------------------------------------------------------------------------------------------
// Tiled encoder
// ------------------------------------------------------------------------------------------

template <int BM>
struct Tile {
  static constexpr int TM = BM / 16;  // rows per thread (16 thread-rows x 16 thread-cols)
  // Residual row stride (floats) in the transposed shared layout. The +4 (or +1 when each
  // thread reads single floats) spreads the update phase's accesses over all banks while
  // keeping TM-wide vector loads aligned.
  static constexpr int LDA = BM + (TM == 1 ? 1 : 4);
  static_assert(BM == 16 || BM == 32 || BM == 64, "BM must be 16, 32 or 64");
};

__host__ __device__ constexpr int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Shared memory (bytes) of encode_tiled_kernel<BM, BK> for vectors of width dw.
template <int BM, int BK>
constexpr int64_t tiled_smem_bytes(int64_t dw) {
  return 4 * (round_up(round_up(dw, BK) * Tile<BM>::LDA, 4) + 2 * BK * kBN + 2 * kBN + BM);
}

// Loads one BK x 128 chunk of a codebook into registers. Element `it` of thread tid is
// codeword (tid / 8) + 32 * (it % 4) of the tile and dim (tid % 8) + 8 * (it / 4) of the
// chunk: a warp reads 4 codewords x 8 consecutive floats (four full 32-byte sectors).
template <int BK>
__device__ __forceinline__ void load_codebook_chunk(float (&pre)[BK * kBN / kThreads],
                                                    const float* __restrict__ cb, int k, int dw,
                                                    int tile, int chunk, int tid) {
  constexpr int kElems = BK * kBN / kThreads;
  const int dim_lo = chunk * BK + (tid & 7);
#pragma unroll
  for (int it = 0; it < kElems; ++it) {
    const int c = tile * kBN + (tid >> 3) + 32 * (it & 3);
    const int j = dim_lo + 8 * (it >> 2);
    pre[it] = (c < k && j < dw) ? __ldg(cb + int64_t(c) * dw + j) : 0.0f;
  }
}

// x:        (n, d_row) rows; this kernel reads columns [col0, col0 + dw) of them where
//           col0 = group * dw for PQ and 0 for RQ.
// codebooks (groups, k, dw); codes (n, groups).
// RQ: one work item = one tile of BM rows, all `groups` levels in sequence.
// PQ: one work item = (row tile, sub-space), item = tile * groups + sub-space.
template <int BM, int BK, bool PQ>
__global__ void __launch_bounds__(kThreads, 2)
    encode_tiled_kernel(const void* __restrict__ x, int x_dtype, int64_t n, int64_t d_row,
                        int dw, const float* __restrict__ codebooks, int groups, int k,
                        int64_t* __restrict__ codes, float* __restrict__ quantized,
                        float* __restrict__ errors, int64_t n_items) {
  constexpr int TM = Tile<BM>::TM;
  constexpr int LDA = Tile<BM>::LDA;
  constexpr int kElems = BK * kBN / kThreads;
  static_assert(kElems == 4 || kElems == 8, "BK must be 8 or 16");

  extern __shared__ float4 smem_f4[];
  float* smem = reinterpret_cast<float*>(smem_f4);
  const int dpad = int(round_up(dw, BK));
  float* As = smem;                                        // [dpad][LDA] residuals, transposed
  float* Bs = smem + round_up(int64_t(dpad) * LDA, 4);     // [2][BK][kBN] swizzled codebook tiles
  float* s_norm = Bs + 2 * BK * kBN;                       // [2][kBN] ||c||^2 of a tile
  int* s_code = reinterpret_cast<int*>(s_norm + 2 * kBN);  // [BM] chosen codes

  const int tid = threadIdx.x;
  const int tn = tid & 15;  // thread column: codewords 4*tn..4*tn+3 and 64+4*tn..64+4*tn+3
  const int tm = tid >> 4;  // thread row: rows TM*tm..TM*tm+TM-1
  const int n_ktiles = (k + kBN - 1) / kBN;
  const int n_chunks = dpad / BK;
  const int total_steps = n_ktiles * n_chunks;

  for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
    const int64_t tile = PQ ? item / groups : item;
    const int g_first = PQ ? int(item - tile * groups) : 0;
    const int g_end = PQ ? g_first + 1 : groups;
    const int64_t row0 = tile * BM;
    const int64_t col0 = PQ ? int64_t(g_first) * dw : 0;

    __syncthreads();  // the previous item is done with As / s_code
    // x -> As (fp32, transposed). 8 lanes per row: coalesced enough globally, and the
    // transposed stores hit 32 distinct banks thanks to LDA.
    for (int m = tid >> 3; m < BM; m += kThreads / 8) {
      const int64_t row = row0 + m;
      for (int j = tid & 7; j < dpad; j += 8) {
        float v = 0.0f;
        if (row < n && j < dw) v = load_float(x, x_dtype, row * d_row + col0 + j);
        As[j * LDA + m] = v;
      }
    }
    __syncthreads();

    for (int g = g_first; g < g_end; ++g) {
      const float* __restrict__ cb = codebooks + int64_t(g) * k * dw;
      float best[TM];
      int best_idx[TM];
      float acc[TM][8];
      float norm_part[4];
      float pre[kElems];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        best[i] = __int_as_float(0x7f800000);  // +inf
        best_idx[i] = INT_MAX;
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[i][c] = 0.0f;
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) norm_part[q] = 0.0f;

      load_codebook_chunk<BK>(pre, cb, k, dw, 0, 0, tid);
      for (int step = 0; step < total_steps; ++step) {
        const int kt = step / n_chunks;
        const int ch = step - kt * n_chunks;
        const bool last_chunk = ch == n_chunks - 1;
        float* bs = Bs + (step & 1) * (BK * kBN);

        // Registers -> shared (transposed, swizzled); ||c||^2 from the same values.
#pragma unroll
        for (int it = 0; it < kElems; ++it) {
          const int nl = (tid >> 3) + 32 * (it & 3);
          const int kk = (tid & 7) + 8 * (it >> 2);
          bs[kk * kBN + swizzle(nl, kk)] = pre[it];
          norm_part[it & 3] = fmaf(pre[it], pre[it], norm_part[it & 3]);
        }
        if (last_chunk) {
          // The 8 lanes that loaded one codeword are lanes 8a..8a+7 of a warp.
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            float v = norm_part[q];
            v += __shfl_xor_sync(kFull, v, 1);
            v += __shfl_xor_sync(kFull, v, 2);
            v += __shfl_xor_sync(kFull, v, 4);
            // Double-buffered by tile parity: tile kt-1's epilogue may still be reading.
            if ((tid & 7) == 0) s_norm[(kt & 1) * kBN + (tid >> 3) + 32 * q] = v;
            norm_part[q] = 0.0f;
          }
        }
        __syncthreads();
        // Prefetch the next chunk while this one is multiplied (one barrier per chunk is
        // enough: the buffer written next step was last read before this barrier).
        if (step + 1 < total_steps) {
          const int nkt = (step + 1) / n_chunks;
          load_codebook_chunk<BK>(pre, cb, k, dw, nkt, step + 1 - nkt * n_chunks, tid);
        }

        const float* a_ptr = As + ch * BK * LDA + tm * TM;
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
          float a[TM];
          if constexpr (TM == 4) {
            const float4 t = *reinterpret_cast<const float4*>(a_ptr + kk * LDA);
            a[0] = t.x; a[1] = t.y; a[2] = t.z; a[3] = t.w;
          } else if constexpr (TM == 2) {
            const float2 t = *reinterpret_cast<const float2*>(a_ptr + kk * LDA);
            a[0] = t.x; a[1] = t.y;
          } else {
            a[0] = a_ptr[kk * LDA];
          }
          const float4 b0 = *reinterpret_cast<const float4*>(bs + kk * kBN + ((tn ^ (kk & 7)) << 2));
          const float4 b1 =
              *reinterpret_cast<const float4*>(bs + kk * kBN + (((tn | 16) ^ (kk & 7)) << 2));
#pragma unroll
          for (int i = 0; i < TM; ++i) {
            acc[i][0] = fmaf(a[i], b0.x, acc[i][0]);
            acc[i][1] = fmaf(a[i], b0.y, acc[i][1]);
            acc[i][2] = fmaf(a[i], b0.z, acc[i][2]);
            acc[i][3] = fmaf(a[i], b0.w, acc[i][3]);
            acc[i][4] = fmaf(a[i], b1.x, acc[i][4]);
            acc[i][5] = fmaf(a[i], b1.y, acc[i][5]);
            acc[i][6] = fmaf(a[i], b1.z, acc[i][6]);
            acc[i][7] = fmaf(a[i], b1.w, acc[i][7]);
          }
        }

        if (last_chunk) {
          // Distances of this tile, folded into the running argmin. Each thread visits its
          // codes in increasing order, so a strict '<' keeps the smaller code on ties.
          const float* nrm = s_norm + (kt & 1) * kBN;
          const float4 n0 = *reinterpret_cast<const float4*>(nrm + 4 * tn);
          const float4 n1 = *reinterpret_cast<const float4*>(nrm + 64 + 4 * tn);
          const float nv[8] = {n0.x, n0.y, n0.z, n0.w, n1.x, n1.y, n1.z, n1.w};
          const int base = kt * kBN + 4 * tn;
#pragma unroll
          for (int c = 0; c < 8; ++c) {
            const int code = base + (c & 3) + 64 * (c >> 2);
            if (code < k) {
#pragma unroll
              for (int i = 0; i < TM; ++i) {
                const float dist = fmaf(-2.0f, acc[i][c], nv[c]);
                if (dist < best[i]) {
                  best[i] = dist;
                  best_idx[i] = code;
                }
              }
            }
          }
#pragma unroll
          for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int c = 0; c < 8; ++c) acc[i][c] = 0.0f;
        }
      }

      // Reduce over the 16 thread-columns (lanes 0-15 or 16-31 of a warp share tm).
#pragma unroll
      for (int off = 8; off >= 1; off >>= 1) {
#pragma unroll
        for (int i = 0; i < TM; ++i) {
          const float ov = __shfl_xor_sync(kFull, best[i], off);
          const int oi = __shfl_xor_sync(kFull, best_idx[i], off);
          argmin_merge(best[i], best_idx[i], ov, oi);
        }
      }
      if (tn == 0) {
#pragma unroll
        for (int i = 0; i < TM; ++i) {
          const int m = tm * TM + i;
          // No finite distance (cannot happen with finite inputs): fall back to code 0 so
          // the residual update below still reads inside the codebook.
          const int code = best_idx[i] == INT_MAX ? 0 : best_idx[i];
          s_code[m] = code;
          const int64_t row = row0 + m;
          if (row < n) codes[row * groups + g] = code;
        }
      }
      __syncthreads();

      if constexpr (!PQ) {
        // r -= c (shared), quantized += c, errors = ||r||^2. 8 lanes per row, as in the load.
        for (int m = tid >> 3; m < BM; m += kThreads / 8) {
          const int64_t row = row0 + m;
          float sq = 0.0f;
          if (row < n) {
            const float* __restrict__ cw = cb + int64_t(s_code[m]) * dw;
            for (int j = tid & 7; j < dw; j += 8) {
              const float c = __ldg(cw + j);
              const float r = As[j * LDA + m] - c;
              As[j * LDA + m] = r;
              sq = fmaf(r, r, sq);
              if (quantized != nullptr) {
                float* qp = quantized + row * dw + j;
                *qp = (g == 0 ? 0.0f : *qp) + c;
              }
            }
          }
          // Whole warps run this loop the same number of times, so the shuffles are safe.
          sq += __shfl_xor_sync(kFull, sq, 1);
          sq += __shfl_xor_sync(kFull, sq, 2);
          sq += __shfl_xor_sync(kFull, sq, 4);
          if (errors != nullptr && row < n && (tid & 7) == 0) errors[row * groups + g] = sq;
        }
        __syncthreads();
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Row encoder (fallback for vectors too wide for the tiled kernel's shared residuals)
// ------------------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off >= 1; off >>= 1) v += __shfl_xor_sync(kFull, v, off);
  return v;
}

template <int R>
constexpr int64_t rows_smem_bytes(int64_t dw) {
  return 4 * (int64_t(R) * dw) + (kThreads / 32) * R * 8 + R * 4;
}

template <int R, bool PQ>
__global__ void __launch_bounds__(kThreads)
    encode_rows_kernel(const void* __restrict__ x, int x_dtype, int64_t n, int64_t d_row,
                       int dw, const float* __restrict__ codebooks, int groups, int k,
                       int64_t* __restrict__ codes, float* __restrict__ quantized,
                       float* __restrict__ errors, int64_t n_items) {
  constexpr int kWarps = kThreads / 32;
  extern __shared__ float4 smem_f4[];
  float* res = reinterpret_cast<float*>(smem_f4);  // [R][dw]
  float* s_val = res + int64_t(R) * dw;             // [kWarps][R]
  int* s_idx = reinterpret_cast<int*>(s_val + kWarps * R);
  int* s_code = s_idx + kWarps * R;                 // [R]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

  for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
    const int64_t tile = PQ ? item / groups : item;
    const int g_first = PQ ? int(item - tile * groups) : 0;
    const int g_end = PQ ? g_first + 1 : groups;
    const int64_t row0 = tile * R;
    const int64_t col0 = PQ ? int64_t(g_first) * dw : 0;

    __syncthreads();
    for (int r = 0; r < R; ++r) {
      const int64_t row = row0 + r;
      for (int j = tid; j < dw; j += kThreads)
        res[r * dw + j] = row < n ? load_float(x, x_dtype, row * d_row + col0 + j) : 0.0f;
    }
    __syncthreads();

    for (int g = g_first; g < g_end; ++g) {
      const float* __restrict__ cb = codebooks + int64_t(g) * k * dw;
      float best[R];
      int best_idx[R];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        best[r] = __int_as_float(0x7f800000);
        best_idx[r] = INT_MAX;
      }
      // Warp w scores codes w, w + 8, ...: increasing, so '<' keeps the smaller on ties.
      for (int c = warp; c < k; c += kWarps) {
        const float* __restrict__ cw = cb + int64_t(c) * dw;
        float dot[R], nrm = 0.0f;
#pragma unroll
        for (int r = 0; r < R; ++r) dot[r] = 0.0f;
#pragma unroll 2
        for (int j = lane; j < dw; j += 32) {
          const float v = __ldg(cw + j);
          nrm = fmaf(v, v, nrm);
#pragma unroll
          for (int r = 0; r < R; ++r) dot[r] = fmaf(res[r * dw + j], v, dot[r]);
        }
        nrm = warp_sum(nrm);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const float dist = fmaf(-2.0f, warp_sum(dot[r]), nrm);
          if (dist < best[r]) {
            best[r] = dist;
            best_idx[r] = c;
          }
        }
      }
      if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          s_val[warp * R + r] = best[r];
          s_idx[warp * R + r] = best_idx[r];
        }
      }
      __syncthreads();
      if (tid < R) {
        float b = s_val[tid];
        int bi = s_idx[tid];
        for (int w = 1; w < kWarps; ++w) argmin_merge(b, bi, s_val[w * R + tid], s_idx[w * R + tid]);
        const int code = bi == INT_MAX ? 0 : bi;
        s_code[tid] = code;
        const int64_t row = row0 + tid;
        if (row < n) codes[row * groups + g] = code;
      }
      __syncthreads();

      if constexpr (!PQ) {
        // Warp w updates rows w, w + 8, ... (warp-uniform loop: shuffles are safe).
        for (int r = warp; r < R; r += kWarps) {
          const int64_t row = row0 + r;
          if (row >= n) continue;
          const float* __restrict__ cw = cb + int64_t(s_code[r]) * dw;
          float sq = 0.0f;
          for (int j = lane; j < dw; j += 32) {
            const float c = __ldg(cw + j);
            const float v = res[r * dw + j] - c;
            res[r * dw + j] = v;
            sq = fmaf(v, v, sq);
            if (quantized != nullptr) {
              float* qp = quantized + row * dw + j;
              *qp = (g == 0 ? 0.0f : *qp) + c;
            }
          }
          sq = warp_sum(sq);
          if (errors != nullptr && lane == 0) errors[row * groups + g] = sq;
        }
        __syncthreads();
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// Decoders
// ------------------------------------------------------------------------------------------

// out (n, d) = sum over levels of codebooks[l, codes[i, l]]; VEC: 4 floats per thread.
template <bool VEC>
__global__ void __launch_bounds__(kThreads)
    rq_decode_kernel(const int64_t* __restrict__ codes, int64_t n, int64_t levels,
                     const float* __restrict__ codebooks, int64_t k, int64_t d,
                     float* __restrict__ out) {
  constexpr int W = VEC ? 4 : 1;
  const int64_t per_row = d / W;
  const int64_t total = n * per_row;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t row = i / per_row;
    const int64_t j = (i - row * per_row) * W;
    const int64_t* __restrict__ rc = codes + row * levels;
    if constexpr (VEC) {
      float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      for (int64_t l = 0; l < levels; ++l) {
        const int64_t c = __ldg(rc + l);
        if (c < 0 || c >= k) continue;
        const float4 v = __ldg(reinterpret_cast<const float4*>(codebooks + (l * k + c) * d + j));
        s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
      }
      *reinterpret_cast<float4*>(out + row * d + j) = s;
    } else {
      float s = 0.0f;
      for (int64_t l = 0; l < levels; ++l) {
        const int64_t c = __ldg(rc + l);
        if (c < 0 || c >= k) continue;
        s += __ldg(codebooks + (l * k + c) * d + j);
      }
      out[row * d + j] = s;
    }
  }
}

// out (n, m * dsub): block s of row i is codebooks[s, codes[i, s]] (zeros if out of range).
template <bool VEC>
__global__ void __launch_bounds__(kThreads)
    pq_decode_kernel(const int64_t* __restrict__ codes, int64_t n, int64_t m,
                     const float* __restrict__ codebooks, int64_t k, int64_t dsub,
                     float* __restrict__ out) {
  constexpr int W = VEC ? 4 : 1;
  const int64_t per_sub = dsub / W;
  const int64_t total = n * m * per_sub;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t rs = i / per_sub;  // row * m + s: also the index into codes
    const int64_t j = (i - rs * per_sub) * W;
    const int64_t s = rs % m;
    const int64_t c = __ldg(codes + rs);
    const bool ok = c >= 0 && c < k;
    const float* src = codebooks + (s * k + (ok ? c : 0)) * dsub + j;
    if constexpr (VEC) {
      const float4 v = ok ? __ldg(reinterpret_cast<const float4*>(src))
                          : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      *reinterpret_cast<float4*>(out + rs * dsub + j) = v;
    } else {
      out[rs * dsub + j] = ok ? __ldg(src) : 0.0f;
    }
  }
}

// ------------------------------------------------------------------------------------------
// Launch helpers
// ------------------------------------------------------------------------------------------

struct DeviceLimits {
  int sms = 0;
  int smem_block_optin = 0;  // bytes one block may opt in to
  int smem_sm = 0;           // bytes per multiprocessor
};

cudaError_t query_limits(DeviceLimits* lim) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&lim->sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&lim->smem_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&lim->smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
  if (e != cudaSuccess) cudaGetLastError();  // do not leave it for an unrelated later check
  return e;
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), int64_t items, int64_t smem, cudaStream_t stream,
                   Args... args) {
  const cudaError_t e = allow_dynamic_smem(kernel, size_t(smem));
  if (e != cudaSuccess) return e;
  const int64_t grid = items < kMaxGrid ? items : kMaxGrid;
  kernel<<<dim3(unsigned(grid)), dim3(kThreads), size_t(smem), stream>>>(args...);
  return cudaGetLastError();
}

template <int BM, int BK, bool PQ>
cudaError_t launch_tiled(const void* x, int x_dtype, int64_t n, int64_t d_row, int dw,
                         const float* cb, int groups, int k, int64_t* codes, float* quantized,
                         float* errors, cudaStream_t stream) {
  const int64_t tiles = (n + BM - 1) / BM;
  const int64_t items = PQ ? tiles * groups : tiles;
  return launch(encode_tiled_kernel<BM, BK, PQ>, items, tiled_smem_bytes<BM, BK>(dw), stream,
                x, x_dtype, n, d_row, dw, cb, groups, k, codes, quantized, errors, items);
}

template <int R, bool PQ>
cudaError_t launch_rows(const void* x, int x_dtype, int64_t n, int64_t d_row, int dw,
                        const float* cb, int groups, int k, int64_t* codes, float* quantized,
                        float* errors, cudaStream_t stream) {
  const int64_t tiles = (n + R - 1) / R;
  const int64_t items = PQ ? tiles * groups : tiles;
  return launch(encode_rows_kernel<R, PQ>, items, rows_smem_bytes<R>(dw), stream, x, x_dtype, n,
                d_row, dw, cb, groups, k, codes, quantized, errors, items);
}

// Shared by rq_encode (PQ = false: dw = d, groups = levels) and pq_encode (PQ = true:
// dw = dsub, groups = m). Tile choice: BM=16 reads 3 shared words per 8 FMAs and is
// shared-memory bound, so it is only a last resort. First the largest BM >= 32 that fits
// twice per SM and still gives every SM a block; then the largest that fits and gives every
// SM a block; then (small n) the smallest that fits, for the most blocks. Not tuned on a GPU.
template <bool PQ>
cudaError_t encode(const void* x, int x_dtype, int64_t n, int64_t d_row, int64_t dw,
                   const float* cb, int64_t groups, int64_t k, int64_t* codes, float* quantized,
                   float* errors, cudaStream_t stream) {
  DeviceLimits lim;
  const cudaError_t e = query_limits(&lim);
  if (e != cudaSuccess) return e;
  const int64_t optin = lim.smem_block_optin;
  const int bk = dw <= 8 ? 8 : 16;
  const int dwi = int(dw), gi = int(groups), ki = int(k);

  auto bytes = [&](int bm) -> int64_t {
    if (bk == 8)
      return bm == 64 ? tiled_smem_bytes<64, 8>(dw)
                      : bm == 32 ? tiled_smem_bytes<32, 8>(dw) : tiled_smem_bytes<16, 8>(dw);
    return bm == 64 ? tiled_smem_bytes<64, 16>(dw)
                    : bm == 32 ? tiled_smem_bytes<32, 16>(dw) : tiled_smem_bytes<16, 16>(dw);
  };
  auto items = [&](int bm) { return (n + bm - 1) / bm * (PQ ? groups : 1); };
  const int candidates[3] = {64, 32, 16};
  int bm = 0;
  for (int pass = 0; pass < 3 && bm == 0; ++pass) {
    for (int c : candidates) {
      const int64_t b = bytes(c);
      if (b > optin) continue;
      const bool two_per_sm = 2 * (b + 1024) <= lim.smem_sm;  // ~1 KB reserved per block
      const bool fills = items(c) >= lim.sms;
      if ((pass == 0 && two_per_sm && fills && c >= 32) || (pass == 1 && fills) || pass == 2) {
        bm = c;
        if (pass < 2) break;  // pass 2 keeps the smallest fitting tile: most blocks
      }
    }
  }

#define SEMID_TILED(BM_, BK_) \
  launch_tiled<BM_, BK_, PQ>(x, x_dtype, n, d_row, dwi, cb, gi, ki, codes, quantized, errors, stream)
  if (bm != 0) {
    if (bk == 8) {
      if (bm == 64) return SEMID_TILED(64, 8);
      if (bm == 32) return SEMID_TILED(32, 8);
      return SEMID_TILED(16, 8);
    }
    if (bm == 64) return SEMID_TILED(64, 16);
    if (bm == 32) return SEMID_TILED(32, 16);
    return SEMID_TILED(16, 16);
  }
#undef SEMID_TILED

#define SEMID_ROWS(R_) \
  launch_rows<R_, PQ>(x, x_dtype, n, d_row, dwi, cb, gi, ki, codes, quantized, errors, stream)
  if (rows_smem_bytes<8>(dw) <= optin) return SEMID_ROWS(8);
  if (rows_smem_bytes<4>(dw) <= optin) return SEMID_ROWS(4);
  if (rows_smem_bytes<2>(dw) <= optin) return SEMID_ROWS(2);
  if (rows_smem_bytes<1>(dw) <= optin) return SEMID_ROWS(1);
#undef SEMID_ROWS
  return cudaErrorInvalidValue;  // one vector does not fit in shared memory
}

bool valid_dtype(int t) { return t == kFloat32 || t == kFloat16 || t == kBFloat16; }

int64_t decode_grid(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return blocks < (int64_t(1) << 20) ? blocks : (int64_t(1) << 20);  // grid-stride beyond
}

}  // namespace

cudaError_t rq_encode(const void* x, int x_dtype, int64_t n, int64_t d, const float* codebooks,
                      int64_t levels, int64_t k, int64_t* codes, float* quantized, float* errors,
                      cudaStream_t stream) {
  if (n < 0 || d <= 0 || d > INT_MAX || levels <= 0 || levels > INT_MAX || k <= 0 || k > kMaxK ||
      !valid_dtype(x_dtype))
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (x == nullptr || codebooks == nullptr || codes == nullptr) return cudaErrorInvalidValue;
  return encode<false>(x, x_dtype, n, d, d, codebooks, levels, k, codes, quantized, errors,
                       stream);
}

cudaError_t pq_encode(const void* x, int x_dtype, int64_t n, int64_t d, const float* codebooks,
                      int64_t m, int64_t k, int64_t* codes, cudaStream_t stream) {
  if (n < 0 || d <= 0 || m <= 0 || m > INT_MAX || d % m != 0 || d / m > INT_MAX || k <= 0 ||
      k > kMaxK || !valid_dtype(x_dtype))
    return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (x == nullptr || codebooks == nullptr || codes == nullptr) return cudaErrorInvalidValue;
  return encode<true>(x, x_dtype, n, d, d / m, codebooks, m, k, codes, nullptr, nullptr, stream);
}

cudaError_t rq_decode(const int64_t* codes, int64_t n, int64_t levels, const float* codebooks,
                      int64_t k, int64_t d, float* out, cudaStream_t stream) {
  if (n < 0 || levels <= 0 || k <= 0 || d <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (codes == nullptr || codebooks == nullptr || out == nullptr) return cudaErrorInvalidValue;
  if (d % 4 == 0 && aligned16(codebooks) && aligned16(out)) {
    const int64_t total = n * (d / 4);
    rq_decode_kernel<true><<<unsigned(decode_grid(total)), kThreads, 0, stream>>>(
        codes, n, levels, codebooks, k, d, out);
  } else {
    rq_decode_kernel<false><<<unsigned(decode_grid(n * d)), kThreads, 0, stream>>>(
        codes, n, levels, codebooks, k, d, out);
  }
  return cudaGetLastError();
}

cudaError_t pq_decode(const int64_t* codes, int64_t n, int64_t m, const float* codebooks,
                      int64_t k, int64_t dsub, float* out, cudaStream_t stream) {
  if (n < 0 || m <= 0 || k <= 0 || dsub <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (codes == nullptr || codebooks == nullptr || out == nullptr) return cudaErrorInvalidValue;
  if (dsub % 4 == 0 && aligned16(codebooks) && aligned16(out)) {
    const int64_t total = n * m * (dsub / 4);
    pq_decode_kernel<true><<<unsigned(decode_grid(total)), kThreads, 0, stream>>>(
        codes, n, m, codebooks, k, dsub, out);
  } else {
    pq_decode_kernel<false><<<unsigned(decode_grid(n * m * dsub)), kThreads, 0, stream>>>(
        codes, n, m, codebooks, k, dsub, out);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace semid_fast
