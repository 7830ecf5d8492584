"""``trajectory.theta0=prototype`` for text tasks: a LoRA adapter computed from the support, no gradient step.

The nearest-prototype rule on the adapted block's inputs separates the classes of validation tasks about as
well as 50 fine-tuning steps do (docs/results/text.md), while a generator trained from the base model's
start learned nothing task-specific: a LoRA's output is a product (B A x) whose factors must be right
together. This start writes the rule into the value projection's adapter of the last block:

* ``B_v``'s first two columns write one direction ``u``: the value-space vector that, through the output
  projection of every query head sharing it, raises the first label word's logit against the second's
  (the final norm's weights times the two words' embeddings' difference);
* with that column, the first-order change of an example's logit difference per unit of ``A_v``'s first
  row is a vector ``zeta`` (its attention-weighted, normalised inputs as the rest of the model reads them:
  one Jacobian of a Jacobian-vector product at the base model). ``A_v``'s first row is the discriminant
  of the support's ``zeta``: the class means' difference over the within-class variance (diagonal LDA);
  its second row is the support's mean ``zeta``, whose slope is near constant over words, so that its
  column pays the midpoint between the classes;
* one amount scales both columns: the logistic regression of the support's labels on that rule with the
  base model's own logit difference as offset and an L2 penalty ``ridge``, then shrunk while the real
  (not first-order) support loss says so.

The other ranks keep the base network's initialisation (under seed 0, ``trajectory.init_seed``'s default), so
inner steps from this start can still use them. Ours, not the paper's.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch.func import functional_call, jacrev, jvp, vmap

from ltdi_ray.base_nets.paramspec import ParamSpec
from ltdi_ray.generator.heads import prototypes
from ltdi_ray.tasks.llama import LoRATop

BISECTIONS = 60
SHRINK = (1.0, 0.5, 0.25, 0.125, 0.0625)  # fractions of the fitted amounts tried on the support


def prototype_adapter(net: LoRATop, init: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor,
                      ridge: float = 1e-3) -> torch.Tensor:
    """Flat adapter weights ``(B, D)`` for supports ``sx (B, K, S + 2, H)`` (network inputs), ``sy (B, K)``;
    ``init (D,)``: the base network's initialisation, which the ranks not written here keep."""
    spec = ParamSpec.from_module(net)
    last = len(net.adapters) - 1
    a_key, b_key = f"adapters.{last}.v_proj_A", f"adapters.{last}.v_proj_B"
    base = spec.unflatten(init.to(sx.device))
    u = _label_direction(net, getattr(net, f"frozen{last}_o_proj"), sx[:, 0, -net.classes:])  # (B, V)

    def params(a_rows, b_cols) -> Dict[str, torch.Tensor]:
        p = dict(base)
        p[a_key] = torch.cat([a_rows, base[a_key][a_rows.shape[0]:]], dim=0)
        p[b_key] = torch.cat([b_cols, base[b_key][:, b_cols.shape[1]:]], dim=1)
        return p

    def margin(a_row, amount, u_task, x_task):  # logit of label 0 minus label 1, B_v's first column amount * u
        logits = functional_call(net, params(a_row[None], (amount * u_task)[:, None]), (x_task,))
        return logits[:, 0] - logits[:, 1]

    def slope(a_row, u_task, x_task):  # (d margin / d amount at 0: linear in a_row, the margin at 0)
        one = torch.ones((), dtype=x_task.dtype, device=x_task.device)
        margin0, tangent = jvp(lambda amount: margin(a_row, amount, u_task, x_task), (0 * one,), (one,))
        return tangent, margin0

    # zeta (B, K, H): what A_v's first row is dotted with to give each example's slope; base_margin (B, K)
    zero_row = sx.new_zeros(sx.shape[0], sx.shape[-1])
    zeta, base_margin = vmap(jacrev(slope, has_aux=True))(zero_row, u, sx)
    zeta, base_margin = zeta.detach(), base_margin.detach()
    protos = prototypes(zeta, sy, 2)  # (B, 2, H)
    own = torch.take_along_dim(protos, sy.long().unsqueeze(-1), dim=1)  # each example's class mean (B, K, H)
    spread = (zeta - own).square().sum(1) / max(sy.shape[1] - 2, 1)  # within-class variance (B, H)
    spread = spread + 1e-3 * spread.mean(-1, keepdim=True)
    rows = torch.stack([(protos[:, 0] - protos[:, 1]) / spread, zeta.mean(1)], dim=1)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # (B, 2, H)
    # the rule d . (zeta - midpoint): the second row's slope is near constant over words and pays the midpoint
    feats = zeta @ rows.transpose(1, 2)  # (B, K, 2): each row's slope
    midpoint = ((protos[:, 0] + protos[:, 1]) / 2 * rows[:, 0]).sum(-1) / feats[..., 1].mean(1)  # (B,)
    rule = feats[..., 0] - midpoint[:, None] * feats[..., 1]  # (B, K)
    amount = _logistic(base_margin, rule, 1.0 - 2.0 * sy.to(rule.dtype), ridge)  # label 0 -> +1
    amounts = torch.stack([amount, -midpoint * amount], dim=1)  # (B, 2)
    with torch.no_grad():
        # the fit trusts a first-order model: keep the shrunk amount whose real support loss is least
        shrink = torch.tensor(SHRINK, dtype=amounts.dtype, device=amounts.device)
        cols = u[:, None, :, None] * (amounts[:, None, None, :] * shrink[None, :, None, None])  # (B, S, V, 2)
        flat = vmap(vmap(lambda r, c: spec.flatten(params(r, c)), in_dims=(None, 0)))
        thetas = flat(rows, cols)  # (B, S, D)

        def loss(theta, x, y):
            return torch.nn.functional.cross_entropy(functional_call(net, spec.unflatten(theta), (x,)), y)

        losses = vmap(vmap(loss, in_dims=(0, None, None)))(thetas, sx, sy.long())
        return thetas[torch.arange(len(thetas)), losses.argmin(1)]


def _label_direction(net: LoRATop, o_proj: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B, V)`` unit value-space directions raising label word 0's logit against label word 1's: the final
    norm's weights times their embeddings' difference ``labels (B, 2, H)``, read back through the output
    projection of each query head and summed over the heads that share a key/value head."""
    s = net.shape
    g = net.norm * (labels[:, 0] - labels[:, 1])  # (B, H)
    per_head = (g @ o_proj).view(-1, s.kv_heads, s.heads // s.kv_heads, s.head_dim).sum(2)  # (B, kv, hd)
    u = per_head.flatten(1)
    return u / u.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _logistic(offset: torch.Tensor, feat: torch.Tensor, sign: torch.Tensor, ridge: float) -> torch.Tensor:
    """Per task, ``argmin_w sum_k softplus(-sign_k (offset_k + w feat_k)) + ridge / 2 w^2``: offsets, features
    and signs (+1 or -1) ``(B, K)`` -> ``(B,)``. Bisection on the derivative, which is increasing (Newton's
    method diverges where the offsets saturate the sigmoid); the root lies within ``sum_k |feat_k| / ridge``."""
    def slope(w):
        return -(sign * feat * torch.sigmoid(-sign * (offset + w[:, None] * feat))).sum(1) + ridge * w

    hi = feat.abs().sum(1) / ridge
    lo = -hi
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        up = slope(mid) > 0
        hi, lo = torch.where(up, mid, hi), torch.where(up, lo, mid)
    return (lo + hi) / 2
