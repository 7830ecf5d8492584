import io
import zipfile

import numpy as np
import pytest

from ltdi_ray.config import load_config
from ltdi_ray.errors import ConfigError, DataError
from ltdi_ray.storage.fs import Location
from ltdi_ray.tasks import make_family, task_seed
from ltdi_ray.tasks.omniglot_io import load_characters


def _omniglot(root, *extra):
    return make_family(load_config(["task=omniglot", f"task.root={root}", *extra]).task)


def test_task_seeds_depend_on_family_split_index_and_base():
    seeds = {task_seed(f, s, i, b) for f in ("sinusoid", "omniglot") for s in ("train", "test") for i in (0, 1)
             for b in (0, 1)}
    assert len(seeds) == 16
    # pinned: a task's seed is the same in every process and release (Python's own hash() is not)
    assert task_seed("sinusoid", "train", 3) == 5853699344866453253
    assert task_seed("omniglot", "test", 1, 1) == 8187240013777598688


def test_sinusoid_episode_shapes_ranges_and_determinism():
    fam = make_family(load_config(["task.shots=10", "task.pool=random"]).task)
    ep = fam.sample("train", 7)
    assert ep["pool_x"].shape == (100, 1) and ep["query_x"].shape == (100, 1) and ep["support_idx"].shape == (10,)
    assert len(set(ep["support_idx"].tolist())) == 10 and ep["support_idx"].max() < 100
    assert 0.1 <= ep["amplitude"] <= 5.0 and 0 <= ep["phase"] <= np.pi and np.abs(ep["pool_x"]).max() <= 5
    np.testing.assert_allclose(ep["pool_y"], ep["amplitude"] * np.sin(ep["pool_x"] - ep["phase"]), rtol=1e-5, atol=1e-5)
    again = fam.sample("train", 7)
    assert all(np.array_equal(ep[k], again[k]) for k in ep)
    assert not np.array_equal(fam.sample("test", 7)["pool_x"], ep["pool_x"])


def test_sinusoid_grid_pool_is_shared_by_every_task():
    fam = make_family(load_config(["task.pool=grid", "task.pool_size=11"]).task)
    a, b = fam.sample("train", 0), fam.sample("train", 1)
    assert np.array_equal(a["pool_x"], b["pool_x"]) and np.allclose(a["pool_x"][:, 0], np.linspace(-5, 5, 11))
    assert not np.array_equal(a["pool_y"], b["pool_y"]) and not np.array_equal(a["query_x"], b["query_x"])


def test_omniglot_split_is_disjoint_and_sized_150_32_60(omniglot_root):
    fam = _omniglot(omniglot_root)
    assert len(fam.keys) == 242 and fam.images.shape == (242, 20, 28, 28)
    sizes = {k: len(v) for k, v in fam.splits.items()}
    assert sizes == {"train": 150, "val": 32, "test": 60}
    sets = [set(v.tolist()) for v in fam.splits.values()]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(range(242))


def test_omniglot_split_by_alphabet_holds_out_whole_alphabets(omniglot_root):
    fam = _omniglot(omniglot_root, "task.split_by=alphabet")
    alphabets = {k: {fam.keys[i].split("/")[0] for i in v} for k, v in fam.splits.items()}
    assert not (alphabets["train"] & alphabets["val"] or alphabets["train"] & alphabets["test"]
                or alphabets["val"] & alphabets["test"])
    assert sum(len(v) for v in fam.splits.values()) == 242
    assert {k: len(v) for k, v in fam.splits.items()} == {"train": 153, "val": 50, "test": 39}  # 4 / 2 / 2 alphabets
    with pytest.raises(ConfigError, match="task.split_by': must be one of character, alphabet"):
        _omniglot(omniglot_root, "task.split_by=drawer")


def test_omniglot_episodes(omniglot_root):
    fam = _omniglot(omniglot_root, "task.shots=5", "task.ways=5")
    ep = fam.sample("train", 11)
    assert ep["pool_x"].shape == (75, 28, 28) and ep["query_x"].shape == (25, 28, 28)
    assert set(ep["classes"].tolist()) <= set(fam.splits["train"].tolist())
    assert np.array_equal(np.bincount(ep["pool_y"]), [15] * 5)
    assert np.array_equal(np.bincount(ep["pool_y"][ep["support_idx"]]), [5] * 5)  # K per class, from the pool
    # query drawings are other drawings than the pool's (no image in both)
    pool = {p.tobytes() for p in ep["pool_x"]}
    assert not any(q.tobytes() in pool for q in ep["query_x"])
    assert all(np.array_equal(ep[k], fam.sample("train", 11)[k]) for k in ep)
    test_eps = [fam.sample("test", i) for i in range(20)]
    assert all(set(e["classes"].tolist()) <= set(fam.splits["test"].tolist()) for e in test_eps)
    assert all((e["rotations"] == 0).all() for e in test_eps)  # augmentation on training characters only
    assert any((fam.sample("train", i)["rotations"] != 0).any() for i in range(5))


def test_omniglot_reads_extracted_folders_and_single_zip(omniglot_root, tmp_path):
    archive = f"{omniglot_root}/images_background_small1.zip"
    zipfile.ZipFile(archive).extractall(tmp_path)
    keys_dir, imgs_dir = load_characters(str(tmp_path), 28)
    keys_zip, imgs_zip = load_characters(archive, 28)
    assert len(keys_dir) == 136 and keys_dir == keys_zip and np.array_equal(imgs_dir, imgs_zip)


def test_omniglot_from_s3(omniglot_root, s3_endpoint, bucket):
    loc = Location.parse(f"s3://{bucket}/omniglot", s3_endpoint)
    loc.fs.put(f"{omniglot_root}/images_background_small2.zip", f"{loc.path}/images_background_small2.zip")
    keys, images = load_characters(str(loc), 28, s3_endpoint)
    assert len(keys) == 156 and images.shape == (156, 20, 28, 28)


def test_omniglot_bad_roots_name_the_culprit(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _omniglot(tmp_path / "missing")
    (tmp_path / "broken.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="cannot read Omniglot archive .*broken.zip"):
        _omniglot(tmp_path / "broken.zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no Omniglot images"):
        _omniglot(empty)
    short = tmp_path / "short.zip"
    with zipfile.ZipFile(short, "w") as z:
        buf = io.BytesIO()
        from PIL import Image
        Image.new("L", (105, 105), 255).save(buf, "PNG")
        z.writestr("bg/Alpha/character01/a.png", buf.getvalue())
    with pytest.raises(DataError, match="has 1 drawings, expected 20"):
        _omniglot(short)


def test_head_mode_generates_only_the_classifier_on_a_fixed_backbone(omniglot_root, tmp_path):
    import torch
    from safetensors.torch import save_file

    from ltdi_ray.base_nets import ConvNet, ParamSpec
    from ltdi_ray.trajectories.theta0 import initial_theta

    fam = _omniglot(omniglot_root, "task.generate=head", "task.channels=8", "task.backbone=random")
    a = fam.build_net()
    assert ParamSpec.from_module(a).names == ("head.weight", "head.bias") and ParamSpec.from_module(a).dim == 8 * 5 + 5
    pool = fam.sample("train", 0)["pool_x"]
    feats = fam.to_torch(pool)  # the inner loop sees backbone features, computed once per episode
    assert feats.shape == (len(pool), 8)
    again = _omniglot(omniglot_root, "task.generate=head", "task.channels=8", "task.backbone=random")
    assert torch.equal(feats, again.to_torch(pool))  # one seeded extractor, whatever the caller's seed
    assert not initial_theta(fam, 0).any()  # the head starts at zero: every class row equal
    images = fam.decode(pool).unsqueeze(1)
    assert torch.allclose(fam.deployable(a)(images), a(feats), atol=1e-6)  # the users' module takes images
    assert fam.build_net(ways=12).head.out_features == 12  # heads exist for any N
    trained = ConvNet(5, channels=8)
    save_file(trained.state_dict(), str(tmp_path / "backbone.safetensors"))
    loaded = _omniglot(omniglot_root, "task.generate=head", "task.channels=8",
                       f"task.backbone={tmp_path / 'backbone.safetensors'}")
    feats = trained.features(images)
    assert torch.allclose(loaded.to_torch(pool), feats / feats.norm(dim=-1, keepdim=True), atol=1e-6)
    with pytest.raises(DataError, match="do not fit the conv net"):
        _omniglot(omniglot_root, "task.generate=head", "task.channels=16",
                  f"task.backbone={tmp_path / 'backbone.safetensors'}").build_net()
    with pytest.raises(DataError, match="not found"):
        _omniglot(omniglot_root, "task.generate=head", f"task.backbone={tmp_path / 'nope.safetensors'}").build_net()
    with pytest.raises(ConfigError, match="task.generate=head needs task.backbone"):
        _omniglot(omniglot_root, "task.generate=head").build_net()
    with pytest.raises(DataError, match="makes 5-way networks"):
        _omniglot(omniglot_root, "task.channels=8").build_net(ways=7)


def test_head_features_are_computed_once_per_distinct_drawing(omniglot_root):
    import torch

    fam = _omniglot(omniglot_root, "task.generate=head", "task.channels=8", "task.backbone=random")
    pools = fam.sample_many("train", range(40))["pool_x"]  # (40, 75, 28, 28): episodes share drawings
    seen, features = [], fam.backbone.features
    fam.backbone.features = lambda x: seen.append(len(x)) or features(x)  # counts what the backbone sees
    feats = fam.to_torch(pools)
    distinct = len(np.unique(pools.reshape(-1, 28 * 28), axis=0))
    assert sum(seen) == distinct < pools.shape[0] * pools.shape[1]
    torch.testing.assert_close(feats, fam.net_input(fam.decode(pools)), rtol=0, atol=1e-6)
    assert fam.to_torch(pools[:0]).shape == (0, 75, 8)
