/* The weight and bias gradients of the learner's first convolution (3x3, padding 1, stride 1,
 * 3 input channels), from its channels-last input and output gradient. Compiled at first use
 * by `kernels.py`.
 *
 * Why: with three input channels the weight gradient is a product of a (pixels x 32) and a
 * (pixels x 27) matrix, a shape that oneDNN runs at about a fifth of the machine's
 * multiply-add rate; it is the largest single cost of an inner step at 84x84.
 *
 *     d weight[o][c][kh][kw] = sum over (b, y, x) of g[b][y][x][o] * in[b][y + kh - 1][x + kw - 1][c]
 *     d bias[o]              = sum over (b, y, x) of g[b][y][x][o]
 *
 * For one output row and one kernel row, eight output channels are one vector and the nine
 * (kw, c) products accumulate in registers along the row. Rows are shared out over OpenMP
 * threads (PyTorch's pool, see lstm_cell.c) in stripes whose partial sums are added in order,
 * so the result does not depend on the number of threads. */

#include <immintrin.h>
#include <string.h>

#define C 3
#define STRIPE 32 /* output rows per partial sum */

typedef __m256 vec;

/* One stripe of output rows [first, last) of the (batch x height) rows; `sums` gets its
 * partial sums laid out [kh][kw][c][o] and then [o] for the bias. */
static void stripe_grad(long first, long last, long height, long width, long out_ch, const float *in,
                        const float *g, float *sums) {
    long weights = 9 * C * out_ch;
    memset(sums, 0, (size_t)(weights + out_ch) * sizeof(float));
    float padded[(width + 2) * C];
    for (long row = first; row < last; row++) {
        long b = row / height, y = row % height;
        const float *grow = g + row * width * out_ch;
        for (long kh = 0; kh < 3; kh++) {
            long iy = y + kh - 1;
            if (iy < 0 || iy >= height) continue;
            /* the input row with a zero pixel at each end stands in for the padding */
            memset(padded, 0, sizeof padded);
            memcpy(padded + C, in + ((b * height + iy) * width) * C, (size_t)(width * C) * sizeof(float));
            for (long o = 0; o < out_ch; o += 8) {
                float *acc_out = sums + (kh * 3 * C) * out_ch + o;
                vec acc[3][C];
                for (int kw = 0; kw < 3; kw++)
                    for (int c = 0; c < C; c++) acc[kw][c] = _mm256_loadu_ps(acc_out + (kw * C + c) * out_ch);
                vec bias = _mm256_setzero_ps();
                for (long x = 0; x < width; x++) {
                    vec gv = _mm256_loadu_ps(grow + x * out_ch + o);
                    const float *p = padded + x * C;
                    for (int kw = 0; kw < 3; kw++)
                        for (int c = 0; c < C; c++)
                            acc[kw][c] = _mm256_fmadd_ps(gv, _mm256_broadcast_ss(p + kw * C + c), acc[kw][c]);
                    if (kh == 1) bias = _mm256_add_ps(bias, gv);
                }
                for (int kw = 0; kw < 3; kw++)
                    for (int c = 0; c < C; c++) _mm256_storeu_ps(acc_out + (kw * C + c) * out_ch, acc[kw][c]);
                if (kh == 1) {
                    float *bias_out = sums + weights + o;
                    _mm256_storeu_ps(bias_out, _mm256_add_ps(_mm256_loadu_ps(bias_out), bias));
                }
            }
        }
    }
}

/* in: [batch][height][width][3], g: [batch][height][width][out_ch] (out_ch a multiple of 8);
 * dweight: [out_ch][3][3][3] (PyTorch's layout), dbias: [out_ch]; stripe_sums: room for
 * ceil(batch * height / STRIPE) x (27 + 1) x out_ch floats. */
void conv1_grad(long batch, long height, long width, long out_ch, const float *in, const float *g,
                float *dweight, float *dbias, float *stripe_sums) {
    long rows = batch * height, stripes = (rows + STRIPE - 1) / STRIPE, per = (9 * C + 1) * out_ch;
#pragma omp parallel for schedule(static)
    for (long s = 0; s < stripes; s++) {
        long last = (s + 1) * STRIPE < rows ? (s + 1) * STRIPE : rows;
        stripe_grad(s * STRIPE, last, height, width, out_ch, in, g, stripe_sums + s * per);
    }
    for (long s = 1; s < stripes; s++)
        for (long p = 0; p < per; p++) stripe_sums[p] += stripe_sums[s * per + p];
    for (long o = 0; o < out_ch; o++) {
        for (int c = 0; c < C; c++)
            for (int kh = 0; kh < 3; kh++)
                for (int kw = 0; kw < 3; kw++)
                    dweight[((o * C + c) * 3 + kh) * 3 + kw] = stripe_sums[((kh * 3 + kw) * C + c) * out_ch + o];
        dbias[o] = stripe_sums[9 * C * out_ch + o];
    }
}
