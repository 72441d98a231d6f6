/* A learner block's kernels: the 3x3 convolution (padding 1), then BatchNorm (batch statistics),
 * 2x2 max-pooling and ReLU, forward and backward, on channels-last tensors. Compiled at first use
 * by `reproml/kernels/build.py`.
 *
 * Why: oneDNN runs the backward pass of these small convolutions (32 channels, 42x42 and less,
 * 5 to 75 images) at about half the machine's multiply-add rate, and its weight gradient with
 * three input channels at a fifth; PyTorch runs BatchNorm, pooling and ReLU as three operations
 * with about five full passes each way over the full-resolution tensor. At 84x84 the first
 * block is bound by memory traffic, so it never stores z at all (see the end).
 *
 * Convolution:
 *     forward:     out[b][y][x][o] = bias[o] + sum over (kh, kw, c) of
 *                                    w[kh][kw][c][o] * in[b][y + kh - 1][x + kw - 1][c]
 *     weight grad: d w[o][c][kh][kw] = sum over (b, y, x) of g[b][y][x][o] * in[b][y + kh - 1][x + kw - 1][c]
 *                  d bias[o]         = sum over (b, y, x) of g[b][y][x][o]
 * (pixels outside the image are zero); with flipped, transposed weights the forward pass is also
 * the input's gradient. Both walk output rows; the three input rows a row needs are copied, with
 * a zero pixel at each end standing in for the padding, into a ring that copies each input row
 * once per image. Register tiles: 6 output pixels x 16 output channels (forward), 3 taps x 32
 * output channels (weight gradient), as in a matrix-multiply kernel.
 *
 * BatchNorm, pooling and ReLU: layout z[b][y][x][c] with `ch` a multiple of 8 (one vector per 8
 * channels); pooled tensors [b][yo][xo][c] with yo < height / 2, xo < width / 2 (PyTorch's floor
 * mode: an odd last row or column is normalised but never pooled).
 * Forward, with mean and biased variance over (b, y, x) (or, in evaluation mode, the running
 * statistics) and alpha = gamma / sqrt(var + eps),
 * shift = beta - mean alpha (as PyTorch's CPU kernel computes them):
 *     out = relu(max over the window of (alpha z + shift))
 * The window position of the maximum (first one on ties, PyTorch's order) and the z there are
 * kept for the backward. Since alpha z + shift is what PyTorch's BatchNorm outputs, `out` is
 * the same number as PyTorch's.
 * Backward: the gradient g = d out * (out > 0) reaches one z per window, so with n = batch *
 * height * width and zhat = (z - mean) / sqrt(var + eps):
 *     d beta = sum g,  d gamma = sum g zhat(z at the maximum)
 *     d z = alpha (g at the maximum - d beta / n - zhat d gamma / n)
 *
 * Rows are shared out over OpenMP threads (PyTorch's pool, see lstm_cell.c). Every sum goes
 * through per-row or per-stripe partials added in a fixed order (BatchNorm's in double
 * precision), so no result depends on the number of threads. */

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef __m256 vec;

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

/* One pooled row from z rows `top` and `bottom`: out = relu(max over the window of alpha z + shift),
 * and unless argmax is NULL, the window position of the maximum and the z there (o: the row's
 * offset in the pooled tensors). */
static void pool_row(const float *top, const float *bottom, long wo, long ch, const float *alpha, const float *shift,
                     long o, float *out, uint8_t *argmax, float *z_at_max) {
    for (long x = 0; x < wo; x++)
        for (long c = 0; c < ch; c += 8) {
            long at = 2 * x * ch + c;
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
            long oc = o + x * ch + c;
            _mm256_storeu_ps(out + oc, _mm256_max_ps(best, _mm256_setzero_ps()));
            if (!argmax) continue;
            _mm256_storeu_ps(z_at_max + oc, zbest);
            int32_t w[8];
            _mm256_storeu_si256((__m256i *)w, where);
            for (int l = 0; l < 8; l++) argmax[oc + l] = (uint8_t)w[l];
        }
}

/* alpha = gamma / sqrt(var + eps), shift = beta - mean alpha, as PyTorch's CPU kernel computes them. */
static void bn_scale_shift(long ch, float eps, const double *mean, const double *var, const float *gamma,
                           const float *beta, float *alpha, float *shift) {
    for (long c = 0; c < ch; c++) {
        double invstd = 1.0 / __builtin_sqrt(var[c] + eps);
        alpha[c] = (float)(gamma[c] * invstd);
        shift[c] = (float)(beta[c] - mean[c] * gamma[c] * invstd);
    }
}

/* With batch_stats, the batch's mean and biased variance are computed and written to
 * `stats_mean`, `stats_var` (row_stats: room for 2 batch * height * ch floats); without, those are
 * read (the running statistics of evaluation mode) and `argmax`, `z_at_max` may be NULL. */
void bn_pool_forward(long batch, long height, long width, long ch, float eps, int batch_stats, const float *z,
                     const float *gamma, const float *beta, float *row_stats, float *stats_mean,
                     float *stats_var, float *out, uint8_t *argmax, float *z_at_max) {
    long rows = batch * height, ho = height / 2, wo = width / 2;
    double mean[ch], var[ch];
    if (batch_stats) {
        channel_stats(rows, width, ch, z, row_stats, mean, var);
        for (long c = 0; c < ch; c++) stats_mean[c] = (float)mean[c], stats_var[c] = (float)var[c];
    } else {
        for (long c = 0; c < ch; c++) mean[c] = stats_mean[c], var[c] = stats_var[c];
    }
    float alpha[ch], shift[ch];
    bn_scale_shift(ch, eps, mean, var, gamma, beta, alpha, shift);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < batch * ho; r++) {
        long b = r / ho, y = 2 * (r % ho);
        const float *top = z + ((b * height + y) * width) * ch;
        pool_row(top, top + width * ch, wo, ch, alpha, shift, r * wo * ch, out, argmax, z_at_max);
    }
}

/* What d z needs besides z: per channel mean, 1 / sqrt(var + eps), alpha = gamma / sqrt(var + eps),
 * d beta / n and d gamma / n; and the pooled tensors of the forward pass with d out. */
typedef struct {
    long batch, height, width, ch;
    const float *z, *mean, *dout, *out;
    const uint8_t *argmax;
    float *invstd, *alpha, *dbeta_n, *dgamma_n; /* ch floats each */
} DzRows;

/* d gamma, d beta and the rest of `p` (row_sums: room for batch * (height / 2) * ch * 2 floats). */
static void bn_pool_backward_sums(DzRows *p, float eps, const float *gamma, const float *var, const float *z_at_max,
                                  float *row_sums, float *dgamma, float *dbeta) {
    long ch = p->ch, vecs = ch / 8, ho = p->height / 2, wo = p->width / 2, pooled_rows = p->batch * ho;
    const float *mean = p->mean, *dout = p->dout, *out = p->out;
    float *invstd = p->invstd;
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
        }
    double n = (double)p->batch * p->height * p->width;
    for (long c = 0; c < ch; c++) {
        double s = 0.0, sz = 0.0;
        for (long r = 0; r < pooled_rows; r++) {
            s += row_sums[(r * ch + c) * 2];
            sz += row_sums[(r * ch + c) * 2 + 1];
        }
        dbeta[c] = (float)s;
        dgamma[c] = (float)sz;
        p->alpha[c] = gamma[c] * invstd[c];
        p->dbeta_n[c] = (float)(s / n);
        p->dgamma_n[c] = (float)(sz / n);
    }
}

/* g = d out * (out > 0) of the 8 channels at offset oc of the pooled tensors where the window's
 * maximum is at position pos (0 .. 3), else 0: the gradient reaching that pixel of z through the
 * pooling and ReLU. */
static inline vec grad_at_max(const DzRows *p, long oc, int pos) {
    __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p->argmax + oc)));
    vec here = _mm256_castsi256_ps(_mm256_cmpeq_epi32(idx, _mm256_set1_epi32(pos)));
    vec g = _mm256_and_ps(_mm256_loadu_ps(p->dout + oc),
                          _mm256_cmp_ps(_mm256_loadu_ps(p->out + oc), _mm256_setzero_ps(), _CMP_GT_OQ));
    return _mm256_and_ps(g, here);
}

/* Row r of d z (r over batch x height). */
static void dz_row(const DzRows *p, long r, float *dzr) {
    long ch = p->ch, width = p->width, ho = p->height / 2, wo = width / 2;
    long b = r / p->height, y = r % p->height, yo = y / 2;
    int pooled_row = yo < ho;
    const float *zr = p->z + r * width * ch;
    for (long x = 0; x < width; x++) {
        long xo = x / 2;
        int pos = (int)((y % 2) * 2 + x % 2), pooled = pooled_row && xo < wo;
        long o = ((b * ho + yo) * wo + xo) * ch;
        for (long c = 0; c < ch; c += 8) {
            vec g = pooled ? grad_at_max(p, o + c, pos) : _mm256_setzero_ps();
            vec zhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(zr + x * ch + c), _mm256_loadu_ps(p->mean + c)),
                                     _mm256_loadu_ps(p->invstd + c));
            vec d = _mm256_fnmadd_ps(zhat, _mm256_loadu_ps(p->dgamma_n + c),
                                     _mm256_sub_ps(g, _mm256_loadu_ps(p->dbeta_n + c)));
            _mm256_storeu_ps(dzr + x * ch + c, _mm256_mul_ps(_mm256_loadu_ps(p->alpha + c), d));
        }
    }
}

/* mem: room for 4 ch floats */
static DzRows dz_rows(long batch, long height, long width, long ch, const float *z, const float *mean,
                      const float *dout, const float *out, const uint8_t *argmax, float *mem) {
    DzRows p = {batch, height, width, ch, z, mean, dout, out, argmax, mem, mem + ch, mem + 2 * ch, mem + 3 * ch};
    return p;
}

void bn_pool_backward(long batch, long height, long width, long ch, float eps, const float *z, const float *gamma,
                      const float *mean, const float *var, const float *dout, const float *out,
                      const uint8_t *argmax, const float *z_at_max, float *row_sums, float *dz, float *dgamma,
                      float *dbeta) {
    float mem[4 * ch];
    DzRows p = dz_rows(batch, height, width, ch, z, mean, dout, out, argmax, mem);
    bn_pool_backward_sums(&p, eps, gamma, var, z_at_max, row_sums, dgamma, dbeta);
#pragma omp parallel for schedule(static)
    for (long r = 0; r < batch * height; r++) dz_row(&p, r, dz + r * width * ch);
}

#define TILE 6    /* output pixels per forward register tile */
#define STRIPE 32 /* rows per partial sum (then added over the stripes in order) */

typedef struct {
    float *slot[3]; /* input row iy, padded, lives in slot iy % 3 */
    long tag[3];    /* which (b * height + iy) each slot holds */
    float *zeros;   /* the rows above and below the image */
} Rows;

/* mem: room for 4 (width + 2) ch floats; zeroed here (the padding pixels and the zero row) */
static void rows_init(Rows *r, float *mem, long width, long ch) {
    long n = (width + 2) * ch;
    memset(mem, 0, (size_t)(4 * n) * sizeof(float));
    for (int i = 0; i < 3; i++) r->slot[i] = mem + i * n, r->tag[i] = -1;
    r->zeros = mem + 3 * n;
}

/* The end of stripe s of STRIPE rows out of `total`. */
static long stripe_end(long s, long total) {
    return (s + 1) * STRIPE < total ? (s + 1) * STRIPE : total;
}

/* Padded input rows y - 1, y, y + 1 of image b: rows[kh][(x + 1) * ch + c] = in[b][y + kh - 1][x][c]. */
static void rows_get(Rows *r, const float *in, long b, long y, long height, long width, long ch, const float *rows[3]) {
    for (int kh = 0; kh < 3; kh++) {
        long iy = y + kh - 1, tag = b * height + iy;
        int s = (int)(iy % 3);
        if (iy < 0 || iy >= height) {
            rows[kh] = r->zeros;
            continue;
        }
        if (r->tag[s] != tag) {
            memcpy(r->slot[s] + ch, in + tag * width * ch, (size_t)(width * ch) * sizeof(float));
            r->tag[s] = tag;
        }
        rows[kh] = r->slot[s];
    }
}

/* Output pixels x0 .. x0 + n - 1 of one row, channels o .. o + 15. */
static inline __attribute__((always_inline)) void forward_tile(const int n, const float *rows[3], long x0, long in_ch,
                                                               long out_ch, const float *w, long o, const float *bias,
                                                               float *dst) {
    vec acc[TILE][2];
    vec b0 = bias ? _mm256_loadu_ps(bias + o) : _mm256_setzero_ps();
    vec b1 = bias ? _mm256_loadu_ps(bias + o + 8) : _mm256_setzero_ps();
    for (int p = 0; p < n; p++) acc[p][0] = b0, acc[p][1] = b1;
    for (int kh = 0; kh < 3; kh++)
        for (int kw = 0; kw < 3; kw++) {
            const float *src = rows[kh] + (x0 + kw) * in_ch, *wk = w + (kh * 3 + kw) * in_ch * out_ch + o;
            for (long c = 0; c < in_ch; c++) {
                vec w0 = _mm256_loadu_ps(wk + c * out_ch), w1 = _mm256_loadu_ps(wk + c * out_ch + 8);
                for (int p = 0; p < n; p++) {
                    vec a = _mm256_broadcast_ss(src + p * in_ch + c);
                    acc[p][0] = _mm256_fmadd_ps(a, w0, acc[p][0]);
                    acc[p][1] = _mm256_fmadd_ps(a, w1, acc[p][1]);
                }
            }
        }
    for (int p = 0; p < n; p++) {
        _mm256_storeu_ps(dst + (x0 + p) * out_ch + o, acc[p][0]);
        _mm256_storeu_ps(dst + (x0 + p) * out_ch + o + 8, acc[p][1]);
    }
}

/* One output row of the convolution from its padded input rows. */
static void conv_row(const float *rows[3], long width, long in_ch, long out_ch, const float *w, const float *bias,
                     float *dst) {
    for (long o = 0; o < out_ch; o += 16) {
        long x0 = 0;
        for (; x0 + TILE <= width; x0 += TILE) forward_tile(TILE, rows, x0, in_ch, out_ch, w, o, bias, dst);
        switch (width - x0) { /* constant tile sizes keep the accumulators in registers */
            case 1: forward_tile(1, rows, x0, in_ch, out_ch, w, o, bias, dst); break;
            case 2: forward_tile(2, rows, x0, in_ch, out_ch, w, o, bias, dst); break;
            case 3: forward_tile(3, rows, x0, in_ch, out_ch, w, o, bias, dst); break;
            case 4: forward_tile(4, rows, x0, in_ch, out_ch, w, o, bias, dst); break;
            case 5: forward_tile(5, rows, x0, in_ch, out_ch, w, o, bias, dst); break;
        }
    }
}

/* in [batch][height][width][in_ch], w [3][3][in_ch][out_ch], out [batch][height][width][out_ch]
 * with out_ch a multiple of 16; bias may be NULL (none). */
void conv3x3_forward(long batch, long height, long width, long in_ch, long out_ch, const float *in, const float *w,
                     const float *bias, float *out) {
#pragma omp parallel
    {
        float ring_mem[4 * (width + 2) * in_ch];
        Rows ring;
        rows_init(&ring, ring_mem, width, in_ch);
#pragma omp for schedule(static)
        for (long row = 0; row < batch * height; row++) {
            const float *rows[3];
            rows_get(&ring, in, row / height, row % height, height, width, in_ch, rows);
            conv_row(rows, width, in_ch, out_ch, w, bias, out + row * width * out_ch);
        }
    }
}

/* One output row's products for the three kw taps of input channels c .. c + nc - 1 and output
 * channels o .. o + 8 nv - 1, added to sums[kw][c][o] (one kernel row's part of the [kh][kw][c][o]
 * sums). 32 output channels at a time (nc 1, nv 4) take 7 loads per 12 multiply-adds; a last 16
 * take two input channels (nc 2, nv 2), 8 loads per 12. */
static inline __attribute__((always_inline)) void weight_grad_tile(const int nc, const int nv, const float *src,
                                                                   const float *grow, long width, long in_ch,
                                                                   long out_ch, long c, long o, float *sums) {
    vec acc[3][2][4];
    for (int kw = 0; kw < 3; kw++)
        for (int j = 0; j < nc; j++)
            for (int v = 0; v < nv; v++) acc[kw][j][v] = _mm256_setzero_ps();
    for (long x = 0; x < width; x++) {
        vec g[4];
        for (int v = 0; v < nv; v++) g[v] = _mm256_loadu_ps(grow + x * out_ch + o + 8 * v);
        for (int kw = 0; kw < 3; kw++)
            for (int j = 0; j < nc; j++) {
                vec a = _mm256_broadcast_ss(src + (x + kw) * in_ch + c + j);
                for (int v = 0; v < nv; v++) acc[kw][j][v] = _mm256_fmadd_ps(a, g[v], acc[kw][j][v]);
            }
    }
    for (int kw = 0; kw < 3; kw++)
        for (int j = 0; j < nc; j++)
            for (int v = 0; v < nv; v++) {
                float *p = sums + (kw * in_ch + c + j) * out_ch + o + 8 * v;
                _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[kw][j][v]));
            }
}

static void weight_grad_row(const float *rows[3], const float *grow, long width, long in_ch, long out_ch,
                            float *sums) {
    for (int kh = 0; kh < 3; kh++) {
        float *kh_sums = sums + kh * 3 * in_ch * out_ch;
        long o = 0;
        for (; o + 32 <= out_ch; o += 32)
            for (long c = 0; c < in_ch; c++)
                weight_grad_tile(1, 4, rows[kh], grow, width, in_ch, out_ch, c, o, kh_sums);
        if (o < out_ch) {
            long c = 0;
            for (; c + 2 <= in_ch; c += 2) weight_grad_tile(2, 2, rows[kh], grow, width, in_ch, out_ch, c, o, kh_sums);
            if (c < in_ch) weight_grad_tile(1, 2, rows[kh], grow, width, in_ch, out_ch, c, o, kh_sums);
        }
    }
    float *bias_sums = sums + 9 * in_ch * out_ch;
    for (long o = 0; o < out_ch; o += 8) {
        vec acc = _mm256_loadu_ps(bias_sums + o);
        for (long x = 0; x < width; x++) acc = _mm256_add_ps(acc, _mm256_loadu_ps(grow + x * out_ch + o));
        _mm256_storeu_ps(bias_sums + o, acc);
    }
}

/* in [batch][height][width][in_ch], g [batch][height][width][out_ch] with out_ch a multiple of 16;
 * dweight [out_ch][in_ch][3][3] (PyTorch's layout), dbias [out_ch]. Returns nonzero if out of memory. */
int conv3x3_weight_grad(long batch, long height, long width, long in_ch, long out_ch, const float *in, const float *g,
                        float *dweight, float *dbias) {
    long rows_total = batch * height, stripes = (rows_total + STRIPE - 1) / STRIPE, per = (9 * in_ch + 1) * out_ch;
    float *stripe_sums = calloc((size_t)(stripes * per), sizeof(float));
    if (!stripe_sums) return 1;
#pragma omp parallel
    {
        float ring_mem[4 * (width + 2) * in_ch];
        Rows ring;
        rows_init(&ring, ring_mem, width, in_ch);
#pragma omp for schedule(static)
        for (long s = 0; s < stripes; s++) {
            long last = stripe_end(s, rows_total);
            for (long row = s * STRIPE; row < last; row++) {
                const float *rows[3], *grow = g + row * width * out_ch;
                rows_get(&ring, in, row / height, row % height, height, width, in_ch, rows);
                weight_grad_row(rows, grow, width, in_ch, out_ch, stripe_sums + s * per);
            }
        }
    }
#pragma omp parallel for schedule(static)
    for (long p = 0; p < per; p++)
        for (long s = 1; s < stripes; s++) stripe_sums[p] += stripe_sums[s * per + p];
    for (long o = 0; o < out_ch; o++) {
        for (long c = 0; c < in_ch; c++)
            for (int k = 0; k < 9; k++) dweight[(o * in_ch + c) * 9 + k] = stripe_sums[(k * in_ch + c) * out_ch + o];
        dbias[o] = stripe_sums[9 * in_ch * out_ch + o];
    }
    free(stripe_sums);
    return 0;
}

/* The first block: its input (the images) needs no gradient and has few channels (K = 9 in_ch
 * values per 3x3 patch), so BatchNorm's batch statistics follow exactly from the patches' first
 * and second moments: with P the patch at each of the n output positions, m = sum P / n and
 * G = sum P P^T, channel o's weights w and bias b,
 *     mean = w . m + b,   var = w^T (G / n - m m^T) w,
 * and d z = alpha (g at the maximum - d beta / n - zhat d gamma / n) gives
 *     d w = alpha (sum of g times P at the maxima - d beta m - d gamma (G / n - m m^T) w / sqrt(var + eps)),
 *     d b = 0 (BatchNorm removes any constant added to z).
 * z is then never stored: the forward pass makes the convolution's rows in pairs and pools them
 * while in cache, and the backward pass reads only pooled tensors and the images. The moments are
 * summed in double precision (a product of two floats is exact in double), so the variance keeps
 * its precision even for weights whose output varies little. */

/* The patch moments by input rows. A patch is (R(y - 1, x), R(y, x), R(y + 1, x)) with
 * R(u, x) = (in[u][x - 1][.], in[u][x][.], in[u][x + 1][.]), zero outside the image: 3 in_ch <= 12
 * values (RP, the padded length). So each block (kh, kh + d) of G is a sum over input rows u
 * of L_d(u) = sum over x of R(u, x) R(u + d, x)^T, over every u except, for d = 0, the last
 * row (kh = 0) or the first (kh = 2); the first moments likewise. That is 3 x 9 x 12
 * multiply-adds per pixel (3 channels) instead of 27 x 27 per patch. */
#define RP 12
#define LAG (RP * RP)
enum { LAG0, LAG1, LAG2, LAG0_FIRST, LAG0_LAST, SUM, SUM_FIRST, SUM_LAST }; /* a stripe's partial sums */
#define MOMENTS (5 * LAG + 3 * RP)
static const long moment_at[] = {0, LAG, 2 * LAG, 3 * LAG, 4 * LAG, 5 * LAG, 5 * LAG + RP, 5 * LAG + 2 * RP};

/* R(u, .) of one input row into r, whose values past 3 in_ch stay zero; padded: room for
 * (width + 2) in_ch floats, the first and last in_ch zero. */
static void patch_row(const float *row, long width, long in_ch, float *padded, double *r) {
    memcpy(padded + in_ch, row, (size_t)(width * in_ch) * sizeof(float));
    for (long x = 0; x < width; x++)
        for (long j = 0; j < 3 * in_ch; j++) r[x * RP + j] = padded[x * in_ch + j];
}

/* lag[i][j] += sum over x of a[x][i] b[x][j], for i < m (a multiple of 3) */
static void add_lag(const double *a, const double *b, long width, long m, double *lag) {
    for (long i = 0; i < m; i += 3) {
        __m256d acc[3][3];
        for (int t = 0; t < 3; t++) acc[t][0] = acc[t][1] = acc[t][2] = _mm256_setzero_pd();
        for (long x = 0; x < width; x++) {
            const double *ax = a + x * RP, *bx = b + x * RP;
            __m256d q0 = _mm256_loadu_pd(bx), q1 = _mm256_loadu_pd(bx + 4), q2 = _mm256_loadu_pd(bx + 8);
            for (int t = 0; t < 3; t++) {
                __m256d p = _mm256_broadcast_sd(ax + i + t);
                acc[t][0] = _mm256_fmadd_pd(p, q0, acc[t][0]);
                acc[t][1] = _mm256_fmadd_pd(p, q1, acc[t][1]);
                acc[t][2] = _mm256_fmadd_pd(p, q2, acc[t][2]);
            }
        }
        for (int t = 0; t < 3; t++)
            for (int v = 0; v < 3; v++) {
                double *l = lag + (i + t) * RP + 4 * v;
                _mm256_storeu_pd(l, _mm256_add_pd(_mm256_loadu_pd(l), acc[t][v]));
            }
    }
}

/* sums [K] = sum over output positions of P, gram [K][K] = sum of P P^T, patch values in [kh][kw][c]
 * order, for in [batch][height][width][in_ch] with in_ch <= 4. Returns nonzero if out of memory. */
int patch_moments(long batch, long height, long width, long in_ch, const float *in, double *sums, double *gram) {
    long m = 3 * in_ch, k = 9 * in_ch, rows_total = batch * height, stripes = (rows_total + STRIPE - 1) / STRIPE;
    double *stripe_sums = calloc((size_t)(stripes * MOMENTS), sizeof(double));
    if (!stripe_sums) return 1;
#pragma omp parallel
    {
        double built[3][width * RP]; /* R(u, .) of image b in slot (b * height + u) % 3 */
        float padded[(width + 2) * in_ch];
        long tag[3] = {-1, -1, -1};
        memset(built, 0, sizeof built);
        memset(padded, 0, sizeof padded);
#pragma omp for schedule(static)
        for (long s = 0; s < stripes; s++) {
            double *part = stripe_sums + s * MOMENTS;
            long last = stripe_end(s, rows_total);
            for (long row = s * STRIPE; row < last; row++) {
                long u = row % height;
                const double *r[3];
                for (int d = 0; d < 3 && u + d < height; d++) {
                    long slot = (row + d) % 3;
                    if (tag[slot] != row + d)
                        patch_row(in + (row + d) * width * in_ch, width, in_ch, padded, built[slot]);
                    tag[slot] = row + d;
                    r[d] = built[slot];
                }
                for (int d = 0; d < 3 && u + d < height; d++)
                    add_lag(r[0], r[d], width, m, part + moment_at[LAG0 + d]);
                if (u == 0) add_lag(r[0], r[0], width, m, part + moment_at[LAG0_FIRST]);
                if (u == height - 1) add_lag(r[0], r[0], width, m, part + moment_at[LAG0_LAST]);
                double row_sum[RP] = {0};
                for (long x = 0; x < width; x++)
                    for (long j = 0; j < RP; j++) row_sum[j] += r[0][x * RP + j];
                for (long j = 0; j < RP; j++) {
                    part[moment_at[SUM] + j] += row_sum[j];
                    if (u == 0) part[moment_at[SUM_FIRST] + j] += row_sum[j];
                    if (u == height - 1) part[moment_at[SUM_LAST] + j] += row_sum[j];
                }
            }
        }
    }
    for (long s = 1; s < stripes; s++)
        for (long p = 0; p < MOMENTS; p++) stripe_sums[p] += stripe_sums[s * MOMENTS + p];
    const double *total = stripe_sums;
    for (int kh = 0; kh < 3; kh++) {
        /* kernel row kh sees input rows y + kh - 1: all but the last (kh = 0) or the first (kh = 2) */
        const double *left_out = kh == 0 ? total + moment_at[LAG0_LAST] : total + moment_at[LAG0_FIRST];
        const double *sum_left_out = kh == 0 ? total + moment_at[SUM_LAST] : total + moment_at[SUM_FIRST];
        for (long i = 0; i < m; i++) sums[kh * m + i] = total[moment_at[SUM] + i] - (kh == 1 ? 0.0 : sum_left_out[i]);
        for (int kh2 = kh; kh2 < 3; kh2++) {
            const double *lag = total + moment_at[LAG0 + kh2 - kh];
            for (long i = 0; i < m; i++)
                for (long j = 0; j < m; j++) {
                    double v = lag[i * RP + j] - (kh2 == kh && kh != 1 ? left_out[i * RP + j] : 0.0);
                    gram[(kh * m + i) * k + kh2 * m + j] = gram[(kh2 * m + j) * k + kh * m + i] = v;
                }
        }
    }
    free(stripe_sums);
    return 0;
}

/* (G / n - m m^T) w for channel o of taps [K][ch], and w . m; n = the number of output positions. */
static double centred_gram_times_w(long k, long ch, long o, double n, const float *taps, const double *sums,
                                   const double *gram, double *cw) {
    double wm = 0.0;
    for (long j = 0; j < k; j++) wm += taps[j * ch + o] * (sums[j] / n);
    for (long i = 0; i < k; i++) {
        double gw = 0.0;
        for (long j = 0; j < k; j++) gw += gram[i * k + j] * taps[j * ch + o];
        cw[i] = gw / n - (sums[i] / n) * wm;
    }
    return wm;
}

/* The first block's forward pass, z never stored. With sums and gram (patch_moments), the batch's
 * statistics are computed from them and written to stats_mean, stats_var; without (NULL), those
 * are read (evaluation mode) and argmax, z_at_max may be NULL. taps [3][3][in_ch][ch]. */
void first_block_forward(long batch, long height, long width, long in_ch, long ch, float eps, const float *in,
                         const float *taps, const float *bias, const float *gamma, const float *beta,
                         const double *sums, const double *gram, float *stats_mean, float *stats_var, float *out,
                         uint8_t *argmax, float *z_at_max) {
    long k = 9 * in_ch, ho = height / 2, wo = width / 2;
    double mean[ch], var[ch], cw[k], n = (double)batch * height * width;
    for (long o = 0; o < ch; o++) {
        if (sums) {
            double wm = centred_gram_times_w(k, ch, o, n, taps, sums, gram, cw), wcw = 0.0;
            for (long j = 0; j < k; j++) wcw += taps[j * ch + o] * cw[j];
            mean[o] = wm + bias[o];
            var[o] = wcw > 0.0 ? wcw : 0.0;
            stats_mean[o] = (float)mean[o], stats_var[o] = (float)var[o];
        } else {
            mean[o] = stats_mean[o], var[o] = stats_var[o];
        }
    }
    float alpha[ch], shift[ch];
    bn_scale_shift(ch, eps, mean, var, gamma, beta, alpha, shift);
#pragma omp parallel
    {
        float ring_mem[4 * (width + 2) * in_ch], zrows[2 * width * ch];
        Rows ring;
        rows_init(&ring, ring_mem, width, in_ch);
#pragma omp for schedule(static)
        for (long r = 0; r < batch * ho; r++) {
            for (int k2 = 0; k2 < 2; k2++) {
                const float *rows[3];
                rows_get(&ring, in, r / ho, 2 * (r % ho) + k2, height, width, in_ch, rows);
                conv_row(rows, width, in_ch, ch, taps, bias, zrows + k2 * width * ch);
            }
            pool_row(zrows, zrows + width * ch, wo, ch, alpha, shift, r * wo * ch, out, argmax, z_at_max);
        }
    }
}

/* sums [ch][K] = sum over pooled positions of g (as grad_at_max) times the patch at the window's
 * maximum, in [kh][kw][c] order: the part of d w that comes from g itself. Each pooled row's
 * patches lie in input rows 2 yo - 1 .. 2 yo + 2; one kernel row of a patch is 3 in_ch <= 16
 * consecutive floats, two vectors (the lanes past it are summed too, then ignored). Returns
 * nonzero if out of memory. */
static int sum_patches_at_max(const DzRows *p, long in_ch, const float *in, float *sums) {
    long ch = p->ch, height = p->height, width = p->width, ho = height / 2, wo = width / 2, k = 9 * in_ch;
    long pooled_rows = p->batch * ho, stripes = (pooled_rows + STRIPE - 1) / STRIPE, per = ch * 3 * 16;
    long row_len = (width + 2) * in_ch + 16; /* padded input row, and room for the vectors' overhang */
    float *stripe_sums = calloc((size_t)(stripes * per), sizeof(float));
    if (!stripe_sums) return 1;
#pragma omp parallel
    {
        float rows[4 * row_len], g[wo * ch]; /* padded input rows 2 yo - 1 .. 2 yo + 2; the row's g */
        long window[4] = {0, in_ch, row_len, row_len + in_ch}; /* where each window position's patch starts */
        memset(rows, 0, sizeof rows);
#pragma omp for schedule(static)
        for (long s = 0; s < stripes; s++) {
            long last = stripe_end(s, pooled_rows);
            for (long r = s * STRIPE; r < last; r++) {
                long b = r / ho, y0 = 2 * (r % ho) - 1;
                for (int i = 0; i < 4; i++) {
                    long y = y0 + i;
                    if (y >= 0 && y < height)
                        memcpy(rows + i * row_len + in_ch, in + (b * height + y) * width * in_ch,
                               (size_t)(width * in_ch) * sizeof(float));
                    else
                        memset(rows + i * row_len, 0, (size_t)row_len * sizeof(float));
                }
                const float *out = p->out + r * wo * ch, *dout = p->dout + r * wo * ch;
                const uint8_t *argmax = p->argmax + r * wo * ch;
                for (long o = 0; o < wo * ch; o += 8) /* no branch on out > 0 in the loop below */
                    _mm256_storeu_ps(g + o, _mm256_and_ps(_mm256_loadu_ps(dout + o),
                                                          _mm256_cmp_ps(_mm256_loadu_ps(out + o), _mm256_setzero_ps(),
                                                                        _CMP_GT_OQ)));
                for (long c = 0; c < ch; c++) {
                    vec acc[3][2];
                    for (int kh = 0; kh < 3; kh++) acc[kh][0] = acc[kh][1] = _mm256_setzero_ps();
                    for (long xo = 0; xo < wo; xo++) {
                        long o = xo * ch + c;
                        vec gv = _mm256_broadcast_ss(g + o);
                        const float *src = rows + window[argmax[o]] + 2 * xo * in_ch;
                        for (int kh = 0; kh < 3; kh++) {
                            acc[kh][0] = _mm256_fmadd_ps(gv, _mm256_loadu_ps(src + kh * row_len), acc[kh][0]);
                            acc[kh][1] = _mm256_fmadd_ps(gv, _mm256_loadu_ps(src + kh * row_len + 8), acc[kh][1]);
                        }
                    }
                    float *sc = stripe_sums + s * per + c * 3 * 16;
                    for (int kh = 0; kh < 3; kh++)
                        for (int v = 0; v < 2; v++)
                            _mm256_storeu_ps(sc + kh * 16 + v * 8,
                                             _mm256_add_ps(_mm256_loadu_ps(sc + kh * 16 + v * 8), acc[kh][v]));
                }
            }
        }
    }
    for (long c = 0; c < ch; c++)
        for (int kh = 0; kh < 3; kh++)
            for (long j = 0; j < 3 * in_ch; j++) {
                float total = 0.0f;
                for (long s = 0; s < stripes; s++) total += stripe_sums[s * per + c * 48 + kh * 16 + j];
                sums[c * k + kh * 3 * in_ch + j] = total;
            }
    free(stripe_sums);
    return 0;
}

/* The first block's backward pass: first_block_forward's gradients (dweight in PyTorch's
 * [ch][in_ch][3][3] layout). Other arguments as for bn_pool_backward. Returns nonzero if out of memory. */
int first_block_backward(long batch, long height, long width, long in_ch, long ch, float eps, const float *in,
                         const float *taps, const double *sums, const double *gram, const float *gamma,
                         const float *mean, const float *var, const float *dout, const float *out,
                         const uint8_t *argmax, const float *z_at_max, float *row_sums, float *dweight, float *dbias,
                         float *dgamma, float *dbeta) {
    long k = 9 * in_ch;
    float mem[4 * ch], at_max[ch * k];
    DzRows p = dz_rows(batch, height, width, ch, NULL, mean, dout, out, argmax, mem);
    bn_pool_backward_sums(&p, eps, gamma, var, z_at_max, row_sums, dgamma, dbeta);
    if (sum_patches_at_max(&p, in_ch, in, at_max)) return 1;
    double cw[k], n = (double)batch * height * width;
    for (long o = 0; o < ch; o++) {
        double invstd = 1.0 / __builtin_sqrt((double)var[o] + eps), alpha = gamma[o] * invstd;
        centred_gram_times_w(k, ch, o, n, taps, sums, gram, cw);
        for (long c = 0; c < in_ch; c++)
            for (int t = 0; t < 9; t++) {
                long j = t * in_ch + c;
                dweight[(o * in_ch + c) * 9 + t] =
                    (float)(alpha * (at_max[o * k + j] - dbeta[o] * (sums[j] / n) - dgamma[o] * invstd * cw[j]));
            }
        dbias[o] = 0.0f;
    }
    return 0;
}
