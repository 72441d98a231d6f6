/* The learner's convolutions (3x3, padding 1, stride 1) on channels-last tensors: the forward
 * pass, which with flipped, transposed weights is also the input's gradient, and the weight and
 * bias gradients. Compiled at first use by `kernels.py`.
 *
 * Why: oneDNN runs the backward pass of these small convolutions (32 channels, 42x42 and less,
 * 5 to 75 images) at about half the machine's multiply-add rate, and its weight gradient with
 * three input channels at a fifth; together they were most of an inner step. Here both run at
 * about the forward pass's rate.
 *
 *     forward:       out[b][y][x][o] = bias[o] + sum over (kh, kw, c) of
 *                                      w[kh][kw][c][o] * in[b][y + kh - 1][x + kw - 1][c]
 *     weight grad:   d w[o][c][kh][kw] = sum over (b, y, x) of g[b][y][x][o] * in[b][y + kh - 1][x + kw - 1][c]
 *                    d bias[o]         = sum over (b, y, x) of g[b][y][x][o]
 *
 * (pixels outside the image are zero). Both walk output rows; the three input rows a row needs
 * are copied, with a zero pixel at each end standing in for the padding, into a ring that copies
 * each input row once per image. Register tiles: 6 output pixels x 16 output channels (forward),
 * 3 taps x 2 input channels x 16 output channels (weight gradient), each fed by one broadcast
 * per multiply-add pair, as in a matrix-multiply kernel.
 *
 * Rows are shared out over OpenMP threads (PyTorch's pool, see lstm_cell.c). The weight gradient
 * sums rows in stripes whose partial sums are added in order, so no result depends on the number
 * of threads. */

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define TILE 6    /* output pixels per forward register tile */
#define STRIPE 32 /* output rows per partial sum of the weight gradient */

typedef __m256 vec;

typedef struct {
    float *slot[3]; /* input row iy, padded, lives in slot iy % 3 */
    long tag[3];    /* which (b * height + iy) each slot holds */
    float *zeros;   /* the rows above and below the image */
} Rows;

/* mem: room for 4 (width + 2) ch floats, zeroed */
static void rows_init(Rows *r, float *mem, long width, long ch) {
    long n = (width + 2) * ch;
    for (int i = 0; i < 3; i++) r->slot[i] = mem + i * n, r->tag[i] = -1;
    r->zeros = mem + 3 * n;
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

/* in [batch][height][width][in_ch], w [3][3][in_ch][out_ch], out [batch][height][width][out_ch]
 * with out_ch a multiple of 16; bias may be NULL (none). */
void conv3x3_forward(long batch, long height, long width, long in_ch, long out_ch, const float *in, const float *w,
                     const float *bias, float *out) {
#pragma omp parallel
    {
        float ring_mem[4 * (width + 2) * in_ch];
        memset(ring_mem, 0, sizeof ring_mem);
        Rows ring;
        rows_init(&ring, ring_mem, width, in_ch);
#pragma omp for schedule(static)
        for (long row = 0; row < batch * height; row++) {
            const float *rows[3];
            rows_get(&ring, in, row / height, row % height, height, width, in_ch, rows);
            float *dst = out + row * width * out_ch;
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
    }
}

/* One output row's products for the three kw taps of input channels c .. c + n - 1 and output
 * channels o .. o + 15, added to sums[kw][c][o] (one kernel row's part of the [kh][kw][c][o] sums). */
static inline __attribute__((always_inline)) void weight_grad_tile(const int n, const float *src, const float *grow,
                                                                   long width, long in_ch, long out_ch, long c, long o,
                                                                   float *sums) {
    vec acc[3][2][2];
    for (int kw = 0; kw < 3; kw++)
        for (int j = 0; j < n; j++) acc[kw][j][0] = acc[kw][j][1] = _mm256_setzero_ps();
    for (long x = 0; x < width; x++) {
        vec g0 = _mm256_loadu_ps(grow + x * out_ch + o), g1 = _mm256_loadu_ps(grow + x * out_ch + o + 8);
        for (int kw = 0; kw < 3; kw++)
            for (int j = 0; j < n; j++) {
                vec a = _mm256_broadcast_ss(src + (x + kw) * in_ch + c + j);
                acc[kw][j][0] = _mm256_fmadd_ps(a, g0, acc[kw][j][0]);
                acc[kw][j][1] = _mm256_fmadd_ps(a, g1, acc[kw][j][1]);
            }
    }
    for (int kw = 0; kw < 3; kw++)
        for (int j = 0; j < n; j++) {
            float *p = sums + (kw * in_ch + c + j) * out_ch + o;
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[kw][j][0]));
            _mm256_storeu_ps(p + 8, _mm256_add_ps(_mm256_loadu_ps(p + 8), acc[kw][j][1]));
        }
}

static void weight_grad_row(const float *rows[3], const float *grow, long width, long in_ch, long out_ch,
                            float *sums) {
    for (int kh = 0; kh < 3; kh++)
        for (long o = 0; o < out_ch; o += 16) {
            float *kh_sums = sums + kh * 3 * in_ch * out_ch;
            long c = 0;
            for (; c + 2 <= in_ch; c += 2) weight_grad_tile(2, rows[kh], grow, width, in_ch, out_ch, c, o, kh_sums);
            if (c < in_ch) weight_grad_tile(1, rows[kh], grow, width, in_ch, out_ch, c, o, kh_sums);
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
        memset(ring_mem, 0, sizeof ring_mem);
        Rows ring;
        rows_init(&ring, ring_mem, width, in_ch);
#pragma omp for schedule(static)
        for (long s = 0; s < stripes; s++) {
            long last = (s + 1) * STRIPE < rows_total ? (s + 1) * STRIPE : rows_total;
            for (long row = s * STRIPE; row < last; row++) {
                const float *rows[3];
                rows_get(&ring, in, row / height, row % height, height, width, in_ch, rows);
                weight_grad_row(rows, g + row * width * out_ch, width, in_ch, out_ch, stripe_sums + s * per);
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
