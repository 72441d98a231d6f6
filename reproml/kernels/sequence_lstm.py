"""The recurrent half of the FCE's support LSTMs (models/matching_net.py) over a whole sequence, as
one autograd Function: the same equations as `reference.lstm_outputs`, summed in another order.

Stepping the original's cell (one matrix on [x, h]) through autograd reads the 3200 x 6400 matrix
at every item and writes an outer product of its size per item on the way back. Here the input's
projection for all items is one product before the loop (the caller's), each step reads only the
recurrent half, and the recurrent weight's gradient is one product over the whole sequence.
"""

import torch


class RecurrentLSTM(torch.autograd.Function):
    """h_1..h_T of an LSTM (zero initial state, a batch of one) from `projected` = x_t W_x + b for
    every t (T x 4d) and the recurrent weight `w_h` (d x 4d); gates input, forget, output, candidate."""

    @staticmethod
    def forward(ctx, projected, w_h):
        steps, d = projected.shape[0], w_h.shape[0]
        h, c = projected.new_zeros(1, d), projected.new_zeros(1, d)
        hs, cs, gates = [], [c], []
        for t in range(steps):
            pre = projected[t:t + 1] + h @ w_h
            i, f, o, g = pre.chunk(4, 1)
            i, f, o, g = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)
            c = f * c + i * g
            h = o * torch.tanh(c)
            hs.append(h)
            cs.append(c)
            gates.append(torch.cat([i, f, o, g], 1))
        outputs = torch.cat(hs)
        ctx.save_for_backward(w_h, outputs, torch.cat(cs), torch.cat(gates))
        return outputs

    @staticmethod
    def backward(ctx, d_outputs):
        w_h, outputs, cells, gates = ctx.saved_tensors
        steps, d = outputs.shape
        d_pre = torch.empty_like(gates)
        dh_next, dc_next = outputs.new_zeros(1, d), outputs.new_zeros(1, d)
        for t in reversed(range(steps)):
            i, f, o, g = gates[t:t + 1].chunk(4, 1)
            tanh_c = torch.tanh(cells[t + 1:t + 2])
            dh = d_outputs[t:t + 1] + dh_next
            dc = dh * o * (1 - tanh_c * tanh_c) + dc_next
            d_pre[t:t + 1] = torch.cat([dc * g * i * (1 - i), dc * cells[t:t + 1] * f * (1 - f),
                                        dh * tanh_c * o * (1 - o), dc * i * (1 - g * g)], 1)
            dh_next, dc_next = d_pre[t:t + 1] @ w_h.t(), dc * f
        previous = torch.cat([outputs.new_zeros(1, d), outputs[:-1]])  # h_0 = 0 .. h_{T-1}
        return d_pre, previous.t() @ d_pre


def lstm_outputs(weight, bias, items):
    """The outputs of the original's LSTM (one matrix `weight` on [x, h]) fed `items` one at a time."""
    w_x, w_h = weight.split(items.shape[1])  # one split: its gradient is one concatenation
    return RecurrentLSTM.apply(items @ w_x + bias, w_h)
