/* The meta-learner's first layer (an nn.LSTMCell applied to every learner parameter) and the
 * projection of its hidden state that the second layer uses, fused into one pass over memory
 * for the forward and one for the backward. Compiled at first use by `reproml/kernels/build.py`.
 *
 * Why: with 32,901 rows of 22 inputs and 20 hidden units, PyTorch runs this as a dozen passes
 * (thin matrix products, sigmoid, tanh, products, sums), each reading and writing every row.
 * Here a block of 8 rows is loaded once and everything else happens in registers.
 *
 * Layout. Row-wise inputs and outputs are feature-major: `features` (2 x n, the preprocessed
 * gradient) and `projected` (2 x n). The state stays in a blocked layout between calls, block b
 * holding rows 8b..8b+7 of every feature contiguously ([n_blocks][20][8] for h and cell,
 * [n_blocks][80][8] for the saved gate values), so that each block reads and writes one
 * contiguous stretch. The padding rows of the last block only ever see zero inputs and zero
 * gradients.
 *
 * Equations (nn.LSTMCell, gates i, f, g, o; x = [features, h]; the loss features, equal for
 * every row, are folded into `bias` by the caller):
 *     a = weight x + bias                          (weight: 80 x 22)
 *     i, f, o = sigmoid(a_i, a_f, a_o), g = tanh(a_g)
 *     cell' = f cell + i g,  h' = o tanh(cell')
 *     projected = proj^T h'                        (proj: 20 x 2)
 *
 * Blocks are shared out over OpenMP threads. Built with -fopenmp after PyTorch is loaded, this
 * library binds to PyTorch's own libgomp (same soname), so it uses PyTorch's thread pool and
 * thread count instead of competing with it for the cores. */

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define IN 22
#define HID 20
#define GATES 80
#define L 8
#define PARAM_GRADS (GATES * IN + GATES + HID * 2)

typedef __m256 vec;

static inline vec splat(float x) { return _mm256_set1_ps(x); }

/* The lanes of a row-wise (2 x n) input or output that belong to rows below n. */
static inline __m256i row_mask(long n, long block) {
    long valid = n - block * L;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(valid < L ? valid : L)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* exp by range reduction to [-ln2/2, ln2/2] and Cephes' degree-6 polynomial for expf (the
 * method of the SIMD math libraries); relative error about 1e-7. Inputs are clamped to the
 * float32 range, so sigmoid and tanh saturate instead of overflowing. */
static inline vec vexp(vec x) {
    x = _mm256_min_ps(_mm256_max_ps(x, splat(-87.3f)), splat(88.3f));
    vec k = _mm256_round_ps(_mm256_mul_ps(x, splat(1.44269504088896341f)),
                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(k, splat(0.693359375f), x);
    x = _mm256_fnmadd_ps(k, splat(-2.12194440e-4f), x);
    vec y = splat(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, splat(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, splat(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, splat(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, splat(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, splat(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, splat(1.0f)));
    __m256i two_k = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(two_k));
}

static inline vec vsigmoid(vec x) {
    return _mm256_div_ps(splat(1.0f), _mm256_add_ps(splat(1.0f), vexp(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

static inline vec vtanh(vec x) {
    vec e = vexp(_mm256_add_ps(x, x));
    return _mm256_div_ps(_mm256_sub_ps(e, splat(1.0f)), _mm256_add_ps(e, splat(1.0f)));
}

void lstm_forward(long n, const float *weight, const float *bias, const float *proj,
                  const float *features, const float *h, const float *cell,
                  float *gates, float *h_out, float *cell_out, float *projected) {
    long blocks = (n + L - 1) / L;
#pragma omp parallel for schedule(static)
    for (long b = 0; b < blocks; b++) {
        __m256i mask = row_mask(n, b);
        vec x[IN];
        x[0] = _mm256_maskload_ps(features + b * L, mask);
        x[1] = _mm256_maskload_ps(features + n + b * L, mask);
        for (int k = 0; k < HID; k++) x[2 + k] = _mm256_loadu_ps(h + (b * HID + k) * L);
        vec to_f = _mm256_setzero_ps(), to_i = _mm256_setzero_ps();
        for (int u = 0; u < HID; u += 2) {
            /* two hidden units at a time: eight independent sums keep both FMA units busy */
            vec a[8];
            for (int q = 0; q < 8; q++) a[q] = splat(bias[(q / 2) * HID + u + q % 2]);
            for (int k = 0; k < IN; k++)
                for (int q = 0; q < 8; q++)
                    a[q] = _mm256_fmadd_ps(splat(weight[((q / 2) * HID + u + q % 2) * IN + k]), x[k], a[q]);
            for (int s = 0; s < 2; s++) {
                vec i = vsigmoid(a[s]), f = vsigmoid(a[2 + s]), g = vtanh(a[4 + s]), o = vsigmoid(a[6 + s]);
                vec c = _mm256_fmadd_ps(f, _mm256_loadu_ps(cell + (b * HID + u + s) * L), _mm256_mul_ps(i, g));
                vec hh = _mm256_mul_ps(o, vtanh(c));
                float *saved = gates + (b * GATES + u + s) * L;
                _mm256_storeu_ps(saved, i);
                _mm256_storeu_ps(saved + HID * L, f);
                _mm256_storeu_ps(saved + 2 * HID * L, g);
                _mm256_storeu_ps(saved + 3 * HID * L, o);
                _mm256_storeu_ps(cell_out + (b * HID + u + s) * L, c);
                _mm256_storeu_ps(h_out + (b * HID + u + s) * L, hh);
                to_f = _mm256_fmadd_ps(splat(proj[(u + s) * 2]), hh, to_f);
                to_i = _mm256_fmadd_ps(splat(proj[(u + s) * 2 + 1]), hh, to_i);
            }
        }
        _mm256_maskstore_ps(projected + b * L, mask, to_f);
        _mm256_maskstore_ps(projected + n + b * L, mask, to_i);
    }
}

/* Gradients: `dh_out`, `dcell_out` (blocked) and `dprojected` (2 x n) flow in; `dh`, `dcell`
 * (blocked) flow out to the previous step; `param_grad` accumulates
 * [d weight (80 x 22), d bias (80), d proj (20 x 2)].
 *
 * The weight gradient sums da x^T over all rows. Summing it block by block would load and store
 * 1,760 accumulators per block; instead the gate gradients and inputs of CHUNK blocks are kept,
 * and each 4 x 2 tile of the weight gradient is summed over the chunk in registers. */
#define CHUNK 32
#define STRIPE 128

static void backward_blocks(long n, long first, long last, const float *weight, const float *proj,
                            const float *features, const float *h, const float *cell, const float *gates,
                            const float *cell_out, const float *dh_out, const float *dcell_out,
                            const float *dprojected, float *dh, float *dcell, float *param_grad) {
    vec da[CHUNK][GATES], x[CHUNK][IN];
    vec dweight[GATES * IN], dbias[GATES], dproj[HID * 2];
    memset(dweight, 0, sizeof dweight);
    memset(dbias, 0, sizeof dbias);
    memset(dproj, 0, sizeof dproj);
    const vec one = splat(1.0f);
    for (long b0 = first; b0 < last; b0 += CHUNK) {
        long chunk = last - b0 < CHUNK ? last - b0 : CHUNK;
        for (long c = 0; c < chunk; c++) {
            long b = b0 + c;
            __m256i mask = row_mask(n, b);
            vec dto_f = _mm256_maskload_ps(dprojected + b * L, mask);
            vec dto_i = _mm256_maskload_ps(dprojected + n + b * L, mask);
            for (int u = 0; u < HID; u++) {
                const float *saved = gates + (b * GATES + u) * L;
                vec i = _mm256_loadu_ps(saved), f = _mm256_loadu_ps(saved + HID * L);
                vec g = _mm256_loadu_ps(saved + 2 * HID * L), o = _mm256_loadu_ps(saved + 3 * HID * L);
                vec tc = vtanh(_mm256_loadu_ps(cell_out + (b * HID + u) * L));
                vec hh = _mm256_mul_ps(o, tc);
                dproj[u * 2] = _mm256_fmadd_ps(hh, dto_f, dproj[u * 2]);
                dproj[u * 2 + 1] = _mm256_fmadd_ps(hh, dto_i, dproj[u * 2 + 1]);
                vec dhh = _mm256_loadu_ps(dh_out + (b * HID + u) * L);
                dhh = _mm256_fmadd_ps(splat(proj[u * 2]), dto_f, dhh);
                dhh = _mm256_fmadd_ps(splat(proj[u * 2 + 1]), dto_i, dhh);
                vec dc = _mm256_fmadd_ps(_mm256_mul_ps(dhh, o), _mm256_fnmadd_ps(tc, tc, one),
                                         _mm256_loadu_ps(dcell_out + (b * HID + u) * L));
                da[c][u] = _mm256_mul_ps(_mm256_mul_ps(dc, g), _mm256_mul_ps(i, _mm256_sub_ps(one, i)));
                da[c][HID + u] = _mm256_mul_ps(_mm256_mul_ps(dc, _mm256_loadu_ps(cell + (b * HID + u) * L)),
                                               _mm256_mul_ps(f, _mm256_sub_ps(one, f)));
                da[c][2 * HID + u] = _mm256_mul_ps(_mm256_mul_ps(dc, i), _mm256_fnmadd_ps(g, g, one));
                da[c][3 * HID + u] = _mm256_mul_ps(_mm256_mul_ps(dhh, tc), _mm256_mul_ps(o, _mm256_sub_ps(one, o)));
                _mm256_storeu_ps(dcell + (b * HID + u) * L, _mm256_mul_ps(dc, f));
            }
            for (int j = 0; j < GATES; j++) dbias[j] = _mm256_add_ps(dbias[j], da[c][j]);
            for (int k0 = 0; k0 < HID; k0 += 10) {
                vec s[10];
                for (int k = 0; k < 10; k++) s[k] = _mm256_setzero_ps();
                for (int j = 0; j < GATES; j++)
                    for (int k = 0; k < 10; k++) s[k] = _mm256_fmadd_ps(splat(weight[j * IN + 2 + k0 + k]), da[c][j], s[k]);
                for (int k = 0; k < 10; k++) _mm256_storeu_ps(dh + (b * HID + k0 + k) * L, s[k]);
            }
            x[c][0] = _mm256_maskload_ps(features + b * L, mask);
            x[c][1] = _mm256_maskload_ps(features + n + b * L, mask);
            for (int k = 0; k < HID; k++) x[c][2 + k] = _mm256_loadu_ps(h + (b * HID + k) * L);
        }
        for (int j0 = 0; j0 < GATES; j0 += 4)
            for (int k0 = 0; k0 < IN; k0 += 2) {
                vec s[4][2];
                for (int j = 0; j < 4; j++) s[j][0] = s[j][1] = _mm256_setzero_ps();
                for (long c = 0; c < chunk; c++)
                    for (int j = 0; j < 4; j++)
                        for (int k = 0; k < 2; k++) s[j][k] = _mm256_fmadd_ps(da[c][j0 + j], x[c][k0 + k], s[j][k]);
                for (int j = 0; j < 4; j++)
                    for (int k = 0; k < 2; k++)
                        dweight[(j0 + j) * IN + k0 + k] = _mm256_add_ps(dweight[(j0 + j) * IN + k0 + k], s[j][k]);
            }
    }
    const vec *sums[3] = {dweight, dbias, dproj};
    const int counts[3] = {GATES * IN, GATES, HID * 2};
    for (int part = 0, p = 0; part < 3; part++)
        for (int q = 0; q < counts[part]; q++, p++) {
            float lanes[L];
            _mm256_storeu_ps(lanes, sums[part][q]);
            float sum = 0.0f;
            for (int l = 0; l < L; l++) sum += lanes[l];
            param_grad[p] = sum;
        }
}

/* The parameter gradients are summed per stripe of STRIPE blocks, then over the stripes in
 * order: the same numbers whatever the number of threads. `param_grad` holds the result.
 * Returns nonzero if there is no memory for the stripes' partial sums. */
int lstm_backward(long n, const float *weight, const float *proj, const float *features,
                  const float *h, const float *cell, const float *gates, const float *cell_out,
                  const float *dh_out, const float *dcell_out, const float *dprojected,
                  float *dh, float *dcell, float *param_grad) {
    long blocks = (n + L - 1) / L, stripes = (blocks + STRIPE - 1) / STRIPE;
    float *stripe_sums = malloc((size_t)(stripes * PARAM_GRADS) * sizeof(float));
    if (!stripe_sums) return 1;
#pragma omp parallel for schedule(static)
    for (long s = 0; s < stripes; s++) {
        long last = (s + 1) * STRIPE < blocks ? (s + 1) * STRIPE : blocks;
        backward_blocks(n, s * STRIPE, last, weight, proj, features, h, cell, gates, cell_out, dh_out,
                        dcell_out, dprojected, dh, dcell, stripe_sums + s * PARAM_GRADS);
    }
    for (int p = 0; p < PARAM_GRADS; p++) {
        float sum = 0.0f;
        for (long s = 0; s < stripes; s++) sum += stripe_sums[s * PARAM_GRADS + p];
        param_grad[p] = sum;
    }
    free(stripe_sums);
    return 0;
}
