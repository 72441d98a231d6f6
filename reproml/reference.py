"""The straightforward meta-learner LSTM: the reference that every fast path of the package is
tested against (tests/test_fast_path.py: the same meta-gradients and test predictions); and the
FCE's LSTMs as the original steps them (tests/test_matching_net.py).

Written the way the equations read, with none of the package's speed-ups: ReLU before
max-pooling, default memory format, the loss features copied to every row, one `nn.LSTMCell`
call per step, no compiled kernels. A newcomer can read one meta-training episode here top to
bottom: `query_logits` (the inner loop), `meta_step` (the update rule), `learner_logits`.
"""

import torch
import torch.nn.functional as F

from reproml.models.meta_learner import preprocess


def learner_logits(learner, flat, x, bn_stats, training, momentum):
    params = learner.unflatten(flat)
    for b, (mean, var) in enumerate(bn_stats):
        conv_w, conv_b, bn_w, bn_b = params[4 * b: 4 * b + 4]
        x = F.conv2d(x, conv_w, conv_b, padding=1)
        x = F.batch_norm(x, mean, var, bn_w, bn_b, training, momentum, learner.spec.bn_eps)
        x = F.max_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), params[-2], params[-1])


def meta_step(meta, loss, grad, c, state):
    h, cell, f_prev, i_prev = state
    n, hidden = c.shape[0], meta.lstm.hidden_size
    inputs = torch.cat([preprocess(loss, meta.preprocess_p).expand(n, 2), preprocess(grad, meta.preprocess_p).t()], dim=1)
    h, cell = meta.lstm(inputs, (h, cell))
    f_pre = h @ meta.WF[:hidden] + meta.WF[hidden] * c + meta.WF[hidden + 1] * f_prev + meta.bF
    i_pre = h @ meta.WI[:hidden] + meta.WI[hidden] * c + meta.WI[hidden + 1] * i_prev + meta.bI
    return torch.sigmoid(f_pre) * c - torch.sigmoid(i_pre) * grad, (h, cell, f_pre, i_pre)


def query_logits(meta, learner, settings, episode, meta_training):
    support_x, support_y, query_x, _ = episode
    bn_stats = learner.new_bn_stats(support_x.device, support_x.dtype)
    n, hidden = meta.cI.shape[0], meta.lstm.hidden_size
    c, state = meta.cI, (meta.cI.new_zeros(n, hidden), meta.cI.new_zeros(n, hidden), meta.cI.new_zeros(n), meta.cI.new_zeros(n))
    for _ in range(settings.epochs):
        for start in range(0, len(support_x), settings.batch_size):
            x, y = support_x[start:start + settings.batch_size], support_y[start:start + settings.batch_size]
            theta = c.detach().requires_grad_()
            with torch.enable_grad():
                loss = F.cross_entropy(learner_logits(learner, theta, x, bn_stats, True, settings.bn_momentum), y)
                (grad,) = torch.autograd.grad(loss, theta)
            c, state = meta_step(meta, loss.detach(), grad / len(x), c, state)
    return learner_logits(learner, c, query_x, bn_stats, meta_training, settings.bn_momentum)


def lstm_outputs(weight, bias, items):
    """The outputs of the original's LSTM (one matrix on [x, h], zero initial state) fed `items`
    one at a time, a batch of one."""
    h = c = items.new_zeros(1, items.shape[1])
    outputs = []
    for x in items:
        i, f, o, candidate = (torch.cat([x[None], h], 1) @ weight + bias).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(candidate)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.cat(outputs)


def fce_query_embedding(weight, bias, f, support, steps, softmax_read):
    """The FCE's attention LSTM over the support set, as the original writes it."""
    h, c = torch.zeros_like(f), torch.zeros_like(f)
    read = support.mean(0).expand_as(f)
    for step in range(steps):
        i, g_f, o, candidate = (torch.cat([f, read, h], 1) @ weight + bias).chunk(4, 1)
        c = torch.sigmoid(g_f) * c + torch.sigmoid(i) * torch.tanh(candidate)
        h = f + torch.sigmoid(o) * torch.tanh(c)
        dots = h @ support.t()
        weights = torch.softmax(dots, 1) if softmax_read else torch.softmax(dots[..., None], -1)[..., 0]
        read = weights @ support
    return h
