// Raw-pointer ABI of the longid family (holistic scoring of long semantic IDs + top-k).
//
// score[b, n] = sum over m = 0..M-1 (in that order, float32) of table[b, m, codes[n, m]],
// divided by `divisor` (1 for a sum, M for a mean).
// Ranking: higher score first, ties toward the smaller item id; missing results are padded
// with score -inf and id -1.
//
// Layouts (row-major, contiguous):
//   table        (B, M, K) float32, query-interleaved by the caller into
//                (ceil(B/L), M, K, L), L = kHolisticQueryLanes, when `interleaved` is set
//   codes        (N, M) of 1, 2, 4 or 8-byte integers (code_bytes; 1 = unsigned)
//   packed       nullptr, or uint8 codes repacked by holistic_pack_codes (the catalog scan
//                then reads them instead of transposing `codes` on each call)
//   candidates   (B, C) int64: score only these ids (-1 = padding, duplicates once); C < 0
//                scores the whole catalog (candidates unread). C = 0 scores no item: an empty
//                list has a null pointer too, so the pointer never says "absent".
//   item_mask    uint8, nullptr, (N,) (mask_stride 0) or (B, N) (mask_stride N): 1 = exclude
//   out_scores   (B, topk) float32, out_ids (B, topk) int64
//
// holistic_pack_codes: (N, M) uint8 codes into the layout of the bounded catalog scan (the
// AVX-512 build on CPUs with VBMI; M = 16, 32, 64, 128, 192 or 256), floor(N / 512) * 512 * M
// bytes: position-major blocks of kHolisticPackItems items. kBadArgument where there is none.
//
// Benchmark floors for `semid-fast bench` (no op calls them):
//   stream_read_floor          sums n_bytes as 64-bit words (n_threads threads): the time to
//                              read a buffer once from memory. out_sum: one uint64.
//   holistic_lookup_floor_f32  the catalog scan's lookups for `groups` groups of 8 queries
//                              over (N, M) uint8 codes, every position reading one L1-resident
//                              (256, 8) table: the lookup throughput with no cache miss and no
//                              top-k. out: ceil(N / 1024) floats (to keep the work alive).
//   holistic_steps_floor       the bounded scan's summing of grid steps for B queries over N
//                              items, codes and table L1-resident: its lookup throughput.
//                              out: one uint64. kBadArgument where there is no bounded scan.
#pragma once
#include <cstdint>

#include "semid_fast/common.h"

namespace semid_fast {

// The catalog scan reads the table entries of this many queries with one vector load.
constexpr int kHolisticQueryLanes = 8;
// Items per block of the packed code layout (holistic_pack_codes).
constexpr int64_t kHolisticPackItems = 512;
// Catalogs of fewer items than this (unless packed) take the exact scan even where the bounded
// one exists: its fixed cost per query (rounding the table, k exact scores) is not repaid.
constexpr int64_t kHolisticBoundedMinItems = 4096;

#define SEMID_FAST_DECLARE_CPU_LONGID(ns)                                                      \
  namespace ns {                                                                              \
  int holistic_topk_f32(const float* table, int interleaved, int64_t b, int64_t m, int64_t k, \
                        const void* codes, int code_bytes, int64_t n, const uint8_t* packed,  \
                        const int64_t* candidates, int64_t c, const uint8_t* item_mask,       \
                        int64_t mask_stride, float divisor, int64_t topk, float* out_scores,  \
                        int64_t* out_ids, int n_threads);                                     \
  int stream_read_floor(const uint8_t* bytes, int64_t n_bytes, uint64_t* out_sum,             \
                        int n_threads);                                                       \
  int holistic_lookup_floor_f32(const float* table, const uint8_t* codes, int64_t n,           \
                                int64_t m, int64_t groups, float* out, int n_threads);          \
  int holistic_steps_floor(int64_t n, int64_t m, int64_t b, uint64_t* out, int n_threads);     \
  int holistic_pack_codes(const uint8_t* codes, int64_t n, int64_t m, uint8_t* out,             \
                          int n_threads);                                                       \
  }

SEMID_FAST_DECLARE_CPU_LONGID(isa_avx2)
SEMID_FAST_DECLARE_CPU_LONGID(isa_base)
SEMID_FAST_DECLARE_CPU_LONGID(isa_avx512)  // defined where the build has AVX-512

}  // namespace semid_fast
