"""N-way K-shot image classification: the glyph set, the Omniglot loader, episodes and the MAML conv net."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from metadapt.data.episodes import NWayKShot, nearest_neighbour_accuracy
from metadapt.data.glyphs import EVALUATION_BLOCKS, generate_glyphs, glyph_alphabets
from metadapt.data.omniglot import ImageClasses, load_omniglot
from metadapt.errors import MetadaptError
from metadapt.meta.inner import freeze_rates
from metadapt.meta.outer import maml_loss
from metadapt.models.base import check_params
from metadapt.models.classifier import ConvClassifier, batch_norm
from metadapt.types import TaskBatch

BACKGROUND = ["Latin", "Greek_1", "Cyrillic_1"]
EVALUATION = ["Armenian", "Hebrew"]
SMALL = {"alphabets": BACKGROUND + EVALUATION, "background_alphabets": BACKGROUND, "max_characters": 4,
         "drawers": 4}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(autouse=True)
def one_thread():
    # Small convolutions gain nothing from a second thread, and on a shared machine two OpenMP threads waiting
    # on each other made a 20 ms training step take a second.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate_glyphs(tmp_path_factory.mktemp("glyphs") / "set", seed=0, **SMALL)


# ---------------------------------------------------------------- generation


def test_catalogue_has_enough_distinct_alphabets():
    cat = glyph_alphabets()
    assert len(cat) >= 30
    cps = [cp for _, chars in cat.values() for cp in chars]
    assert len(cps) == len(set(cps)) >= 1600
    assert all(1 <= len(chars) <= 55 for _, chars in cat.values())
    held_out = [n for n, (block, _) in cat.items() if block in EVALUATION_BLOCKS]
    assert 15 <= len(held_out) < len(cat) - 15
    for name in BACKGROUND + EVALUATION:
        assert name in cat


def test_layout_manifest_and_images(small):
    manifest = json.loads((small / "manifest.json").read_text())
    assert manifest["counts"]["background"] == {"alphabets": 3, "characters": 12, "images": 48}
    assert manifest["counts"]["evaluation"] == {"alphabets": 2, "characters": 8, "images": 32}
    assert manifest["alphabets"]["Latin"]["characters"][0] == "U+0041"
    assert sorted(p.name for p in (small / "images_background").iterdir()) == sorted(BACKGROUND)
    assert sorted(p.name for p in (small / "images_evaluation").iterdir()) == sorted(EVALUATION)
    folder = small / "images_background" / "Latin" / "character01"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["0001_01.png", "0001_02.png", "0001_03.png", "0001_04.png"]
    for char in sorted((small / "images_evaluation" / "Hebrew").iterdir()):
        drawings = [np.asarray(Image.open(p)) for p in sorted(char.iterdir())]
        for img in drawings:
            assert img.shape == (28, 28) and img.dtype == np.uint8
            assert img.max() > 200 and 0.03 < img.mean() / 255 < 0.5  # ink high on a dark background
            assert np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]).mean() < 20
        for i in range(len(drawings)):
            for j in range(i):
                assert np.abs(drawings[i].astype(int) - drawings[j]).mean() > 5  # every drawer draws differently


def test_generation_is_a_pure_function_of_the_seed(small, tmp_path):
    # A subset holds exactly the full set's images; another seed draws other ones.
    again = generate_glyphs(tmp_path / "a", seed=0, alphabets=["Latin"], max_characters=2, drawers=4)
    sub = _files(again)
    assert len(sub) == 8
    full = _files(small)
    assert all(sub[k] == full[k] for k in sub)
    other = _files(generate_glyphs(tmp_path / "b", seed=1, alphabets=["Latin"], max_characters=2, drawers=4))
    assert other.keys() == sub.keys()
    assert all(other[k] != sub[k] for k in sub)


def test_complete_folder_is_reused_and_other_settings_refused(small):
    before = {p: p.stat().st_mtime_ns for p in small.rglob("*.png")}
    assert generate_glyphs(small, seed=0, **SMALL) == small
    assert {p: p.stat().st_mtime_ns for p in small.rglob("*.png")} == before
    with pytest.raises(MetadaptError, match=r"other settings.*seed"):
        generate_glyphs(small, seed=3, **SMALL)


@pytest.mark.parametrize("kwargs, match", [
    ({"alphabets": ["Klingon"]}, "unknown alphabet"),
    ({"alphabets": ["Latin"], "background_alphabets": ["Greek_1"]}, "not among"),
    ({"drawers": 0}, "drawers"),
])
def test_generation_rejects_bad_settings(tmp_path, kwargs, match):
    with pytest.raises(MetadaptError, match=match):
        generate_glyphs(tmp_path / "x", **kwargs)


# ---------------------------------------------------------------- loading


def test_load_generated_set(small):
    bg = load_omniglot(small, "background")
    assert tuple(bg.images.shape) == (12, 4, 28, 28) and bg.images.dtype == torch.uint8
    assert bg.names[0] == "Cyrillic_1/character01" and bg.alphabets == sorted(BACKGROUND)  # sorted by name
    png = np.asarray(Image.open(small / "images_background" / "Latin" / "character01" / "0001_02.png"))
    assert torch.equal(bg.images[bg.names.index("Latin/character01"), 1], torch.from_numpy(png.copy()))
    ev = load_omniglot(small, "evaluation", cache=False)
    assert tuple(ev.images.shape) == (8, 4, 28, 28)
    # The second load comes from the cache and is the same.
    assert torch.equal(load_omniglot(small, "background").images, bg.images)
    assert (small / ".metadapt_background_28.pt").is_file()


def _fake_omniglot(root: Path, alphabets: int = 2, characters: int = 3, drawers: int = 20) -> Path:
    """Real Omniglot's format: 105 x 105 1-bit PNGs, black strokes on white."""
    rng = np.random.default_rng(0)
    for a in range(alphabets):
        for c in range(characters):
            folder = root / "images_background" / f"Alphabet_{a}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(drawers):
                img = np.ones((105, 105), dtype=bool)
                y, x = rng.integers(20, 60, size=2)
                img[y:y + 30, x:x + 6] = False  # a black stroke
                Image.fromarray(img).save(folder / f"{a * 100 + c:04d}_{d + 1:02d}.png")
    return root


def test_load_real_omniglot_layout_inverts_to_ink_high(tmp_path):
    root = _fake_omniglot(tmp_path / "omniglot")
    assert Image.open(next(root.rglob("*.png"))).size == (105, 105)
    classes = load_omniglot(root, "background", size=28, cache=False)
    assert tuple(classes.images.shape) == (6, 20, 28, 28)
    img = classes.images.float() / 255
    assert img[..., 0, :].max() < 0.05 and img[..., :, -1].max() < 0.05  # background low
    assert img.amax(dim=(-1, -2)).min() > 0.8  # every drawing's stroke high
    assert 0.01 < img.mean() < 0.03  # a 30 x 6 stroke in 105 x 105
    assert classes.names[-1] == "Alphabet_1/character03"


def _break(root: Path, case: str) -> Path:
    bg = root / "images_background"
    if case == "no_folder":
        return root / "missing"
    if case == "no_split":
        (root / "images_evaluation").mkdir()
        for p in sorted(bg.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        bg.rmdir()
    elif case == "no_alphabets":
        for p in sorted(bg.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    elif case == "empty_alphabet":
        (bg / "Alphabet_9").mkdir()
    elif case == "empty_character":
        (bg / "Alphabet_0" / "character09").mkdir()
        (bg / "Alphabet_0" / "character09" / "notes.txt").write_text("no images")
    elif case == "bad_image":
        (bg / "Alphabet_1" / "character02" / "0101_03.png").write_bytes(b"not a png\nat all")
    elif case == "unequal":
        (bg / "Alphabet_1" / "character02" / "0101_03.png").unlink()
    return root


@pytest.mark.parametrize("case, match", [
    ("no_folder", "folder .*missing not found"),
    ("no_split", "images_background not found"),
    ("no_alphabets", "no alphabet folders"),
    ("empty_alphabet", "Alphabet_9 has no character folders"),
    ("empty_character", "character09 has no images"),
    ("bad_image", "cannot read image .*0101_03.png"),
    ("unequal", "character02 has 19 images where the other characters have 20"),
])
def test_bad_folders_raise_one_line(tmp_path, case, match):
    root = _break(_fake_omniglot(tmp_path / "omniglot", drawers=20), case)
    with pytest.raises(MetadaptError, match=match) as info:
        load_omniglot(root, "background", cache=False)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- episodes


def _coded_classes(c: int = 7, d: int = 6, side: int = 8) -> ImageClasses:
    """Class ``i`` is filled with ``4 (i + 1)``; drawing ``j`` has ``200 + j`` in its top-left corner, which a quarter
    turn moves to another corner."""
    images = torch.zeros(c, d, side, side, dtype=torch.uint8)
    images += (4 * (torch.arange(c) + 1)).to(torch.uint8).view(c, 1, 1, 1)
    images[:, :, 0, 0] = (200 + torch.arange(d)).to(torch.uint8)
    return ImageClasses(images, [f"A/character{i + 1:02d}" for i in range(c)])


def _decode(img: torch.Tensor) -> tuple[int, int, int]:
    """(class, drawing, quarter turns) of one ``1 x H x W`` episode image."""
    x = (img[0] * 255).round().long()
    corners = [x[0, 0], x[-1, 0], x[-1, -1], x[0, -1]]  # where rot90 by r puts the top-left pixel
    turn = next(r for r, v in enumerate(corners) if v >= 200)
    return int(x[1, 1]) // 4 - 1, int(corners[turn]) - 200, turn


@pytest.mark.parametrize("rotations", [True, False])
def test_episodes_labels_classes_and_drawings(rotations):
    classes = _coded_classes()
    n, k, q, b = 5, 2, 3, 40
    sampler = NWayKShot(classes, n, k, q, rotations=rotations)
    assert sampler.num_classes == (28 if rotations else 7)
    tasks = sampler.sample(b, torch.Generator().manual_seed(0), split="test")
    (xs, ys), (xq, yq) = tasks.support, tasks.query
    assert xs.shape == (b, n * k, 1, 8, 8) and xq.shape == (b, n * q, 1, 8, 8)
    assert xs.dtype == torch.float32 and xs.min() >= 0 and xs.max() <= 1
    assert ys.shape == (b, n * k) and yq.shape == (b, n * q) and ys.dtype == torch.int64
    assert tasks.info["classes"].shape == (b, n)
    turns = set()
    for e in range(b):
        assert torch.equal(torch.bincount(ys[e], minlength=n), torch.full((n,), k))
        assert torch.equal(torch.bincount(yq[e], minlength=n), torch.full((n,), q))
        assert len(set(tasks.info["classes"][e].tolist())) == n  # no class twice in an episode
        for label in range(n):
            imgs = torch.cat([xs[e][ys[e] == label], xq[e][yq[e] == label]])
            codes = [_decode(img) for img in imgs]
            cls = {(c, r) for c, _, r in codes}
            assert len(cls) == 1  # support and query of one label: one class, one rotation
            c, r = cls.pop()
            assert int(tasks.info["classes"][e, label]) == (c * 4 + r if rotations else c)
            assert len({dr for _, dr, _ in codes}) == k + q  # distinct drawings
            turns.add(r)
    assert turns == ({0, 1, 2, 3} if rotations else {0})
    # The labels of one class are not always the same: the order of the classes is drawn per episode.
    first = tasks.info["classes"][:, 0]
    assert len(set(first.tolist())) > 5


def test_rotated_episode_images_are_rotated_drawings(small):
    classes = load_omniglot(small, "background")
    tasks = NWayKShot(classes, 5, 1, 1, rotations=True).sample(6, torch.Generator().manual_seed(1))
    xs, _ = tasks.support
    for e in range(6):
        for label in range(5):
            cls = int(tasks.info["classes"][e, label])
            stored = torch.rot90(classes.images[cls // 4], cls % 4, dims=(1, 2)).float() / 255
            assert any(torch.equal(xs[e, label, 0], s) for s in stored)


def test_sampler_rejects_impossible_episodes():
    classes = _coded_classes(c=3, d=4)
    with pytest.raises(ValueError, match="n_way"):
        NWayKShot(classes, 4, 1, 1, rotations=False)
    NWayKShot(classes, 12, 1, 1, rotations=True)  # 3 characters x 4 rotations
    with pytest.raises(ValueError, match="k_shot"):
        NWayKShot(classes, 2, 2, 3)


def test_nearest_neighbour():
    tasks = NWayKShot(_coded_classes(), 5, 3, 2).sample(8, torch.Generator().manual_seed(2))
    same = TaskBatch(support=tasks.support, query=tasks.support)
    assert torch.equal(nearest_neighbour_accuracy(same), torch.ones(8))
    acc = nearest_neighbour_accuracy(tasks)
    assert acc.shape == (8,) and bool((acc == 1).all())  # coded classes differ in fill: pixel space separates them


# ---------------------------------------------------------------- the conv net


def test_classifier_parameters():
    model = ConvClassifier(5)
    params = model.init_params(torch.Generator().manual_seed(0))
    check_params(model, params)
    assert params["conv.0.weight"].shape == (64, 1, 3, 3) and params["conv.3.weight"].shape == (64, 64, 3, 3)
    assert params["out.weight"].shape == (5, 64) and params["out.bias"].shape == (5,)
    assert torch.equal(params["norm.2.weight"], torch.ones(64)) and torch.equal(params["norm.2.bias"], torch.zeros(64))
    assert sum(v.numel() for v in params.values()) == 64 * 9 + 3 * 64 * 64 * 9 + 4 * 128 + 64 * 5 + 5
    again = model.init_params(torch.Generator().manual_seed(0))
    assert all(torch.equal(params[k], again[k]) for k in params)
    assert model.forward(params, torch.rand(3, 1, 28, 28)).shape == (3, 5)
    with pytest.raises(ValueError, match="poolings"):
        ConvClassifier(5, image_size=8, layers=4)


def test_batch_norm_is_torch_batch_norm_in_training_mode():
    x, w, b = torch.randn(6, 4, 5, 5, dtype=torch.float64), torch.randn(4, dtype=torch.float64), torch.randn(4)
    torch.testing.assert_close(batch_norm(x, w, b.double()),
                               F.batch_norm(x, None, None, w, b.double(), training=True), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(batch_norm(x, None, b.double()),
                               F.batch_norm(x, None, None, None, b.double(), training=True), rtol=1e-12, atol=1e-12)


def test_the_maml_codes_batch_norm_is_a_shift_only():
    full, shift = ConvClassifier(5, filters=8), ConvClassifier(5, filters=8, norm_scale=False)
    params = full.init_params(torch.Generator().manual_seed(0))
    mine = shift.init_params(torch.Generator().manual_seed(0))
    assert set(params) - set(mine) == {f"norm.{i}.weight" for i in range(4)} and set(mine) < set(params)
    assert all(torch.equal(mine[k], params[k]) for k in mine)  # the same draws: only the scales are gone
    check_params(shift, mine)
    with pytest.raises(ValueError):
        check_params(shift, params)
    images = torch.rand(2, 6, 1, 28, 28)
    # a scale of one everywhere is the shift-only network, in the plain and the stacked path
    torch.testing.assert_close(shift.forward(mine, images[0]), full.forward(params, images[0]))
    stacked = {k: v.expand(2, *v.shape) for k, v in params.items()}
    stacked_mine = {k: v.expand(2, *v.shape) for k, v in mine.items()}
    torch.testing.assert_close(shift.forward(stacked_mine, images), full.forward(stacked, images))


def test_the_maml_codes_omniglot_network_strides_and_averages():
    model = ConvClassifier(5, filters=8, pool="stride")
    params = model.init_params(torch.Generator().manual_seed(0))
    assert model.features == 8 and params["out.weight"].shape == (5, 8)
    images = torch.rand(2, 6, 1, 28, 28)
    x = images[1]
    for i in range(4):  # the oracle: torch's own layers, the maps 28 -> 14 -> 7 -> 4 -> 2
        x = F.conv2d(x, params[f"conv.{i}.weight"], padding=1, stride=2)
        x = F.relu(F.batch_norm(x, None, None, params[f"norm.{i}.weight"], params[f"norm.{i}.bias"], training=True))
    assert x.shape[-2:] == (2, 2)
    expected = F.linear(x.mean(dim=(2, 3)), params["out.weight"], params["out.bias"])
    torch.testing.assert_close(model.forward(params, images[1]), expected, rtol=1e-5, atol=1e-5)
    per_task = {k: torch.stack([v, v + 0.01]) for k, v in params.items()}
    both = model.forward(per_task, images)
    torch.testing.assert_close(both[1], model.forward({k: v[1] for k, v in per_task.items()}, images[1]),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pool"):
        ConvClassifier(5, pool="avg")


def test_classifier_fits_one_episode(small):
    torch.manual_seed(0)
    tasks = NWayKShot(load_omniglot(small, "background"), 5, 2, 1).sample(1, torch.Generator().manual_seed(0))
    batch = (tasks.support[0][0], tasks.support[1][0])
    model = ConvClassifier(5)
    params = {k: v.requires_grad_() for k, v in model.init_params(torch.Generator().manual_seed(0)).items()}
    opt = torch.optim.Adam(params.values(), lr=1e-2)
    first = float(model.loss(params, batch).detach())
    for _ in range(20):
        opt.zero_grad()
        model.loss(params, batch).backward()
        opt.step()
    assert float(model.loss(params, batch).detach()) < first / 5
    assert float(model.accuracy(params, batch)) == 1.0


@pytest.mark.parametrize("code_norm", [False, True])
@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_loss_gradient_matches_a_per_task_loop(small, first_order, stacked, code_norm):
    """Both paths the job can take (one vmap lane per task, or the stacked grouped convolutions the shipped
    configs run) against plain autograd, one task at a time; also with the MAML code's batch norm (no scale,
    shifts left out of the inner loop)."""
    model = ConvClassifier(5, filters=8, norm_scale=not code_norm, pool="stride" if code_norm else "max")
    params = {k: v.double().requires_grad_() for k, v in model.init_params(torch.Generator().manual_seed(0)).items()}
    assert code_norm != ("norm.0.weight" in params)
    tasks = NWayKShot(load_omniglot(small, "background"), 5, 1, 2).sample(3, torch.Generator().manual_seed(3))
    tasks = TaskBatch(support=(tasks.support[0].double(), tasks.support[1]),
                      query=(tasks.query[0].double(), tasks.query[1]))
    rate = 0.4
    rates = freeze_rates(rate, params, ["norm."] if code_norm else [])
    loss = maml_loss(model.loss, params, tasks, rates, steps=1, first_order=first_order, stacked=stacked)
    grads = torch.autograd.grad(loss, list(params.values()))
    losses = []
    for b in range(3):
        support = (tasks.support[0][b], tasks.support[1][b])
        query = (tasks.query[0][b], tasks.query[1][b])
        inner = torch.autograd.grad(model.loss(params, support), list(params.values()), create_graph=not first_order)
        fast = {k: p if code_norm and k.startswith("norm.") else p - rate * g
                for (k, p), g in zip(params.items(), inner, strict=True)}
        losses.append(model.loss(fast, query))
    ref_loss = torch.stack(losses).mean()
    ref = torch.autograd.grad(ref_loss, list(params.values()))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-8, atol=1e-8)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-8)


def test_a_full_disk_only_costs_the_image_cache(tmp_path):
    # The decoded-image cache is an optimisation: a disk that fills while it is written (torch reports that as a
    # RuntimeError when given a path) must leave no cache and no exception.
    import os

    from metadapt.data import omniglot

    cache = tmp_path / "cache.pt"
    (tmp_path / f"cache.pt.{os.getpid()}.tmp").symlink_to("/dev/full")
    omniglot._write_cache(cache, "key", torch.zeros(2, 4, 4), ["a", "b"])
    assert not cache.exists()
