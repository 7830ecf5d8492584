"""Omniglot end to end at toy scale on a real local Ray: head generation on a pre-trained backbone
(collect -> train -> evaluate, then 10-way episodes) and whole-network generation."""

import json

import pytest
import torch

import ltdi_ray
from ltdi_ray.config import load_config
from ltdi_ray.pipelines.evaluate import run_evaluate
from ltdi_ray.pipelines.pipeline import run_pipeline
from ltdi_ray.pipelines.prepare import run_prepare
from ltdi_ray.tasks.episodes import support_of

TOY = ["experiment=smoke", "task=omniglot", "task.channels=8", "collect.num_tasks=32", "collect.num_actors=1",
       "task.pretrain.epochs=1", "evaluate.baseline.meta_steps=20"]


def test_head_pipeline_trains_its_backbone_and_generates_any_number_of_ways(ray_session, tmp_path, omniglot_root):
    args = [*TOY, f"task.root={omniglot_root}", "task.generate=head", f"storage.uri={tmp_path}",
            "evaluate.methods=[init,finetune,maml,protonet,vanilla,ltdi,ltdi_finetune]"]
    summary = run_pipeline(load_config(args))
    backbone = tmp_path / "backbone" / "backbone.safetensors"
    record = json.loads((tmp_path / "backbone" / "backbone.json").read_text())
    assert backbone.is_file() and record["characters"] == 150 and len(record["loss"]) == 1
    assert 0.2 < record["val_protonet_acc"] <= 1  # measured on validation episodes right after training
    record = json.loads(open(summary["uri"]).read())
    assert record["metric"] == "accuracy" and record["ways"] == 5 and record["shots"] == 1
    assert set(record["methods"]) == {"init", "finetune", "maml", "protonet", "vanilla", "ltdi", "ltdi_finetune"}
    assert all(0 <= m["mean"] <= 1 for m in record["methods"].values())
    assert record["methods"]["init"]["mean"] == pytest.approx(0.2)  # a zero head ties every class: argmax picks class 0
    assert record["methods"]["protonet"]["mean"] > 0.2  # above chance after one epoch of pre-training
    gen = ltdi_ray.load_generator(summary["generator_uri"])
    assert gen.cfg.task.backbone == str(backbone)  # the checkpoint names the extractor it was trained with
    net = gen.generate(*[t[0] for t in support_of(gen.family.sample_many("test", [0]), gen.family, raw=True)])
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 5)
    again = run_prepare(load_config(args))  # finds it, trains nothing
    assert again["prepared"] == [f"task.backbone: None -> {str(backbone)!r}"] and again["seconds"] < 5
    ten = run_evaluate(load_config([*args, "evaluate.ways=10"]))
    assert set(ten["methods"]) == {"init", "finetune", "protonet", "ltdi", "ltdi_finetune"}  # the rest are 5-way


def test_full_network_generation(ray_session, tmp_path, omniglot_root):
    args = [*TOY, f"task.root={omniglot_root}", "task.channels=4", "task.depth=2", f"storage.uri={tmp_path}",
            "collect.num_tasks=16", "evaluate.methods=[init,protonet,ltdi]"]
    summary = run_pipeline(load_config(args))
    assert set(summary["evaluate"]) == {"init", "ltdi"}  # protonet needs a fixed extractor: skipped
    gen = ltdi_ray.load_generator(summary["generator_uri"])
    sx, sy = support_of(gen.family.sample_many("test", range(2)), gen.family, raw=True)
    theta = gen.generate_batch(sx, sy, seed=0)
    assert theta.shape == (2, gen.spec.dim) and torch.isfinite(theta).all()
