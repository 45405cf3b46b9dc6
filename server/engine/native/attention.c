/* Softmax attention of every query over the keys its mask allows, each query on its own and in one
 * fixed order: a query's result depends on its own vector and on the keys and values it may see,
 * never on the window's padding or width, on the other rows, or on how many queries are computed
 * at once (a prefill of many, a decode step of one): attention.py says why a served row needs that.
 *
 * q [B, H, Lq, D] and k, v [B, KVH, Lk, D] are strided (the last dimension contiguous); the mask
 * [B, Lq, Lk] (nonzero = may attend) is strided too, or NULL for "causal, no padding". Grouped-query
 * attention: head h reads kv head h / (H / KVH). out is [B, Lq, H, D], contiguous.
 *
 * Each score is q.k as one chain of fused multiply-adds over d = 0..D-1, times scale; the queries of
 * one kv head are computed 16 at a time, one per vector lane, so every score takes the same chain
 * whatever its neighbours. Then per query, in key order: the max of its allowed scores,
 * exp(score - max) (exp_nonpositive, the same operations in every lane) summed, the values weighted
 * by those summed, divided by the sum. A query that
 * may see no key gets zeros; a non-finite score makes its query's output NaN, no other's.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "parallel.h"

#define LANES 16
typedef float lanes_t __attribute__((vector_size(LANES * sizeof(float))));

typedef int32_t ilanes_t __attribute__((vector_size(LANES * sizeof(int32_t))));

/* exp(x) for x <= 0, lane by lane, by the same float operations in every lane (Cephes' expf:
 * x = n ln2 + r, a degree-6 polynomial for exp(r), times 2^n); below -87 it is 0. Within 2 ulp of
 * expf, and a pure function of x wherever a value sits in a vector, which libm's vector and scalar
 * expf do not promise each other. */
static inline lanes_t exp_nonpositive(lanes_t x) {
    const ilanes_t lo = x < -87.0f;                            /* all ones where x < -87 */
    const lanes_t floor_ = (lanes_t){0} - 87.0f;
    x = (lanes_t)(((ilanes_t)x & ~lo) | ((ilanes_t)floor_ & lo));
    const lanes_t magic = (lanes_t){0} + 12582912.0f;          /* 1.5 * 2^23: adds round to an integer */
    lanes_t n = (x * 1.44269504088896341f + magic) - magic;
    lanes_t r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    lanes_t p = (lanes_t){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    ilanes_t e = (__builtin_convertvector(n, ilanes_t) + 127) << 23;
    lanes_t scale2;
    memcpy(&scale2, &e, sizeof e);
    lanes_t out = p * scale2;
    return (lanes_t)((ilanes_t)out & ~lo);
}

static inline int allowed(const uint8_t *mask, int64_t smi, int64_t smj, int64_t i, int64_t j, int64_t causal_end) {
    return mask ? mask[i * smi + j * smj] != 0 : j <= causal_end;
}

int attention(const float *q, int64_t B, int64_t H, int64_t Lq, int64_t D, int64_t sqb, int64_t sqh, int64_t sqi,
              const float *k, const float *v, int64_t KVH, int64_t Lk, int64_t skb, int64_t skh, int64_t skj,
              int64_t svb, int64_t svh, int64_t svj, const uint8_t *mask, int64_t smb, int64_t smi, int64_t smj,
              float scale, float *out)
{
    const int64_t group = H / KVH;
    const int64_t per_kv = group * Lq;                       /* queries reading one kv head: (i, h) pairs */
    const int64_t chunks = (per_kv + LANES - 1) / LANES;
    const int64_t tasks = B * KVH * chunks;
    int failed = 0;
#pragma omp parallel if (2 * B * H * Lq * Lk * D >= PARALLEL_MIN_WORK)
    {
        /* the chunk's queries, [d][lane]; vectors want their own alignment, which malloc does not give */
        lanes_t *qt = aligned_alloc(sizeof(lanes_t), sizeof(lanes_t) * (size_t)(D > 0 ? D : 1));
        float *scores = malloc(sizeof(float) * LANES * (size_t)(Lk > 0 ? Lk : 1)); /* [j][lane] */
        float *acc = malloc(sizeof(float) * (size_t)(D > 0 ? D : 1));
        const size_t room = (size_t)((Lk + LANES) / LANES * LANES);
        float *weights = malloc(sizeof(float) * room);
        int32_t *keys = malloc(sizeof(int32_t) * room);
        if (!qt || !scores || !acc || !weights || !keys) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++) {
            if (failed) continue;
            const int64_t b = t / (KVH * chunks), kh = (t / chunks) % KVH, c = t % chunks;
            const int64_t first = c * LANES, n_lanes = per_kv - first < LANES ? per_kv - first : LANES;
            const float *kb = k + b * skb + kh * skh, *vb = v + b * svb + kh * svh;
            const uint8_t *mb = mask ? mask + b * smb : NULL;
            int64_t lane_i[LANES], lane_h[LANES], last_key = -1;
            memset(qt, 0, sizeof(lanes_t) * (size_t)D);
            for (int64_t l = 0; l < n_lanes; l++) {          /* lanes in (i, h) order: neighbours see alike keys */
                const int64_t pair = first + l, i = pair / group, h = kh * group + pair % group;
                lane_i[l] = i; lane_h[l] = h;
                const float *qv = q + b * sqb + h * sqh + i * sqi;
                for (int64_t d = 0; d < D; d++) qt[d][l] = qv[d];
                for (int64_t j = Lk - 1; j > last_key; j--)
                    if (allowed(mb, smi, smj, i, j, Lk - Lq + i)) { last_key = j; break; }
            }
            int64_t j = 0;
            for (; j + 4 <= last_key + 1; j += 4) {          /* four keys' chains at once, for throughput */
                const float *k0 = kb + j * skj, *k1 = k0 + skj, *k2 = k1 + skj, *k3 = k2 + skj;
                lanes_t s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
                for (int64_t d = 0; d < D; d++) {
                    s0 += qt[d] * k0[d]; s1 += qt[d] * k1[d]; s2 += qt[d] * k2[d]; s3 += qt[d] * k3[d];
                }
                s0 *= scale; s1 *= scale; s2 *= scale; s3 *= scale;
                memcpy(scores + j * LANES, &s0, sizeof s0);
                memcpy(scores + (j + 1) * LANES, &s1, sizeof s1);
                memcpy(scores + (j + 2) * LANES, &s2, sizeof s2);
                memcpy(scores + (j + 3) * LANES, &s3, sizeof s3);
            }
            for (; j <= last_key; j++) {
                const float *kj = kb + j * skj;
                lanes_t s0 = {0};
                for (int64_t d = 0; d < D; d++) s0 += qt[d] * kj[d];
                s0 *= scale;
                memcpy(scores + j * LANES, &s0, sizeof s0);
            }
            for (int64_t l = 0; l < n_lanes; l++) {
                const int64_t i = lane_i[l], h = lane_h[l], causal_end = Lk - Lq + i;
                float *o = out + ((b * Lq + i) * H + h) * D;
                float best = -INFINITY;
                int64_t n = 0;
                for (int64_t j = 0; j <= last_key; j++)
                    if (allowed(mb, smi, smj, i, j, causal_end)) {
                        float s = scores[j * LANES + l];
                        best = s > best || s != s ? s : best;  /* a NaN score wins, and spoils this query */
                        n++;
                    }
                if (n == 0 || !isfinite(best)) {
                    const float fill = n == 0 ? 0.0f : NAN;
                    for (int64_t d = 0; d < D; d++) o[d] = fill;
                    continue;
                }
                int64_t m = 0;                                  /* this query's allowed keys and scores, in order */
                for (int64_t j = 0; j <= last_key; j++)
                    if (allowed(mb, smi, smj, i, j, causal_end)) {
                        keys[m] = (int32_t)j;
                        weights[m++] = scores[j * LANES + l] - best;
                    }
                for (int64_t e = m; e % LANES; e++) weights[e] = -100.0f;  /* padding lanes: exp gives 0 */
                for (int64_t e = 0; e < m; e += LANES) {
                    lanes_t w;
                    memcpy(&w, weights + e, sizeof w);
                    w = exp_nonpositive(w);
                    memcpy(weights + e, &w, sizeof w);
                }
                memset(acc, 0, sizeof(float) * (size_t)D);
                float sum = 0.0f;
                for (int64_t e = 0; e < m; e++) {
                    const float p = weights[e];
                    sum += p;
                    const float *vj = vb + keys[e] * svj;
                    for (int64_t d = 0; d < D; d++) acc[d] += p * vj[d];
                }
                const float inv = 1.0f / sum;
                for (int64_t d = 0; d < D; d++) o[d] = acc[d] * inv;
            }
        }
        free(qt);
        free(scores);
        free(acc);
        free(weights);
        free(keys);
    }
    return failed ? -1 : 0;
}
