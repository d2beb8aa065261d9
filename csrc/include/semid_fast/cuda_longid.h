// CUDA launchers of the longid family (holistic scoring of long semantic IDs + top-k keys).
// Same scoring as longid.h: score[q, i] = sum over m = 0..M-1, in that order, of
// table[q, m, codes[i, m]] in float32, then one IEEE float division by `divisor` (1 for a
// sum, M for a mean), so the scores agree bit for bit with the reference.
//
// Ranking keys (int64, larger = better: higher score first, ties toward the smaller id):
//   key = ((int64)ord32(s) << 32) | (0xFFFFFFFF - i)
//   ord32(bits) = bits if the sign bit is clear, else bits ^ 0x7FFFFFFF (as int32),
//   with -0.0 turned into +0.0 first so that equal scores tie.
// INT64_MIN marks "no item": padding, excluded items, ids outside [0, N), and items whose
// codes fall outside [0, K) (never read out of bounds). A score whose bits are 0xFFFFFFFF (a
// NaN) gets ord32 INT32_MIN + 1 so that it stays distinct from the sentinel.
//
// Layouts (row-major, contiguous):
//   table        (B, M, K) float32
//   codes        (N, M) of code_bytes = 1 (uint8), 2 (int16), 4 (int32) or 8 (int64)
//   item_mask    nullptr or uint8 (1 = exclude): (N,) with mask_stride 0, (B, N) with N
//   block_keys   (B, n_blocks, topk) int64, n_blocks = ceil(N / items_per_block)
//   candidates   (B, C) int64, -1 = padding (deduplicated by the caller)
//   keys         (B, C) int64
//
// Every launcher enqueues on `stream`, never synchronises, never allocates, and returns
// cudaErrorInvalidValue for unsupported arguments or the launch's cudaGetLastError().
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace semid_fast {
namespace cuda {

// The most items one block sorts (items_per_block), so the largest topk of the block scan.
constexpr int64_t kHolisticMaxK = 4096;

// Top `topk` keys of every block of `items_per_block` consecutive items, for every query,
// in descending key order, padded with INT64_MIN:
//   block_keys[(q * n_blocks + blk) * topk + j].
// Requirements: items_per_block a power of two in [256, kHolisticMaxK];
// 0 <= topk <= items_per_block (topk == 0 writes nothing); N < 2^32; divisor > 0.
// n == 0 or b == 0: nothing is launched.
// The caller merges the (B, n_blocks * topk) keys (torch.topk) and decodes them.
cudaError_t holistic_block_topk(const float* table, int64_t b, int64_t m, int64_t k,
                                const void* codes, int code_bytes, int64_t n,
                                const uint8_t* item_mask, int64_t mask_stride, float divisor,
                                int64_t topk, int64_t items_per_block, int64_t* block_keys,
                                cudaStream_t stream);

// The key of every candidate: keys[q * c + j] for candidates[q * c + j] (INT64_MIN for -1
// padding, ids outside [0, N), excluded items and out-of-range codes).
cudaError_t holistic_candidate_keys(const float* table, int64_t b, int64_t m, int64_t k,
                                    const void* codes, int code_bytes, int64_t n,
                                    const int64_t* candidates, int64_t c,
                                    const uint8_t* item_mask, int64_t mask_stride,
                                    float divisor, int64_t* keys, cudaStream_t stream);

}  // namespace cuda
}  // namespace semid_fast
