"""Analytic leapfrog backend: hand-written dH/dx and its hand-written VJP in plain torch,
the whole rollout inside one torch.autograd.Function (no double-backward graph is built).

Derivation (symbols reused in the code and in fused.py). Hidden layers l = 1..L:
    a_l = W_l h_(l-1) + b_l,   h_l = s(a_l),   h_0 = x = [q; p],   H = w . h_L + b_out
Input gradient F(x) = dH/dx, one backward sweep:
    e_L = w,   g_l = e_l * s'(a_l),   e_(l-1) = W_l^T g_l,   F = e_0
Training needs the VJP of F with a cotangent v: d/d(x, W, b) of  Lv = <v, F(x)>.
Since <v, F> is the directional derivative of H along v, Lv = w . u_L with the tangents
    u_0 = v,   t_l = W_l u_(l-1),   u_l = s'(a_l) * t_l        (forward mode through the MLP)
Reverse mode through that tangent chain, from the cotangent of u_L, which is w:
    cotangent of t_l      = e_l * s'(a_l) = g_l        (the same g_l as the input gradient)
    direct d Lv / d a_l   = e_l * s''(a_l) * t_l       (the Hessian-vector term)
    r_l = d Lv / d a_l    = e_l * s''(a_l) * t_l + s'(a_l) * (W_(l+1)^T r_(l+1))   (r_(L+1) = 0)
    dW_l = r_l h_(l-1)^T + g_l u_(l-1)^T,   db_l = r_l,   dw = u_L,   db_out = 0
    d Lv / dx = W_1^T r_1
Rows are batched, so W_l x becomes x @ W_l^T and the weight terms sum over rows.

One leapfrog step is three evaluations of F; its VJP runs them in reverse order, with the
cotangents (Q, P) of (q_t+1, p_t+1) and D of dHdq_t:
    c:  p_t+1 = p_half - dt/2 F_q(q_t+1, p_half)   v = [-dt/2 P, 0];     Q += dx_q;  P_h = P + dx_p
    b:  q_t+1 = q_t + dt F_p(q_t, p_half)          v = [0, dt Q];        Q += dx_q;  P_h += dx_p
    a:  p_half = p_t - dt/2 F_q(q_t, p_t)          v = [-dt/2 P_h + D, 0]; Q += dx_q; P = P_h + dx_p
The layer-1 pre-activation splits by blocks, a_1 = W1q q + W1p p + b_1, so evaluations a and b
share the q term and b and c share the p_half term (3 of the 6 block products per step are
reused, in the forward and in the backward). The weight-gradient products of a step's three
VJPs are stacked into one matmul per layer (fewer, larger calls: what the small batches need).
The forward saves only the trajectory (q, p and p_half: T*B*3k floats); the backward
recomputes each evaluation's activations from it, which costs one forward sweep per VJP and
keeps memory independent of the MLP width.
"""
import torch

from .common import act, act_d1, act_value


def mlp_input_grad(x, weights, biases, activation):
    """F(x) = dH/dx for rows x [B, 2k] -> [B, 2k] (the unsplit form, for tests and tools)."""
    return _grad_block(torch.addmm(biases[0], x, weights[0].t()), weights[0], weights, biases,
                       activation)


def mlp_input_grad_vjp(x, v, weights, biases, activation):
    """d<v, F(x)>/d(x, weights, biases) for rows x, v [B, 2k] (unsplit form, for tests)."""
    rs, gs, hs, us, dw = _vjp_block(torch.addmm(biases[0], x, weights[0].t()), v, weights[0],
                                    weights, biases, activation)
    hs[0] = x
    dweights = [r.t() @ h + g.t() @ u for r, g, h, u in zip(rs, gs, hs, us)] + [dw]
    dbiases = [r.sum(0) for r in rs] + [torch.zeros_like(biases[-1])]
    return rs[0] @ weights[0], dweights, dbiases


def _grad_block(a1, w1x, weights, biases, activation):
    """One column block of F = dH/dx from layer 1's pre-activation a1 [B, n1]; w1x is the
    matching column block of W1 (W1q -> dH/dq, W1p -> dH/dp, all of W1 -> dH/dx)."""
    n_hidden = len(weights) - 1
    d1s = [act_d1(a1, activation)]
    a = a1
    for l in range(1, n_hidden):
        a = torch.addmm(biases[l], act_value(a, activation), weights[l].t())
        d1s.append(act_d1(a, activation))
    e = weights[-1]                                  # e_L = w, [1, n_L]
    for l in reversed(range(1, n_hidden)):
        e = (e * d1s[l]) @ weights[l]                # e_(l-1) = W_l^T g_l
    return (e * d1s[0]) @ w1x


def _vjp_block(a1, v, w1x, weights, biases, activation):
    """VJP terms of one evaluation whose cotangent v lies on the x block of w1x.

    Returns per hidden layer (0-based l = math l+1) r_l, g_l, h_(l-1), u_(l-1) (hs[0] is None:
    the caller knows x) and dw = sum_rows u_L. dW_l = r_l^T h_(l-1) + g_l^T u_(l-1).
    """
    n_hidden = len(weights) - 1
    hs, d1s, d2s = [None], [], []
    a = a1
    for l in range(n_hidden):
        if l > 0:
            a = torch.addmm(biases[l], hs[l], weights[l].t())
        h, d1, d2 = act(a, activation)
        hs.append(h)
        d1s.append(d1)
        d2s.append(d2)
    us, ts = [v], []
    u = v
    for l in range(n_hidden):
        t = u @ (w1x if l == 0 else weights[l]).t()
        ts.append(t)
        u = t * d1s[l]
        us.append(u)
    e = weights[-1]                                  # cotangent of u_L
    rs, gs = [None] * n_hidden, [None] * n_hidden
    r_next = None
    for l in reversed(range(n_hidden)):
        g = e * d1s[l]
        r = e * d2s[l] * ts[l]
        if r_next is not None:
            r = r + (r_next @ weights[l + 1]) * d1s[l]
        if l > 0:
            e = g @ weights[l]
        rs[l], gs[l], r_next = r, g, r
    return rs, gs, hs[:n_hidden], us[:n_hidden], u.sum(0, keepdim=True)


class LeapfrogAnalyticFunction(torch.autograd.Function):
    """Rollout with a hand-written backward; first-order gradients only."""

    @staticmethod
    def forward(ctx, q0, p0, dt, frames, activation, n_layers, *params):
        weights, biases = params[:n_layers], params[n_layers:]
        k = q0.shape[1]
        w1q, w1p, b1 = weights[0][:, :k], weights[0][:, k:], biases[0]
        q_traj = q0.new_empty(q0.shape[0], frames, k)  # [B, T, k]
        p_traj = torch.empty_like(q_traj)
        p_half = q0.new_empty(q0.shape[0], frames - 1, k)  # [B, T-1, k]
        dhdq = torch.empty_like(p_half)
        q, p = q0, p0
        q_traj[:, 0], p_traj[:, 0] = q0, p0
        aq = torch.addmm(b1, q, w1q.t())              # q block of a_1, bias included
        for t in range(frames - 1):
            dq = _grad_block(aq + p @ w1p.t(), w1q, weights, biases, activation)
            ph = p - 0.5 * dt * dq
            aph = ph @ w1p.t()
            q = q + dt * _grad_block(aq + aph, w1p, weights, biases, activation)
            aq = torch.addmm(b1, q, w1q.t())          # reused by the next step's evaluation a
            p = ph - 0.5 * dt * _grad_block(aq + aph, w1q, weights, biases, activation)
            q_traj[:, t + 1], p_traj[:, t + 1], p_half[:, t], dhdq[:, t] = q, p, ph, dq
        ctx.save_for_backward(q_traj, p_traj, p_half, *params)
        ctx.dt, ctx.activation, ctx.n_layers = dt, activation, n_layers
        return q_traj, p_traj, dhdq

    @staticmethod
    def backward(ctx, gq, gp, gd):
        if torch.is_grad_enabled():
            raise RuntimeError("the analytic leapfrog backend supports first-order gradients "
                               "only; use backend='reference' for double backward")
        q_traj, p_traj, p_half, *params = ctx.saved_tensors
        n, dt, act_name = ctx.n_layers, ctx.dt, ctx.activation
        weights, biases = params[:n], params[n:]
        k = q_traj.shape[2]
        w1q, w1p, b1 = weights[0][:, :k], weights[0][:, k:], biases[0]
        dw1q, dw1p = torch.zeros_like(w1q), torch.zeros_like(w1p)
        dweights = [None] + [torch.zeros_like(w) for w in weights[1:]]
        dbiases = [torch.zeros_like(b) for b in biases]
        Q, P = gq[:, -1], gp[:, -1]
        aq1 = None
        for t in reversed(range(q_traj.shape[1] - 1)):
            q, p, ph, q1 = q_traj[:, t], p_traj[:, t], p_half[:, t], q_traj[:, t + 1]
            if aq1 is None:
                aq1 = torch.addmm(b1, q1, w1q.t())
            aq, aph = torch.addmm(b1, q, w1q.t()), ph @ w1p.t()
            vc = -0.5 * dt * P                                   # c: v on the q block
            c = _vjp_block(aq1 + aph, vc, w1q, weights, biases, act_name)
            dx = c[0][0] @ weights[0]
            Q, P_h = Q + dx[:, :k], P + dx[:, k:]
            vb = dt * Q                                          # b: v on the p block
            b = _vjp_block(aq + aph, vb, w1p, weights, biases, act_name)
            dx = b[0][0] @ weights[0]
            Q, P_h = Q + dx[:, :k], P_h + dx[:, k:]
            va = gd[:, t] - 0.5 * dt * P_h                       # a: v on the q block
            a = _vjp_block(aq + p @ w1p.t(), va, w1q, weights, biases, act_name)
            dx = a[0][0] @ weights[0]
            Q, P = Q + dx[:, :k] + gq[:, t], P_h + dx[:, k:] + gp[:, t]
            # Weight gradients of the three VJPs, one stacked product per layer.
            r1 = torch.cat([c[0][0], b[0][0], a[0][0]])
            dw1q.addmm_(torch.cat([r1, c[1][0], a[1][0]]).t(), torch.cat([q1, q, q, vc, va]))
            dw1p.addmm_(torch.cat([r1, b[1][0]]).t(), torch.cat([ph, ph, p, vb]))
            dbiases[0] += r1.sum(0)
            for l in range(1, n - 1):
                r = torch.cat([c[0][l], b[0][l], a[0][l]])
                dweights[l].addmm_(torch.cat([r, c[1][l], b[1][l], a[1][l]]).t(),
                                   torch.cat([c[2][l], b[2][l], a[2][l],
                                              c[3][l], b[3][l], a[3][l]]))
                dbiases[l] += r.sum(0)
            dweights[n - 1] += c[4] + b[4] + a[4]
            aq1 = aq
        dweights[0] = torch.cat([dw1q, dw1p], 1)
        return (Q, P, None, None, None, None, *dweights, *dbiases)


def leapfrog_analytic(q0, p0, weights, biases, dt, frames, activation):
    return LeapfrogAnalyticFunction.apply(q0, p0, float(dt), frames, activation, len(weights),
                                          *weights, *biases)
