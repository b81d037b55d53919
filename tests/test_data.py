"""Tests of icdistill.data: shapes generation, COCO loading, transforms, prior, loaders."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from icdistill.data import (
    CocoDetection,
    DatasetPrior,
    ShardSampler,
    TrainSampler,
    build_test_loader,
    build_train_loader,
    build_transforms,
    compute_prior,
    generate_shapes,
)
from icdistill.errors import DataError
from icdistill.structures import Batch

# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes(root, num_train=60, num_test=10, seed=0, progress=False)


def _write_png(path: Path, w: int, h: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture()
def tiny_coco(tmp_path):
    """3 images: a.png 40x30 (w x h), b.png 24x16, c.png 20x20 (corrupt file)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    _write_png(img_dir / "a.png", 40, 30, 1)
    _write_png(img_dir / "b.png", 24, 16, 2)
    (img_dir / "c.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    data = {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 11, "file_name": "b.png", "width": 24, "height": 16},
            {"id": 12, "file_name": "c.png", "width": 20, "height": 20},
        ],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"},
                       {"id": 9, "name": "emu"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [5, 5, 10, 10], "iscrowd": 0},
            # leaves the image on the right and bottom: clipped to [30, 20, 40, 30]
            {"id": 2, "image_id": 10, "category_id": 7, "bbox": [30, 20, 20, 20], "iscrowd": 0},
            # zero width: dropped
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [10, 10, 0, 5], "iscrowd": 0},
            # crowd: excluded from targets
            {"id": 4, "image_id": 11, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 1},
            # unknown category: dropped
            {"id": 5, "image_id": 11, "category_id": 99, "bbox": [2, 2, 5, 5], "iscrowd": 0},
            {"id": 6, "image_id": 12, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 0},
        ],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return img_dir, ann


# ---------------------------------------------------------------------------------------------
# Synthetic shapes


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shapes_deterministic_and_cached(tmp_path):
    a = generate_shapes(tmp_path / "a", num_train=12, num_test=4, seed=3, progress=False)
    b = generate_shapes(tmp_path / "b", num_train=12, num_test=4, seed=3, progress=False)
    ta, tb = _tree_bytes(a.root), _tree_bytes(b.root)
    assert len([k for k in ta if k.endswith(".png")]) == 16
    assert ta == tb

    # same parameters: nothing is rewritten
    mtime = a.train_json.stat().st_mtime_ns
    generate_shapes(tmp_path / "a", num_train=12, num_test=4, seed=3, progress=False)
    assert a.train_json.stat().st_mtime_ns == mtime

    # other parameters: regenerated, stale images removed
    generate_shapes(tmp_path / "a", num_train=8, num_test=4, seed=4, progress=False)
    assert len(list(a.train_images.glob("*.png"))) == 8
    assert a.train_json.read_bytes() != tb["annotations/train.json"]
    assert json.loads((a.root / "manifest.json").read_text())["seed"] == 4


def test_shapes_annotations(shapes):
    data = json.loads(shapes.train_json.read_text())
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4]
    names = {c["id"]: c["name"] for c in data["categories"]}
    imgs = {im["id"]: im for im in data["images"]}
    assert len(imgs) == 60
    per_image = Counter(a["image_id"] for a in data["annotations"])
    assert all(1 <= per_image[i] <= 10 for i in imgs)
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        im = imgs[a["image_id"]]
        assert x >= 0 and y >= 0 and w > 0 and h > 0
        assert x + w <= im["width"] and y + h <= im["height"]
        assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
        # the instance mask is the shape's visible pixels: its area and tight box are the annotation's
        rle = a["segmentation"]
        assert rle["size"] == [im["height"], im["width"]] and isinstance(rle["counts"], str)
        visible = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert int(visible.sum()) == a["area"]
        ys, xs = np.nonzero(visible)
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == a["bbox"]
    # frequencies differ as designed: circle > square > triangle, cross
    counts = Counter(names[a["category_id"]] for a in data["annotations"])
    total = sum(counts.values())
    assert counts["circle"] > counts["square"] > max(counts["triangle"], counts["cross"])
    assert 0.33 < counts["circle"] / total < 0.6
    # sizes differ as designed: squares large, triangles small
    size = {n: np.mean([max(a["bbox"][2:]) / min(imgs[a["image_id"]]["width"],
                                                   imgs[a["image_id"]]["height"])
                        for a in data["annotations"] if names[a["category_id"]] == n])
            for n in names.values()}
    assert size["square"] > size["circle"] > size["triangle"]
    # image sizes jitter around (160, 224)
    hs = {im["height"] for im in imgs.values()}
    assert len(hs) > 1 and all(140 <= h <= 180 for h in hs)


# ---------------------------------------------------------------------------------------------
# CocoDetection


def test_coco_on_shapes(shapes):
    tf = build_transforms(train=True, min_sizes=[96, 128], max_size=256)
    ds = CocoDetection(shapes.train_images, shapes.train_json, tf)
    assert len(ds) == 60 and ds.num_classes == 4
    assert ds.class_names == ["circle", "square", "triangle", "cross"]
    assert ds.contiguous_to_cat_id == [1, 2, 3, 4]
    assert ds.coco.getImgIds() and ds.ann_file == shapes.train_json
    for i in range(3):
        img, t = ds[i]
        assert type(img) is torch.Tensor and img.dtype == torch.float32
        assert img.ndim == 3 and img.shape[0] == 3 and min(img.shape[1:]) in (96, 128)
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4
        assert t["labels"].dtype == torch.int64 and len(t["labels"]) == len(t["boxes"])
        assert int(t["labels"].max()) < 4
        h, w = img.shape[1:]
        b = t["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all()
        assert (b[:, 3] <= h).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert isinstance(t["image_id"], int)
        oh, ow = t["orig_size"]
        assert ds.coco.imgs[t["image_id"]]["height"] == oh
        assert ds.coco.imgs[t["image_id"]]["width"] == ow
    # no transforms: boxes in original pixels, equal to the json
    raw = CocoDetection(shapes.train_images, shapes.train_json)
    img, t = raw[0]
    anns = raw.coco.loadAnns(raw.coco.getAnnIds(imgIds=[t["image_id"]]))
    expected = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                              a["bbox"][1] + a["bbox"][3]] for a in anns])
    assert torch.equal(t["boxes"], expected)
    assert tuple(img.shape[1:]) == t["orig_size"]
    # with masks: every annotation's mask is the shape's visible pixels, not its box filled
    masked = CocoDetection(shapes.train_images, shapes.train_json, with_masks=True)
    assert masked.num_segmentations() == len(masked.coco.getAnnIds())
    _, t = masked[0]
    assert t["masks"].shape == (len(t["boxes"]), *t["orig_size"])
    box_area = (t["boxes"][:, 2:] - t["boxes"][:, :2]).prod(1)
    assert torch.equal(t["masks"].flatten(1).sum(1).float(), torch.tensor([a["area"] for a in anns]).float())
    assert bool((t["masks"].flatten(1).sum(1).float() <= box_area).all())


def test_coco_repairs_and_report(tiny_coco):
    img_dir, ann = tiny_coco
    ds = CocoDetection(img_dir, ann)
    assert ds.class_names == ["cat", "dog", "emu"]
    assert ds.contiguous_to_cat_id == [3, 7, 9]
    assert len(ds) == 3 and ds.image_ids == [10, 11, 12]
    c = ds.report["counts"]
    assert c["repaired_boxes"] == 1 and c["degenerate_boxes"] == 1
    assert c["crowd"] == 1 and c["unknown_category"] == 1 and c["unreadable_images"] == 0
    assert ds.report["files"]["repaired_boxes"] == ["a.png"]
    assert ds.report["files"]["degenerate_boxes"] == ["a.png"]
    assert ds.report["files"]["crowd"] == ["b.png"]
    assert ds.report["files"]["unknown_category"] == ["b.png"]
    assert ds.report["kept_annotations"] == 3

    img, t = ds[0]
    assert img.shape == (3, 30, 40)
    assert torch.equal(t["boxes"], torch.tensor([[5.0, 5, 15, 15], [30, 20, 40, 30]]))
    assert t["labels"].tolist() == [0, 1]
    img, t = ds[1]  # crowd and unknown-category boxes gone
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,)

    with pytest.raises(DataError, match="c.png"):
        ds[2]
    # the crowd annotation stays in the ground truth used by the evaluator
    assert len(ds.coco.getAnnIds(imgIds=[11], iscrowd=None)) == 2

    skipping = CocoDetection(img_dir, ann, skip_unreadable=True)
    assert len(skipping) == 2 and skipping.report["files"]["unreadable_images"] == ["c.png"]


def test_coco_bad_paths(tiny_coco, tmp_path):
    img_dir, ann = tiny_coco
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match="nope.json"):
        CocoDetection(img_dir, missing)
    with pytest.raises(DataError, match="no_images_here"):
        CocoDetection(tmp_path / "no_images_here", ann)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json"):
        CocoDetection(img_dir, broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text("[1, 2]")
    with pytest.raises(DataError, match="wrong.json"):
        CocoDetection(img_dir, wrong)


# ---------------------------------------------------------------------------------------------
# Transforms


def test_flip_keeps_boxes_aligned():
    img = torch.zeros(3, 30, 40, dtype=torch.uint8)
    img[:, 5:15, 5:15] = 255  # a white square exactly under the first box
    target = {"boxes": torch.tensor([[5.0, 5, 15, 15], [0, 0, 0.4, 10]]),
              "labels": torch.tensor([2, 1]), "image_id": 1, "orig_size": (30, 40)}
    tf = build_transforms(train=True, min_sizes=[30], max_size=1000, flip_prob=1.0)
    out, t = tf(img, target)
    assert out.dtype == torch.float32 and out.shape == (3, 30, 40)
    assert torch.equal(t["boxes"], torch.tensor([[25.0, 5, 35, 15]]))  # x -> W - x
    assert t["labels"].tolist() == [2]  # the 0.4-px-wide box dropped, labels kept aligned
    assert t["image_id"] == 1 and t["orig_size"] == (30, 40)
    x0, y0, x1, y1 = (int(v) for v in t["boxes"][0])
    assert out[:, y0:y1, x0:x1].min() == 1.0 and out.sum() == 3 * 100

    # resize x2 then flip
    tf2 = build_transforms(train=True, min_sizes=[60], max_size=1000, flip_prob=1.0)
    out, t = tf2(img, target)
    assert out.shape == (3, 60, 80)
    assert torch.allclose(t["boxes"], torch.tensor([[50.0, 10, 70, 30]]))

    # test transform: short side min_sizes[0], long side capped, no flip
    tf3 = build_transforms(train=False, min_sizes=[60], max_size=60)
    out, t = tf3(img, target)
    assert out.shape == (3, 45, 60)
    assert torch.allclose(t["boxes"], torch.tensor([[7.5, 7.5, 22.5, 22.5]]))


def test_aug_seed_reproducible(shapes):
    tf = build_transforms(train=True, min_sizes=[64, 80, 96, 112, 128], max_size=256)
    ds = CocoDetection(shapes.train_images, shapes.train_json, tf)
    a_img, a_t = ds[(4, 123)]
    torch.rand(5)  # global RNG state must not matter
    b_img, b_t = ds[(4, 123)]
    assert torch.equal(a_img, b_img) and torch.equal(a_t["boxes"], b_t["boxes"])
    state = torch.random.get_rng_state()
    ds[(4, 5)]
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    shapes_seen = {tuple(ds[(4, s)][0].shape) for s in range(8)}
    assert len(shapes_seen) > 1  # different seeds, different augmentations


# ---------------------------------------------------------------------------------------------
# Prior


def test_prior(tiny_coco, tmp_path):
    img_dir, ann = tiny_coco
    ds = CocoDetection(img_dir, ann)
    p = compute_prior(ds)
    assert p.names == ["cat", "dog", "emu"] and p.num_images == 3
    assert p.freq == pytest.approx([2 / 3, 1 / 3, 0.0])
    # cat: boxes 10x10 on 40x30 and 4x4 on 20x20 (population std)
    w, h = np.array([10 / 40, 4 / 20]), np.array([10 / 30, 4 / 20])
    assert p.w_mean[0] == pytest.approx(w.mean()) and p.w_std[0] == pytest.approx(w.std())
    assert p.h_mean[0] == pytest.approx(h.mean()) and p.h_std[0] == pytest.approx(h.std())
    # dog: one (clipped) box 10x10 on 40x30 -> sigma = 0.2 mu
    assert p.w_mean[1] == pytest.approx(0.25) and p.w_std[1] == pytest.approx(0.05)
    assert p.h_mean[1] == pytest.approx(1 / 3) and p.h_std[1] == pytest.approx(0.2 / 3)
    # emu: no box
    assert (p.w_mean[2], p.w_std[2], p.h_mean[2], p.h_std[2]) == (0.2, 0.2, 0.2, 0.2)

    path = tmp_path / "run" / "prior.json"
    p.save(path)
    q = DatasetPrior.load(path)
    assert q == p
    assert set(q.to_dict()["classes"][0]) == {"name", "freq", "w_mean", "w_std", "h_mean", "h_std"}
    with pytest.raises(DataError, match="missing.json"):
        DatasetPrior.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"num_images": 3, "classes": [{"name": "x"}]}')
    with pytest.raises(DataError, match="bad.json"):
        DatasetPrior.load(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        DatasetPrior.load(bad)


def test_prior_matches_shapes_json(shapes):
    ds = CocoDetection(shapes.train_images, shapes.train_json)
    p = compute_prior(ds)
    data = json.loads(shapes.train_json.read_text())
    counts = Counter(a["category_id"] for a in data["annotations"])
    assert p.freq == pytest.approx([counts[k] / 60 for k in (1, 2, 3, 4)])
    assert p.freq[0] > p.freq[1] > max(p.freq[2], p.freq[3])
    assert p.w_mean[1] > p.w_mean[2]  # squares larger than triangles


# ---------------------------------------------------------------------------------------------
# Sampling and loaders


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_resume_equals_uninterrupted():
    full = _take(TrainSampler(10, batch_size=3, seed=5), 3 * 9)
    resumed = _take(TrainSampler(10, batch_size=3, seed=5, start_iter=4), 3 * 5)
    assert resumed == full[12:27]  # crosses two epoch boundaries
    assert sorted(i for i, _ in full[:10]) == list(range(10))  # each epoch a permutation
    assert sorted(i for i, _ in full[10:20]) == list(range(10))
    assert [i for i, _ in full[:10]] != [i for i, _ in full[10:20]]  # epochs differ
    assert len({s for _, s in full}) == len(full)  # one aug seed per position
    assert _take(TrainSampler(10, batch_size=3, seed=6), 10) != full[:10]


def test_sampler_ranks_split_global_batch():
    single = TrainSampler(20, batch_size=6, seed=1)
    r0 = TrainSampler(20, batch_size=3, seed=1, rank=0, world_size=2)
    r1 = TrainSampler(20, batch_size=3, seed=1, rank=1, world_size=2)
    for it in range(7):
        a, b = r0.batch(it), r1.batch(it)
        assert a + b == single.batch(it)
    a, b = r0.batch(0), r1.batch(0)
    assert not {i for i, _ in a} & {i for i, _ in b}
    s0, s1 = _take(r0, 9), _take(r1, 9)
    assert s0 == r0.batch(0) + r0.batch(1) + r0.batch(2) and s1[:3] == r1.batch(0)


def test_train_loader_resume_and_workers(shapes):
    tf = build_transforms(train=True, min_sizes=[64, 96], max_size=160)
    ds = CocoDetection(shapes.train_images, shapes.train_json, tf)
    full = build_train_loader(ds, batch_size=2, seed=3)
    it = iter(full)
    batches = [next(it) for _ in range(3)]
    assert isinstance(batches[0], Batch) and len(batches[0]) == 2
    resumed = next(iter(build_train_loader(ds, batch_size=2, seed=3, start_iter=2)))
    assert resumed.image_ids == batches[2].image_ids
    assert torch.equal(resumed.images, batches[2].images)
    workers = build_train_loader(ds, batch_size=2, seed=3, num_workers=2)
    wit = iter(workers)
    for expected in batches:
        got = next(wit)
        assert got.image_ids == expected.image_ids and torch.equal(got.images, expected.images)
        for t1, t2 in zip(got.targets, expected.targets):
            assert torch.equal(t1["boxes"], t2["boxes"])
    del wit, workers


def test_test_loader_shards(shapes):
    ds = CocoDetection(shapes.test_images, shapes.test_json,
                       build_transforms(train=False, min_sizes=[64], max_size=128))
    single = [i for b in build_test_loader(ds, batch_size=3) for i in b.image_ids]
    assert single == ds.image_ids
    shards = [[i for b in build_test_loader(ds, batch_size=2, rank=r, world_size=3)
               for i in b.image_ids] for r in range(3)]
    assert sum(shards, []) == ds.image_ids  # no duplicates, nothing missing, order kept
    assert [len(s) for s in shards] == [4, 3, 3]
    assert list(ShardSampler(2, rank=2, world_size=3)) == []


def test_images_without_annotations_are_kept_unless_filtered(tmp_path):
    import json as _json

    from PIL import Image as _Image

    from icdistill.data import CocoDetection as _Coco

    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        _Image.new("RGB", (20, 10)).save(tmp_path / "img" / name)
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10},
                      {"id": 2, "file_name": "b.png", "width": 20, "height": 10}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}],
           "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "ann.json").write_text(_json.dumps(ann))
    ds = _Coco(tmp_path / "img", tmp_path / "ann.json")
    assert len(ds) == 2 and ds[1][1]["boxes"].shape == (0, 4)
    assert ds.drop_images_without_annotations() == 1
    assert len(ds) == 1 and ds.image_ids == [1] and ds.report["counts"]["empty_images_dropped"] == 1
