"""The meta-learner: a two-layer, coordinate-wise LSTM whose cell state is the learner's
parameter vector (`model/lstm/meta-learner-lstm.lua`).

Every learner parameter is one row of a batch; all rows share the meta-weights.
Layer 1 is a standard LSTM on 4 numbers per coordinate (the preprocessed loss and gradient).
Layer 2 is the update rule:

    f_t = sigmoid(W_F . [h_t, c_{t-1}, f_{t-1}] + b_F)
    i_t = sigmoid(W_I . [h_t, c_{t-1}, i_{t-1}] + b_I)
    c_t = f_t * c_{t-1} - i_t * grad_t

with f_{t-1}, i_{t-1} the previous step's pre-sigmoid values (zero at t = 0) and
c_0 = cI, the learned initialisation of the learner.

`layer1` below is layer 1 in PyTorch; on CPUs that allow it, the same computation runs as one
compiled kernel (`reproml/kernels/lstm.py`), with the layer's state in the kernel's own layout.
"""

import math

import torch
import torch.nn as nn

from reproml.kernels import lstm as kernel_lstm


def preprocess(x, p=10.0):
    """Andrychowicz et al. (2016): (log|x| / p, sign x) if |x| >= e^-p, else (-1, e^p x),
    stacked on a new first dimension."""
    big = x.abs() >= math.exp(-p)
    log_part = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, -torch.ones_like(x))
    sign_part = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([log_part, sign_part])


class MetaLearnerLSTM(nn.Module):
    def __init__(self, n_learner_params, hidden_size=20, preprocess_p=10.0):
        super().__init__()
        self.preprocess_p = preprocess_p
        self.lstm = nn.LSTMCell(4, hidden_size)
        self.WF = nn.Parameter(torch.empty(hidden_size + 2))
        self.WI = nn.Parameter(torch.empty(hidden_size + 2))
        self.bF = nn.Parameter(torch.empty(1))
        self.bI = nn.Parameter(torch.empty(1))
        self.cI = nn.Parameter(torch.empty(n_learner_params))

    @torch.no_grad()
    def reset_parameters(self, learner_init, generator):
        """The original's ranges: weights U(-0.01, 0.01); b_F ~ U(4, 5) so the forget gate
        starts near 1; b_I ~ U(-5, -4) so the first steps are small; cI = a fresh learner."""
        for weight in (*self.lstm.parameters(), self.WF, self.WI):
            weight.uniform_(-0.01, 0.01, generator=generator)
        self.bF.uniform_(4, 5, generator=generator)
        self.bI.uniform_(-5, -4, generator=generator)
        self.cI.copy_(learner_init)

    def layer_sizes(self):
        return {"layer1": sum(p.numel() for p in self.lstm.parameters()),
                "layer2": sum(p.numel() for p in (self.WF, self.WI, self.bF, self.bI, self.cI))}

    def uses_kernel(self):
        """Whether layer 1 runs as the compiled kernel (float32 on a CPU that allows it)."""
        return kernel_lstm.runs(self.lstm.hidden_size, self.cI)

    def initial_state(self):
        """(h, cell) of layer 1 and the pre-sigmoid (f, i) of layer 2, all zero at t = 0."""
        n, hidden = self.cI.shape[0], self.lstm.hidden_size
        zeros = self.cI.new_zeros
        if self.uses_kernel():
            h, cell = kernel_lstm.initial_state(n, self.cI.device)
        else:
            h, cell = zeros(n, hidden), zeros(n, hidden)
        return h, cell, zeros(n), zeros(n)

    def layer1_weights(self, loss):
        """Layer 1's gate weights over [gradient features, h] (80 x 22) and bias, and the
        projection of h for layer 2 (20 x 2). The loss is the same for every row, so its
        term joins the bias instead of being copied to every row."""
        lstm, hidden = self.lstm, self.lstm.hidden_size
        bias = lstm.bias_ih + lstm.bias_hh + lstm.weight_ih[:, :2] @ preprocess(loss, self.preprocess_p)
        weight = torch.cat([lstm.weight_ih[:, 2:], lstm.weight_hh], dim=1)
        return weight, bias, torch.stack([self.WF[:hidden], self.WI[:hidden]], dim=1)

    @staticmethod
    def layer1(weight, bias, proj, grad_features, h, cell):
        """nn.LSTMCell's equations (gate order i, f, g, o) for a batch of every learner parameter,
        and the projection of the new h for layer 2. Each gate gets its own matrix product so
        that the elementwise work runs on contiguous memory."""
        inputs = torch.cat([grad_features.t(), h], dim=1)
        i, f, g, o = (torch.addmm(b, inputs, w.t()) for b, w in zip(bias.chunk(4), weight.chunk(4)))
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(cell)
        return h, cell, (h @ proj).t()

    def step(self, loss, grad, c, state):
        """One update of the learner's parameters `c` from the loss and gradient at `c`.

        Returns the new parameters, the new state, and the gate values (after the sigmoid)."""
        h, cell, f_prev, i_prev = state
        hidden = self.lstm.hidden_size
        layer1 = kernel_lstm.layer1 if self.uses_kernel() else self.layer1  # the same computation, compiled
        h, cell, (to_f, to_i) = layer1(*self.layer1_weights(loss), preprocess(grad, self.preprocess_p), h, cell)
        f_pre = to_f + self.WF[hidden] * c + self.WF[hidden + 1] * f_prev + self.bF
        i_pre = to_i + self.WI[hidden] * c + self.WI[hidden + 1] * i_prev + self.bI
        f, i = torch.sigmoid(f_pre), torch.sigmoid(i_pre)
        return f * c - i * grad, (h, cell, f_pre, i_pre), (f, i)
