/* One block's BatchNorm (batch statistics), 2x2 max-pooling and ReLU, forward and backward, in
 * two passes over the convolution's output each way. Compiled at first use by `kernels.py`.
 *
 * Why: PyTorch runs these as three operations with their own passes over the full-resolution
 * tensor (statistics, normalisation, pooling with 64-bit indices, a zero-filled gradient and a
 * scatter for the pooling's backward, two more passes for BatchNorm's), about five full passes
 * each way; at 84x84 they cost as much as the first convolution itself.
 *
 * Layout: channels-last, z[b][y][x][c] with `ch` a multiple of 8 (one vector per 8 channels);
 * pooled tensors [b][yo][xo][c] with yo < height / 2, xo < width / 2 (PyTorch's floor mode: an
 * odd last row or column is normalised but never pooled).
 *
 * Forward, with mean and biased variance over (b, y, x) (or, in evaluation mode, the running
 * statistics) and alpha = gamma / sqrt(var + eps),
 * shift = beta - mean alpha (as PyTorch's CPU kernel computes them):
 *     out = relu(max over the window of (alpha z + shift))
 * The window position of the maximum (first one on ties, PyTorch's order) and the z there are
 * kept for the backward. Since alpha z + shift is what PyTorch's BatchNorm outputs, `out` is
 * the same number as PyTorch's.
 *
 * Backward: the gradient g = d out * (out > 0) reaches one z per window, so with n = batch *
 * height * width and zhat = (z - mean) / sqrt(var + eps):
 *     d beta = sum g,  d gamma = sum g zhat(z at the maximum)
 *     d z = alpha (g at the maximum - d beta / n - zhat d gamma / n)
 *
 * Rows are shared out over OpenMP threads (PyTorch's pool, see lstm_cell.c); sums go through
 * per-row partials added in order, in double precision, so the result does not depend on the
 * number of threads. */

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

typedef __m256 vec;

static inline vec splat(float x) { return _mm256_set1_ps(x); }

/* Per channel, the mean and biased variance over every (b, y, x) of z, in one pass over z: each
 * row's own mean and sum of squared deviations (two passes over the row while it is in cache, in
 * float), then the rows combined in order in double precision (Chan et al.'s pairwise update). */
static void channel_stats(long rows, long width, long ch, const float *z, float *row_stats, double *mean,
                          double *var) {
    long vecs = ch / 8;
    vec inv_width = _mm256_set1_ps(1.0f / (float)width);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *zr = z + r * width * ch;
        for (long v = 0; v < vecs; v++) {
            vec s = _mm256_setzero_ps(), m2 = _mm256_setzero_ps();
            for (long x = 0; x < width; x++) s = _mm256_add_ps(s, _mm256_loadu_ps(zr + x * ch + v * 8));
            vec m = _mm256_mul_ps(s, inv_width);
            for (long x = 0; x < width; x++) {
                vec d = _mm256_sub_ps(_mm256_loadu_ps(zr + x * ch + v * 8), m);
                m2 = _mm256_fmadd_ps(d, d, m2);
            }
            _mm256_storeu_ps(row_stats + (2 * r) * ch + v * 8, m);
            _mm256_storeu_ps(row_stats + (2 * r + 1) * ch + v * 8, m2);
        }
    }
    double m2[ch];
    for (long c = 0; c < ch; c++) mean[c] = m2[c] = 0.0;
    for (long r = 0; r < rows; r++) {
        double n = (double)r * width, share = width / (n + width);  /* the new row's share of the count */
        for (long c = 0; c < ch; c++) {
            double delta = row_stats[2 * r * ch + c] - mean[c];
            mean[c] += delta * share;
            m2[c] += row_stats[(2 * r + 1) * ch + c] + delta * delta * n * share;
        }
    }
    for (long c = 0; c < ch; c++) var[c] = m2[c] / ((double)rows * width);
}

/* With batch_stats, the batch's mean and biased variance are computed and written to
 * `stats_mean`, `stats_var` (row_stats: room for 2 batch * height * ch floats); without, those are
 * read (the running statistics of evaluation mode) and `argmax`, `z_at_max` may be NULL. */
void bn_pool_forward(long batch, long height, long width, long ch, float eps, int batch_stats, const float *z,
                     const float *gamma, const float *beta, float *row_stats, float *stats_mean,
                     float *stats_var, float *out, uint8_t *argmax, float *z_at_max) {
    long rows = batch * height, vecs = ch / 8, ho = height / 2, wo = width / 2;
    double mean[ch], var[ch];
    if (batch_stats) {
        channel_stats(rows, width, ch, z, row_stats, mean, var);
    } else {
        for (long c = 0; c < ch; c++) mean[c] = stats_mean[c], var[c] = stats_var[c];
    }
    float alpha[ch], shift[ch];
    for (long c = 0; c < ch; c++) {
        stats_mean[c] = (float)mean[c];
        stats_var[c] = (float)var[c];
        double invstd = 1.0 / __builtin_sqrt(var[c] + eps);
        alpha[c] = (float)(gamma[c] * invstd);
        shift[c] = (float)(beta[c] - mean[c] * gamma[c] * invstd);
    }
#pragma omp parallel for schedule(static)
    for (long r = 0; r < batch * ho; r++) {
        long b = r / ho, y = 2 * (r % ho);
        const float *top = z + ((b * height + y) * width) * ch, *bottom = top + width * ch;
        for (long x = 0; x < wo; x++)
            for (long v = 0; v < vecs; v++) {
                long c = v * 8, at = 2 * x * ch + c;
                vec a = _mm256_loadu_ps(alpha + c), s = _mm256_loadu_ps(shift + c);
                const float *window[4] = {top + at, top + at + ch, bottom + at, bottom + at + ch};
                vec zbest = _mm256_loadu_ps(window[0]);
                vec best = _mm256_fmadd_ps(a, zbest, s);
                __m256i where = _mm256_setzero_si256();
                for (int k = 1; k < 4; k++) {
                    vec zk = _mm256_loadu_ps(window[k]);
                    vec yk = _mm256_fmadd_ps(a, zk, s);
                    vec better = _mm256_cmp_ps(yk, best, _CMP_GT_OQ);
                    best = _mm256_blendv_ps(best, yk, better);
                    zbest = _mm256_blendv_ps(zbest, zk, better);
                    where = _mm256_blendv_epi8(where, _mm256_set1_epi32(k), _mm256_castps_si256(better));
                }
                long o = (r * wo + x) * ch + c;
                _mm256_storeu_ps(out + o, _mm256_max_ps(best, _mm256_setzero_ps()));
                if (!argmax) continue;
                _mm256_storeu_ps(z_at_max + o, zbest);
                int32_t w[8];
                _mm256_storeu_si256((__m256i *)w, where);
                for (int l = 0; l < 8; l++) argmax[o + l] = (uint8_t)w[l];
            }
    }
}

void bn_pool_backward(long batch, long height, long width, long ch, float eps, const float *z,
                      const float *gamma, const float *mean, const float *var, const float *dout,
                      const float *out, const uint8_t *argmax, const float *z_at_max,
                      float *row_sums, float *dz, float *dgamma, float *dbeta) {
    long vecs = ch / 8, ho = height / 2, wo = width / 2, pooled_rows = batch * ho;
    float invstd[ch];
    for (long c = 0; c < ch; c++) invstd[c] = (float)(1.0 / __builtin_sqrt((double)var[c] + eps));
#pragma omp parallel for schedule(static)
    for (long r = 0; r < pooled_rows; r++)
        for (long v = 0; v < vecs; v++) {
            long c = v * 8;
            vec m = _mm256_loadu_ps(mean + c), is = _mm256_loadu_ps(invstd + c);
            vec sg = _mm256_setzero_ps(), sgz = _mm256_setzero_ps();
            for (long x = 0; x < wo; x++) {
                long o = (r * wo + x) * ch + c;
                vec g = _mm256_and_ps(_mm256_loadu_ps(dout + o),
                                      _mm256_cmp_ps(_mm256_loadu_ps(out + o), _mm256_setzero_ps(), _CMP_GT_OQ));
                sg = _mm256_add_ps(sg, g);
                sgz = _mm256_fmadd_ps(g, _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(z_at_max + o), m), is), sgz);
            }
            float fs[8], fz[8];
            _mm256_storeu_ps(fs, sg);
            _mm256_storeu_ps(fz, sgz);
            for (int l = 0; l < 8; l++) {
                row_sums[(r * ch + c + l) * 2] = fs[l];
                row_sums[(r * ch + c + l) * 2 + 1] = fz[l];
            }
        }  /* row_sums: room for batch * (height / 2) * ch * 2 floats */
    float k[ch], a[ch], bz[ch];
    double n = (double)batch * height * width;
    for (long c = 0; c < ch; c++) {
        double s = 0.0, sz = 0.0;
        for (long r = 0; r < pooled_rows; r++) {
            s += row_sums[(r * ch + c) * 2];
            sz += row_sums[(r * ch + c) * 2 + 1];
        }
        dbeta[c] = (float)s;
        dgamma[c] = (float)sz;
        k[c] = gamma[c] * invstd[c];
        a[c] = (float)(s / n);
        bz[c] = (float)(sz / n);
    }
#pragma omp parallel for schedule(static)
    for (long r = 0; r < batch * height; r++) {
        long b = r / height, y = r % height, yo = y / 2;
        int pooled_row = yo < ho;
        const float *zr = z + r * width * ch;
        float *dzr = dz + r * width * ch;
        for (long x = 0; x < width; x++) {
            long xo = x / 2;
            int pos = (int)((y % 2) * 2 + x % 2), pooled = pooled_row && xo < wo;
            long o = ((b * ho + yo) * wo + xo) * ch;
            for (long v = 0; v < vecs; v++) {
                long c = v * 8;
                vec zhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(zr + x * ch + c), _mm256_loadu_ps(mean + c)),
                                         _mm256_loadu_ps(invstd + c));
                vec d = _mm256_fnmadd_ps(zhat, _mm256_loadu_ps(bz + c), _mm256_sub_ps(_mm256_setzero_ps(), _mm256_loadu_ps(a + c)));
                if (pooled) {
                    __m128i idx8 = _mm_loadl_epi64((const __m128i *)(argmax + o + c));
                    __m256i idx = _mm256_cvtepu8_epi32(idx8);
                    vec here = _mm256_castsi256_ps(_mm256_cmpeq_epi32(idx, _mm256_set1_epi32(pos)));
                    vec g = _mm256_and_ps(_mm256_loadu_ps(dout + o + c),
                                          _mm256_cmp_ps(_mm256_loadu_ps(out + o + c), _mm256_setzero_ps(), _CMP_GT_OQ));
                    d = _mm256_add_ps(d, _mm256_and_ps(g, here));
                }
                _mm256_storeu_ps(dzr + x * ch + c, _mm256_mul_ps(_mm256_loadu_ps(k + c), d));
            }
        }
    }
}
