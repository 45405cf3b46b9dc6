/* y[M, N] = x[M, K] @ W^T + bias with W in bfloat16 and x rounded to bfloat16, products
 * accumulated and written in float32: the CPU `bf16` quantization (bf16_linear.py).
 *
 * W is packed in panels of 16 outputs, each panel [Kp/2][16][2] (a pair of k per output, as the
 * dot-product instruction takes them), Kp = K rounded up to 32 with zero weights. Rows are taken in
 * blocks of BLOCK (their rounded inputs stay in the core's cache); within a block each thread takes
 * whole panels, and a panel is read from start to end once per tile of up to ROWS rows.
 *
 * Every output y[m, n] is accumulated over k in one fixed order, by the same instructions, whatever
 * M is and whichever thread computes it: a row's result never depends on its batch mates.
 * With AVX512-BF16 the pairs go through vdpbf16ps; elsewhere the same pairs go through two fused
 * multiply-adds per pair (a product of two bfloat16 values is exact in float32): AVX2 registers
 * where the CPU has them, plain C otherwise, the same values either way.
 *
 * The rounded inputs (the caller's scratch, bf16_input_bytes() per value) are bfloat16 for
 * vdpbf16ps and float32 holding bfloat16 values elsewhere, so a tile broadcasts them straight
 * from memory.
 */
#include <stdint.h>
#include <string.h>
#include "parallel.h"
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define NATIVE_BF16 1
#define ROWS 8   /* rows per tile */
#define PANELS 3 /* panels of 16 outputs per tile: 24 accumulators */
typedef uint16_t xval;
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define NATIVE_BF16 0
#define AVX2_FMA 1
#define ROWS 6   /* 6 rows x 16 outputs: 12 accumulators, as many chains as hide the FMA latency */
#define PANELS 1
typedef float xval;
#else
#include <math.h>
#define NATIVE_BF16 0
#define ROWS 8
#define PANELS 3
typedef float xval;
#endif
#define BLOCK 64 /* rows per block */

int bf16_native(void) { return NATIVE_BF16; }
int bf16_input_bytes(void) { return (int)sizeof(xval); }

static inline uint16_t round_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float as_float(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

/* x (float32 [M, K], row stride ldx) -> xb ([M, Kp] rounded to bfloat16, zero padded) */
static void round_rows(const float *x, int64_t M, int64_t K, int64_t ldx, xval *xb, int64_t Kp) {
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * ldx;
        xval *o = xb + m * Kp;
        int64_t k = 0;
#if NATIVE_BF16
        for (; k + 32 <= K; k += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(r + k + 16), _mm512_loadu_ps(r + k));
            _mm512_storeu_si512((void *)(o + k), (__m512i)v);
        }
        for (; k < K; k++) o[k] = round_bf16(r[k]);
#else
        for (; k < K; k++) o[k] = as_float(round_bf16(r[k]));
#endif
        for (; k < Kp; k++) o[k] = 0;
    }
}

#if NATIVE_BF16
static inline __attribute__((always_inline)) void tile(const xval *xb, int64_t Kp, const uint16_t *w,
    int64_t panel, const float *bias, float *y, int64_t ldy, int64_t valid, const int rows, const int panels)
{
    __m512 acc[ROWS][PANELS];
    for (int i = 0; i < rows; i++)
        for (int g = 0; g < panels; g++) acc[i][g] = _mm512_setzero_ps();
    const uint32_t *xp = (const uint32_t *)xb;
    const int64_t pairs = Kp / 2;
    for (int64_t p = 0; p < pairs; p++) {
        __m512bh wv[PANELS];
        for (int g = 0; g < panels; g++) wv[g] = (__m512bh)_mm512_loadu_si512((const void *)(w + g * panel + p * 32));
        for (int i = 0; i < rows; i++) {
            __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xp[i * pairs + p]);
            for (int g = 0; g < panels; g++) acc[i][g] = _mm512_dpbf16_ps(acc[i][g], xv, wv[g]);
        }
    }
    for (int g = 0; g < panels; g++) {
        int64_t left = valid - g * 16;
        __mmask16 mask = (__mmask16)(left >= 16 ? 0xFFFF : ((1u << left) - 1));
        __m512 b = bias ? _mm512_maskz_loadu_ps(mask, bias + g * 16) : _mm512_setzero_ps();
        for (int i = 0; i < rows; i++) _mm512_mask_storeu_ps(y + i * ldy + g * 16, mask, _mm512_add_ps(acc[i][g], b));
    }
}
#elif AVX2_FMA
/* One panel: a pair's 16 (w0, w1) words are two 256-bit loads; w1 is the word's high half as a
 * float, w0 its low half shifted up. */
static inline __attribute__((always_inline)) void tile(const xval *xb, int64_t Kp, const uint16_t *w,
    int64_t panel, const float *bias, float *y, int64_t ldy, int64_t valid, const int rows, const int panels)
{
    (void)panel; (void)panels;
    __m256 lo[ROWS], hi[ROWS];
    for (int i = 0; i < rows; i++) lo[i] = hi[i] = _mm256_setzero_ps();
    const __m256i high_half = _mm256_set1_epi32((int)0xFFFF0000u);
    const int64_t pairs = Kp / 2;
    for (int64_t p = 0; p < pairs; p++) {
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w + p * 32));
        const __m256i v1 = _mm256_loadu_si256((const __m256i *)(w + p * 32 + 16));
        const __m256 w0lo = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16));
        const __m256 w1lo = _mm256_castsi256_ps(_mm256_and_si256(v0, high_half));
        const __m256 w0hi = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16));
        const __m256 w1hi = _mm256_castsi256_ps(_mm256_and_si256(v1, high_half));
        for (int i = 0; i < rows; i++) {
            const __m256 x0 = _mm256_broadcast_ss(xb + i * Kp + 2 * p);
            const __m256 x1 = _mm256_broadcast_ss(xb + i * Kp + 2 * p + 1);
            lo[i] = _mm256_fmadd_ps(x1, w1lo, lo[i]);
            lo[i] = _mm256_fmadd_ps(x0, w0lo, lo[i]);
            hi[i] = _mm256_fmadd_ps(x1, w1hi, hi[i]);
            hi[i] = _mm256_fmadd_ps(x0, w0hi, hi[i]);
        }
    }
    float b[16] = {0};
    for (int l = 0; l < 16 && l < valid; l++) b[l] = bias ? bias[l] : 0.0f;
    const __m256 blo = _mm256_loadu_ps(b), bhi = _mm256_loadu_ps(b + 8);
    for (int i = 0; i < rows; i++) {
        float out[16];
        _mm256_storeu_ps(out, _mm256_add_ps(lo[i], blo));
        _mm256_storeu_ps(out + 8, _mm256_add_ps(hi[i], bhi));
        memcpy(y + i * ldy, out, (size_t)(valid < 16 ? valid : 16) * sizeof(float));
    }
}
#else
static inline __attribute__((always_inline)) void tile(const xval *xb, int64_t Kp, const uint16_t *w,
    int64_t panel, const float *bias, float *y, int64_t ldy, int64_t valid, const int rows, const int panels)
{
    float acc[ROWS][PANELS][16];
    memset(acc, 0, sizeof acc);
    const int64_t pairs = Kp / 2;
    for (int64_t p = 0; p < pairs; p++) {
        for (int i = 0; i < rows; i++) {
            float x0 = xb[i * Kp + 2 * p], x1 = xb[i * Kp + 2 * p + 1];
            for (int g = 0; g < panels; g++) {
                const uint16_t *wp = w + g * panel + p * 32;
                for (int l = 0; l < 16; l++) {
                    acc[i][g][l] = fmaf(x1, as_float(wp[2 * l + 1]), acc[i][g][l]);
                    acc[i][g][l] = fmaf(x0, as_float(wp[2 * l]), acc[i][g][l]);
                }
            }
        }
    }
    for (int g = 0; g < panels; g++)
        for (int l = 0; l < 16 && g * 16 + l < valid; l++)
            for (int i = 0; i < rows; i++)
                y[i * ldy + g * 16 + l] = acc[i][g][l] + (bias ? bias[g * 16 + l] : 0.0f);
}
#endif

#define TILE(r, g) tile(xr, Kp, wt, panel, bt, yr, ldy, valid, r, g)
#if ROWS == 8
#define BY_ROWS(g) switch (rows) { \
    case 8: TILE(8, g); break; case 7: TILE(7, g); break; case 6: TILE(6, g); break; \
    case 5: TILE(5, g); break; case 4: TILE(4, g); break; case 3: TILE(3, g); break; \
    case 2: TILE(2, g); break; default: TILE(1, g); break; }
#else
#define BY_ROWS(g) switch (rows) { \
    case 6: TILE(6, g); break; case 5: TILE(5, g); break; case 4: TILE(4, g); break; \
    case 3: TILE(3, g); break; case 2: TILE(2, g); break; default: TILE(1, g); break; }
#endif

/* x: float32 [M, K] (row stride ldx), rounded into xb ([M, Kp], the caller's scratch of
 * bf16_input_bytes() per value); w: N outputs packed in panels; y: float32 [M, ldy] */
void bf16_linear(const float *x, int64_t M, int64_t K, int64_t ldx, void *scratch, int64_t Kp,
                 const uint16_t *w, int64_t N, const float *bias, float *y, int64_t ldy)
{
    xval *xb = (xval *)scratch;
    round_rows(x, M, K, ldx, xb, Kp);
    const int64_t panel = Kp * 16;
    const int64_t panels = (N + 15) / 16;
    const int64_t tiles = (panels + PANELS - 1) / PANELS;
#pragma omp parallel if (M * N * Kp >= PARALLEL_MIN_WORK)
    for (int64_t b0 = 0; b0 < M; b0 += BLOCK) {
        const int64_t b1 = M - b0 < BLOCK ? M : b0 + BLOCK;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tiles; t++) {
            const int64_t p0 = t * PANELS;
            const int here = panels - p0 < PANELS ? (int)(panels - p0) : PANELS;
            const int64_t valid = N - p0 * 16;
            const uint16_t *wt = w + p0 * panel;
            const float *bt = bias ? bias + p0 * 16 : 0;
            for (int64_t m0 = b0; m0 < b1; m0 += ROWS) {
                const int rows = b1 - m0 < ROWS ? (int)(b1 - m0) : ROWS;
                const xval *xr = xb + m0 * Kp;
                float *yr = y + m0 * ldy + p0 * 16;
                if (here == 3) { BY_ROWS(3) } else if (here == 2) { BY_ROWS(2) } else { BY_ROWS(1) }
            }
        }
    }
}
