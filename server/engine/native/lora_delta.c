/* The LoRA update of a batch on the CPU, row by row and in one fixed order: a row's update depends
 * on its own input and its adapter's weights, never on the other rows, on how many tokens are
 * computed at once, or on the largest rank in the batch (lora/native_delta.py says why a served
 * row needs that).
 *
 * Every value is one dot product: 16 lanes, lane l summing the terms l, l + 16, l + 32, ... in order
 * with fused multiply-adds (a tail of fewer than 16 terms in the first lanes, the rest adding
 * nothing), then the lanes added in one fixed tree (halves, quarters, ...). Terms past a row's own
 * rank are zeros in the slot stacks, and adding a product of zeros changes no value, so a row gets
 * the same bits in a batch whose largest rank is higher.
 *
 * down: h[b, t, j] = x[b, t, :] . A[slot[b], j, :]              for j < width
 * up:   out[b, t, n] += h[b, t, lo : lo + R] . B[slot[b], n, :R]   for n < N
 * Rows whose slot is negative (base rows) are skipped: their h is left as it is, their out untouched.
 * x, A, B, out are strided with their last dimension contiguous; h is [rows, T, hw], contiguous.
 */
#include <stdint.h>
#include <string.h>
#include "parallel.h"

#define LANES 16
typedef float lanes_t __attribute__((vector_size(LANES * sizeof(float))));
typedef float half_t __attribute__((vector_size(LANES / 2 * sizeof(float))));
typedef float quarter_t __attribute__((vector_size(LANES / 4 * sizeof(float))));
typedef float eighth_t __attribute__((vector_size(LANES / 8 * sizeof(float))));

static inline lanes_t load(const float *p, int64_t n) {
    lanes_t v = {0};
    memcpy(&v, p, sizeof(float) * (size_t)(n < LANES ? n : LANES));
    return v;
}

static inline float lanes_sum(lanes_t v) {
    half_t h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7)
             + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    quarter_t q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    eighth_t e = __builtin_shufflevector(q, q, 0, 1) + __builtin_shufflevector(q, q, 2, 3);
    return e[0] + e[1];
}

static inline float dot(const float *a, const float *b, int64_t n) {
    lanes_t acc = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        lanes_t x, y;
        memcpy(&x, a + i, sizeof x);
        memcpy(&y, b + i, sizeof y);
        acc += x * y;
    }
    if (i < n) acc += load(a + i, n - i) * load(b + i, n - i);
    return lanes_sum(acc);
}

void lora_down(const float *x, int64_t rows, int64_t T, int64_t K, int64_t sxb, int64_t sxt,
               const int64_t *slot, const float *A, int64_t sas, int64_t saj, int64_t width, float *h)
{
#pragma omp parallel for collapse(2) schedule(static) if (rows * T * width * K >= PARALLEL_MIN_WORK)
    for (int64_t b = 0; b < rows; b++)
        for (int64_t t = 0; t < T; t++) {
            if (slot[b] < 0) continue;
            const float *xv = x + b * sxb + t * sxt, *a = A + slot[b] * sas;
            float *hv = h + (b * T + t) * width;
            for (int64_t j = 0; j < width; j++) hv[j] = dot(xv, a + j * saj, K);
        }
}

void lora_up(const float *h, int64_t rows, int64_t T, int64_t hw, int64_t lo, int64_t R, const int64_t *slot,
             const float *B, int64_t sbs, int64_t sbn, int64_t N, float *out, int64_t sob, int64_t sot)
{
    const int64_t chunk = 64;                               /* outputs per task: enough tasks for a decode step */
    const int64_t chunks = (N + chunk - 1) / chunk;
#pragma omp parallel for collapse(3) schedule(static) if (rows * T * N * R >= PARALLEL_MIN_WORK)
    for (int64_t b = 0; b < rows; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t c = 0; c < chunks; c++) {
                if (slot[b] < 0) continue;
                const float *hv = h + (b * T + t) * hw + lo, *bs = B + slot[b] * sbs;
                float *o = out + b * sob + t * sot;
                const int64_t end = (c + 1) * chunk < N ? (c + 1) * chunk : N;
                for (int64_t n = c * chunk; n < end; n++) o[n] += dot(hv, bs + n * sbn, R);
            }
}
