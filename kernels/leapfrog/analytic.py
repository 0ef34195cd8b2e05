"""Analytic leapfrog backend: hand-written dH/dx and its hand-written VJP in plain torch,
the whole rollout inside one torch.autograd.Function (no double-backward graph is built).

Derivation (symbols reused in the code and in the fused kernels). Hidden layers l = 1..L:
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
The Hessian term is formed in the VJP from g_l, t_l and u_l (nothing extra is stored):
    softplus: s' = sigmoid, s'' = s'(1 - s'),  so  e_l s''(a_l) t_l = g_l * (t_l - u_l)
    tanh:     s' = 1 - h^2,  s'' = -2 h s',    so  e_l s''(a_l) t_l = -2 h_l * g_l * t_l
    relu:     s'' = 0, the term vanishes
Rows are batched, so W_l x becomes x @ W_l^T and the weight terms sum over rows.

One leapfrog step is three evaluations of F (common.py, SCHEMES): a at (q_t, p_t), b at
(q_mid, p_half), c at (q_t+1, p_pred). Its VJP runs them in reverse order, with the cotangents
(Q, P) of (q_t+1, p_t+1) and D of dHdq_t = F_q(a):
    c:  p_t+1 = p_half - dt/2 F_q(c)    v = [-dt/2 P, 0]   dx -> Q += dx_q,  P_c = dx_p
    b:  q_t+1 = q_t + dt F_p(b)         v = [0, dt Q]      dx -> Q_m = dx_q, P_h = P + dx_p
        then Q += Q_m, P_h += P_c (q_mid hangs off q_t, p_pred off p_t)
    a:  p_half = p_t - dt/2 F_q(a), p_pred = p_t - dt F_q(a), q_mid = q_t + dt/2 F_p(a)
                                        v = [D - dt/2 P_h - dt/2 P_c, dt/2 Q_m]
                                           dx -> Q += dx_q,  P = P_h + dx_p
For scheme="official" (q_mid = q_t, p_pred = p_half) the same lines hold with F_p(a) unused:
a's cotangent is [D - dt/2 P_h, 0].
The layer-1 pre-activation splits by blocks, a_1 = W1q q + W1p p + b_1, so block products are
shared where points coincide: the q_t+1 term between c and the next step's a, and for
"official" also q_t between a and b and p_half between b and c. Each weight-gradient product
r_l h^T, g_l u^T is its own in-place addmm_ (measured on CPU: stacking them into one large
matmul cost more in concatenation copies than it saved in calls, even at B = 64), and layer
1's is accumulated transposed (see backward).

What the backward saves and what it recomputes: the forward always saves the trajectory (q, p,
p_half, and for "order2" q_mid and p_pred: T*B*5k floats at most). When the primal
activations of all 3(T-1) evaluations (h_l, s'(a_l), g_l = e_l s'(a_l); h_L only for tanh)
fit in SAVE_BYTES, the forward keeps them too, and the backward does no primal work (at B=64,
T=16, width 100 that is ~7 MB and removes two width^2 matmuls and the transcendental
activations from every VJP). Above it, each VJP recomputes them from the trajectory, so
memory stays independent of the MLP width.
"""
import torch

from .common import act_d1, act_value, hand_written_backward, scheme_points

SAVE_BYTES = 256 << 20   # keep the primal activations for the backward below this size


def _act(a, name, need_value):
    """h = s(a) (None when unused) and s'(a); tanh keeps h always, its s'' term needs it."""
    if name == "tanh":
        h = torch.tanh(a)
        return h, torch.addcmul(torch.ones_like(h), h, h, value=-1)   # 1 - h^2, one pass
    return (act_value(a, name) if need_value else None), act_d1(a, name)


def _primal(a1, weights, biases, activation, wts=None):
    """Primal quantities of one evaluation from layer 1's pre-activation a1 [B, n1].

    Returns hs (h_1..h_L: h_L only where the activation computes it anyway, else None; the
    inputs of weights[1:] are hs[:-1]), d1s = s'(a_l) and gs = e_l * s'(a_l). The Hessian
    term e_l * s''(a_l) * t_l is formed from these in the VJP (_hessian_term). wts[l] is
    weights[l].t(), made once per rollout (a view per call costs more than the small matmuls
    gain).
    """
    n_hidden = len(weights) - 1
    if wts is None:
        wts = [w.t() for w in weights]
    hs, d1s = [], []
    a = a1
    for l in range(n_hidden):
        last = l == n_hidden - 1
        h, d1 = _act(a, activation, need_value=not last)
        hs.append(h)
        d1s.append(d1)
        if not last:
            a = torch.addmm(biases[l + 1], h, wts[l + 1])
    gs = [None] * n_hidden
    e = weights[-1]                                # e_L = w, [1, n_L], broadcast over rows
    for l in reversed(range(n_hidden)):
        gs[l] = e * d1s[l]
        if l > 0:
            e = gs[l] @ weights[l]                 # e_(l-1) = W_l^T g_l
    return hs, d1s, gs, activation


def _hessian_term(cache, l, t, u):
    """e_l * s''(a_l) * t_l from g_l = e_l s'(a_l), u_l = s'(a_l) t_l (None where s'' = 0).
    Overwrites t (the caller's scratch tangent) to save a buffer.

    softplus: s' = sigmoid, s'' = s'(1 - s'), so e s'' t = g (t - u).
    tanh: s'' = -2 h s', so e s'' t = -2 h g t.   relu: s'' = 0.
    """
    hs, _, gs, name = cache
    if name == "softplus":
        return t.sub_(u).mul_(gs[l])
    if name == "tanh":
        return t.mul_(gs[l]).mul_(hs[l]).mul_(-2)
    return None


def _grad_block(cache, w1x):
    """One column block of F = dH/dx: w1x is W1q (-> dH/dq), W1p (-> dH/dp) or all of W1."""
    return cache[2][0] @ w1x


def _vjp_block(cache, t1, weights, wts):
    """VJP terms of one evaluation from its first tangent t_1 = W_1 v (the caller forms it from
    v's nonzero blocks; it is overwritten as scratch).

    Returns rs (per hidden layer), us (None, u_1 .. u_(L-1): u_0 = v is the caller's) and
    u_L; then dW_l = r_l^T h_(l-1) + g_l^T u_(l-1), db_l = sum_rows r_l, dw = sum_rows u_L,
    dx = r_1 W1. wts[l] is weights[l].t().
    """
    d1s = cache[1]
    n_hidden = len(d1s)
    ts, us = [], [None]
    for l in range(n_hidden):
        t = t1 if l == 0 else us[l] @ wts[l]
        ts.append(t)
        us.append(t * d1s[l])
    rs = [None] * n_hidden
    r_next = None
    for l in reversed(range(n_hidden)):
        r = _hessian_term(cache, l, ts[l], us[l + 1])
        if r_next is not None:
            back = r_next @ weights[l + 1]
            r = back.mul_(d1s[l]) if r is None else r.addcmul_(back, d1s[l])
        elif r is None:
            r = torch.zeros_like(ts[l])
        rs[l] = r_next = r
    return rs, us[:n_hidden], us[n_hidden]


def mlp_input_grad(x, weights, biases, activation):
    """F(x) = dH/dx for rows x [B, 2k] -> [B, 2k] (the unsplit form, for tests and tools)."""
    cache = _primal(torch.addmm(biases[0], x, weights[0].t()), weights, biases, activation)
    return _grad_block(cache, weights[0])


def mlp_input_grad_vjp(x, v, weights, biases, activation):
    """d<v, F(x)>/d(x, weights, biases) for rows x, v [B, 2k] (unsplit form, for tests)."""
    cache = _primal(torch.addmm(biases[0], x, weights[0].t()), weights, biases, activation)
    wts = [w.t() for w in weights]
    rs, us, u_last = _vjp_block(cache, v @ wts[0], weights, wts)
    us[0] = v
    dw = u_last.sum(0, keepdim=True)
    ins, gs = [x] + cache[0][:-1], cache[2]
    dweights = [r.t() @ h + g.t() @ u for r, g, h, u in zip(rs, gs, ins, us)] + [dw]
    dbiases = [r.sum(0) for r in rs] + [torch.zeros_like(biases[-1])]
    return rs[0] @ weights[0], dweights, dbiases


class LeapfrogAnalyticFunction(torch.autograd.Function):
    """Rollout with a hand-written backward; first-order gradients only."""

    @staticmethod
    def forward(ctx, q0, p0, dt, frames, activation, scheme, n_layers, *params):
        weights, biases = params[:n_layers], params[n_layers:]
        B, k = q0.shape
        order2 = scheme == "order2"
        wts = [w.t() for w in weights]
        w1q, w1p, b1 = weights[0][:, :k], weights[0][:, k:], biases[0]
        w1qt, w1pt = w1q.t(), w1p.t()
        widths = sum(w.shape[0] for w in weights[:-1])
        save = 3 * (frames - 1) * B * 3 * widths * q0.element_size() <= SAVE_BYTES
        # Per-step results go to lists, stacked once at the end (cheaper than slice writes).
        qs, ps, phs, dqs, qms, pps = [q0], [p0], [], [], [], []
        caches = []
        q, p = q0, p0
        aq = torch.addmm(b1, q, w1qt)                   # q block of a_1, bias included
        for _ in range(frames - 1):
            ca = _primal(torch.addmm(aq, p, w1pt), weights, biases, activation, wts)
            if order2:
                g = _grad_block(ca, weights[0])
                dq = g[:, :k]
                ph, qm, pp = scheme_points(q, p, dq, g[:, k:], dt, scheme)
                aph = ph @ w1pt
                cb = _primal(torch.addmm(aph, qm, w1qt).add_(b1), weights, biases, activation,
                             wts)
            else:
                dq = _grad_block(ca, w1q)
                ph = torch.add(p, dq, alpha=-0.5 * dt)
                aph = ph @ w1pt
                cb = _primal(aq + aph, weights, biases, activation, wts)
            q = torch.add(q, _grad_block(cb, w1p), alpha=dt)
            aq = torch.addmm(b1, q, w1qt)               # reused by the next step's evaluation a
            if order2:
                cc = _primal(torch.addmm(aq, pp, w1pt), weights, biases, activation, wts)
                qms.append(qm)
                pps.append(pp)
            else:
                cc = _primal(aq + aph, weights, biases, activation, wts)
            p = torch.add(ph, _grad_block(cc, w1q), alpha=-0.5 * dt)
            qs.append(q)
            ps.append(p)
            phs.append(ph)
            dqs.append(dq)
            if save:
                caches.append((ca, cb, cc))
        q_traj, p_traj = torch.stack(qs, 1), torch.stack(ps, 1)        # [B, T, k]
        empty = q0.new_empty(B, 0, k)
        p_half = torch.stack(phs, 1) if phs else empty                 # [B, T-1, k]
        dhdq = torch.stack(dqs, 1) if dqs else empty.clone()
        if order2:
            ctx.save_for_backward(q_traj, p_traj, p_half, torch.stack(qms, 1) if qms else empty,
                                  torch.stack(pps, 1) if pps else empty, *params)
        else:
            ctx.save_for_backward(q_traj, p_traj, p_half, *params)
        ctx.caches = caches if save else None           # intermediates, not inputs/outputs
        ctx.dt, ctx.activation, ctx.n_layers, ctx.order2 = dt, activation, n_layers, order2
        return q_traj, p_traj, dhdq

    @staticmethod
    def backward(ctx, gq, gp, gd):
        return hand_written_backward("analytic", LeapfrogAnalyticFunction._backward, ctx, gq, gp, gd)

    @staticmethod
    def _backward(ctx, gq, gp, gd):
        order2 = ctx.order2
        saved = ctx.saved_tensors
        if order2:
            (q_traj, p_traj, p_half, q_mid, p_pred), params = saved[:5], saved[5:]
        else:
            (q_traj, p_traj, p_half), params = saved[:3], saved[3:]
            q_mid, p_pred = q_traj[:, :-1], p_half
        n, dt, act_name, caches = ctx.n_layers, ctx.dt, ctx.activation, ctx.caches
        ctx.caches = None                                # popped step by step: freed as used
        weights, biases = params[:n], params[n:]
        wts = [w.t() for w in weights]
        k = q_traj.shape[2]
        w1q, w1p, b1 = weights[0][:, :k], weights[0][:, k:], biases[0]
        w1qt, w1pt = w1q.t(), w1p.t()
        # Layer 1's gradient is accumulated transposed, [k, n1] += x^T r: with only k columns
        # the untransposed product is a skinny matmul that runs ~3x slower on CPU BLAS.
        dw1qt, dw1pt = w1q.new_zeros(k, w1q.shape[0]), w1p.new_zeros(k, w1p.shape[0])
        dweights = [torch.zeros_like(w) for w in weights[1:]]
        dbiases = [torch.zeros_like(b) for b in biases]
        # One unbind per saved tensor instead of a slice per step.
        qt, pt, pht, qmt, ppt = (x.unbind(1) for x in (q_traj, p_traj, p_half, q_mid, p_pred))
        gqt, gpt, gdt = gq.unbind(1), gp.unbind(1), gd.unbind(1)
        Q, P = gqt[-1], gpt[-1]
        aq1 = None
        for t in reversed(range(q_traj.shape[1] - 1)):
            q, p, ph, q1, qm, pp = qt[t], pt[t], pht[t], qt[t + 1], qmt[t], ppt[t]
            if caches is not None:
                ca, cb, cc = caches.pop()
            else:
                if aq1 is None:
                    aq1 = torch.addmm(b1, q1, w1qt)
                aq, aph = torch.addmm(b1, q, w1qt), ph @ w1pt
                if order2:
                    cc = _primal(torch.addmm(aq1, pp, w1pt), weights, biases, act_name, wts)
                    cb = _primal(torch.addmm(aph, qm, w1qt).add_(b1), weights, biases,
                                 act_name, wts)
                else:
                    cc = _primal(aq1 + aph, weights, biases, act_name, wts)
                    cb = _primal(aq + aph, weights, biases, act_name, wts)
                ca = _primal(torch.addmm(aq, p, w1pt), weights, biases, act_name, wts)
                aq1 = aq
            vc = P * (-0.5 * dt)                                 # c: v on the q block
            rc, uc, uLc = _vjp_block(cc, vc @ w1qt, weights, wts)
            dx = rc[0] @ weights[0]
            Q, P_c = Q + dx[:, :k], dx[:, k:]
            vb = Q * dt                                          # b: v on the p block
            rb, ub, uLb = _vjp_block(cb, vb @ w1pt, weights, wts)
            dx = rb[0] @ weights[0]
            Q_m, P_h = dx[:, :k], P + dx[:, k:]
            # q_mid and p_pred hang off q_t and p_t (they are q_t and p_half for "official"),
            # so Q_m and P_c flow into Q and P_h; order2 adds their dHdq paths to a's cotangent.
            Q, P_h = Q + Q_m, P_h + P_c
            va = torch.add(gdt[t], P_h, alpha=-0.5 * dt)         # a: v on the q block ...
            if order2:
                va.add_(P_c, alpha=-0.5 * dt)                    # ... and the p block
                va_p = Q_m * (0.5 * dt)
                t1a = torch.addmm(va @ w1qt, va_p, w1pt)
            else:
                t1a = va @ w1qt
            ra, ua, uLa = _vjp_block(ca, t1a, weights, wts)
            dx = ra[0] @ weights[0]
            Q, P = Q + dx[:, :k] + gqt[t], P_h + dx[:, k:] + gpt[t]
            for l in range(n - 1):
                dbiases[l] += (rc[l] + rb[l]).add_(ra[l]).sum(0)
            dweights[-1] += (uLc + uLb).add_(uLa).sum(0, keepdim=True)
            gc, gb, ga = cc[2], cb[2], ca[2]
            for x, r in ((q1, rc[0]), (qm, rb[0]), (q, ra[0]), (vc, gc[0]), (va, ga[0])):
                dw1qt.addmm_(x.t(), r)
            for x, r in ((pp, rc[0]), (ph, rb[0]), (p, ra[0]), (vb, gb[0])):
                dw1pt.addmm_(x.t(), r)
            if order2:
                dw1pt.addmm_(va_p.t(), ga[0])
            for l in range(1, n - 1):
                for left, right in ((rc[l], cc[0][l - 1]), (rb[l], cb[0][l - 1]),
                                    (ra[l], ca[0][l - 1]), (gc[l], uc[l]), (gb[l], ub[l]),
                                    (ga[l], ua[l])):
                    dweights[l - 1].addmm_(left.t(), right)
        return (Q, P, None, None, None, None, None, torch.cat([dw1qt, dw1pt], 0).t(), *dweights,
                *dbiases)


def leapfrog_analytic(q0, p0, weights, biases, dt, frames, activation, scheme="order2"):
    return LeapfrogAnalyticFunction.apply(q0, p0, float(dt), frames, activation, scheme,
                                          len(weights), *weights, *biases)
