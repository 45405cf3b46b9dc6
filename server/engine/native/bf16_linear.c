/* y[M, N] = x[M, K] @ W^T + bias with W in bfloat16 and x rounded to bfloat16, products
 * accumulated and written in float32: the CPU `bf16` quantization (bf16_linear.py).
 *
 * W is packed in panels of 16 outputs, each panel [Kp/2][16][2] (a pair of k per output, as the
 * dot-product instruction takes them), Kp = K rounded up to 32 with zero weights. A panel is read
 * once per tile of up to 8 rows, from start to end, so weights stream from memory in order.
 *
 * Every output y[m, n] is accumulated over k in one fixed order, by the same instructions, whatever
 * M is and whichever thread computes it: a row's result never depends on its batch mates.
 * With AVX512-BF16 the pairs go through vdpbf16ps; elsewhere the same pairs go through two fused
 * multiply-adds per pair (a product of two bfloat16 values is exact in float32).
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define NATIVE_BF16 1
#else
#include <math.h>
#define NATIVE_BF16 0
#endif

#define ROWS 8   /* rows per tile */
#define PANELS 3 /* panels of 16 outputs per tile: 24 accumulators */

int bf16_native(void) { return NATIVE_BF16; }

static inline uint16_t round_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* x (float32 [M, K], row stride ldx) -> xb (bfloat16 [M, Kp], zero padded) */
static void bf16_rows(const float *x, int64_t M, int64_t K, int64_t ldx, uint16_t *xb, int64_t Kp) {
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * ldx;
        uint16_t *o = xb + m * Kp;
        int64_t k = 0;
#if NATIVE_BF16
        for (; k + 32 <= K; k += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(r + k + 16), _mm512_loadu_ps(r + k));
            _mm512_storeu_si512((void *)(o + k), (__m512i)v);
        }
#endif
        for (; k < K; k++) o[k] = round_bf16(r[k]);
        for (; k < Kp; k++) o[k] = 0;
    }
}

#if NATIVE_BF16
static inline __attribute__((always_inline)) void tile(const uint16_t *xb, int64_t Kp, const uint16_t *w,
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
#else
static inline float as_float(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

static inline __attribute__((always_inline)) void tile(const uint16_t *xb, int64_t Kp, const uint16_t *w,
    int64_t panel, const float *bias, float *y, int64_t ldy, int64_t valid, const int rows, const int panels)
{
    float acc[ROWS][PANELS][16];
    memset(acc, 0, sizeof acc);
    const int64_t pairs = Kp / 2;
    for (int64_t p = 0; p < pairs; p++) {
        for (int i = 0; i < rows; i++) {
            float x0 = as_float(xb[i * Kp + 2 * p]), x1 = as_float(xb[i * Kp + 2 * p + 1]);
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
#define BY_ROWS(g) switch (rows) { \
    case 8: TILE(8, g); break; case 7: TILE(7, g); break; case 6: TILE(6, g); break; \
    case 5: TILE(5, g); break; case 4: TILE(4, g); break; case 3: TILE(3, g); break; \
    case 2: TILE(2, g); break; default: TILE(1, g); break; }

/* x: float32 [M, K] (row stride ldx), rounded into xb (bfloat16 [M, Kp], the caller's scratch);
 * w: N outputs packed in panels; y: float32 [M, ldy] */
void bf16_linear(const float *x, int64_t M, int64_t K, int64_t ldx, uint16_t *xb, int64_t Kp,
                 const uint16_t *w, int64_t N, const float *bias, float *y, int64_t ldy)
{
    bf16_rows(x, M, K, ldx, xb, Kp);
    const int64_t panel = Kp * 16;
    const int64_t panels = (N + 15) / 16;
    const int64_t tiles = (panels + PANELS - 1) / PANELS;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; t++) {
        const int64_t p0 = t * PANELS;
        const int here = panels - p0 < PANELS ? (int)(panels - p0) : PANELS;
        const int64_t valid = N - p0 * 16;
        const uint16_t *wt = w + p0 * panel;
        const float *bt = bias ? bias + p0 * 16 : 0;
        for (int64_t m0 = 0; m0 < M; m0 += ROWS) {
            const int rows = M - m0 < ROWS ? (int)(M - m0) : ROWS;
            const uint16_t *xr = xb + m0 * Kp;
            float *yr = y + m0 * ldy + p0 * 16;
            if (here == 3) { BY_ROWS(3) } else if (here == 2) { BY_ROWS(2) } else { BY_ROWS(1) }
        }
    }
}
