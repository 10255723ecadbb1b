"""Data loading on the real offline copies (CIFAR-10, CelebA, DTD) and on small synthetic folders.

The first run decodes ~61k small images (about 10-25 s on 2 cores); later runs hit the safetensors cache.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import data_path
from PIL import Image

import clel.data.files
from clel.data import (CIFAR10_CLASSES, DataError, ImageSet, RandomBatches, cifar10_interpolation, dequantize,
                       load_celeba, load_cifar10, load_dataset, load_dtd, resize_images, to_float)


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


@pytest.fixture(scope="module")
def cifar_test() -> ImageSet:
    return load_cifar10(data_path("cifar10"), split="test")


@pytest.fixture(scope="module")
def celeba() -> ImageSet:
    return load_celeba(data_path("celeba"))


# ---------------------------------------------------------------------------------------------------- CIFAR-10

def _check_cifar(data: ImageSet, n: int) -> None:
    assert data.images.shape == (n, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert torch.bincount(data.labels, minlength=10).tolist() == [n // 10] * 10
    assert data.classes == CIFAR10_CLASSES


def test_cifar10_test_split(cifar_test):
    _check_cifar(cifar_test, 10_000)
    assert CIFAR10_CLASSES[0] == "airplane" and CIFAR10_CLASSES[3] == "cat" and CIFAR10_CLASSES[9] == "truck"
    # the first cat of the official test set is test/cat/0000.jpg; pixels match a direct PIL decode
    first_cat = int((cifar_test.labels == 3).nonzero()[0])
    expected = torch.from_numpy(_rgb(data_path("cifar10", "test", "cat", "0000.jpg"))).permute(2, 0, 1)
    assert torch.equal(cifar_test.images[first_cat], expected)


def test_cifar10_train_split():
    _check_cifar(load_cifar10(data_path("cifar10"), split="train"), 50_000)


def test_cifar10_bad_split_and_dispatch(cifar_test):
    with pytest.raises(ValueError, match="split"):
        load_cifar10(data_path("cifar10"), split="validation")
    via_name = load_dataset("cifar10", data_path("cifar10"), split="test")
    assert torch.equal(via_name.images, cifar_test.images) and torch.equal(via_name.labels, cifar_test.labels)


# ---------------------------------------------------------------------------------------------------- CelebA

def test_celeba_images_and_attribute_rates(celeba):
    assert celeba.images.shape == (10_000, 3, 64, 64) and celeba.images.dtype == torch.uint8
    assert celeba.attrs.shape == (10_000, 40) and len(celeba.attr_names) == 40
    for name, rate in {"Young": 0.78, "Male": 0.42, "Smiling": 0.48}.items():
        assert abs(celeba.attr(name).float().mean().item() - rate) <= 0.01, name
    assert torch.equal(celeba.attr("Female"), ~celeba.attr("Male"))
    with pytest.raises(KeyError, match="Smiling"):  # the message lists the valid names
        celeba.attr("Smiles")


def test_celeba_first_image_is_centre_crop_of_000001(celeba):
    # independent of the loader: 89x89 square 10 rows from the top, then antialiased resize to 64
    with Image.open(data_path("celeba", "img_align_celeba_89x109", "000001.jpg")) as im:
        ref = np.array(im.convert("RGB").crop((0, 10, 89, 99)).resize((64, 64), Image.BICUBIC))
    assert torch.equal(celeba.images[0], torch.from_numpy(ref).permute(2, 0, 1))
    # 000001.jpg is listed as: not Male, Smiling, Young
    assert not celeba.attr("Male")[0] and celeba.attr("Smiling")[0] and celeba.attr("Young")[0]


def _write_attr_file(path, files, names=("Male", "Smiling"), rows=None, count=None):
    rows = rows if rows is not None else [f"{f} " + " ".join(["1", "-1"][: len(names)]) for f in files]
    path.write_text(f"{count if count is not None else len(rows)}\n{' '.join(names)}\n" + "\n".join(rows) + "\n")


def test_celeba_full_size_crop_geometry_and_missing_images(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEL_CACHE", str(tmp_path / "cache"))
    img_dir = tmp_path / "img_align_celeba"
    img_dir.mkdir()
    a = np.zeros((218, 178, 3), np.uint8)
    a[:, :, 1] = 200
    a[:20], a[198:] = (255, 0, 0), (0, 0, 255)  # outside the 178x178 square at row 20
    Image.fromarray(a).save(img_dir / "000001.png")
    _write_attr_file(tmp_path / "list_attr_celeba.txt", ["000001.png", "000002.png"])  # 000002 is not on disk
    data = load_celeba(tmp_path, image_size=32, attr_file=None)
    assert data.images.shape == (1, 3, 32, 32)
    assert (data.images[0, 1] == 200).all() and (data.images[0, [0, 2]] == 0).all()  # no red/blue leaks in
    assert data.attr("Male").tolist() == [True] and data.attr("Female").tolist() == [False]


# ---------------------------------------------------------------------------------------------------- DTD

def test_dtd_top_left_crops():
    root = data_path("dtd10")
    data = load_dtd(root, size=32)
    assert data.images.shape == (1200, 3, 32, 32) and data.images.dtype == torch.uint8
    assert len(data.classes) == 10 and torch.bincount(data.labels).tolist() == [120] * 10
    files = sorted(p for c in data.classes for p in (root / c).iterdir())
    for i in (0, 119, 120, 777, 1199):
        assert files[i].parent.name == data.classes[data.labels[i]]
        expected = torch.from_numpy(_rgb(files[i])[:32, :32].copy()).permute(2, 0, 1)
        assert torch.equal(data.images[i], expected), files[i]


# ---------------------------------------------------------------------------------------------------- conversions

def test_dequantize_range_offset_and_inverse():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = dequantize(x, generator=g)
    assert y.dtype == torch.float32 and y.min() >= 0 and y.max() < 1
    assert torch.equal(torch.floor(y * 256).to(torch.uint8), x)
    assert abs((y - x.float() / 256).mean().item() - 0.5 / 256) < 0.01 / 256
    # all-255 and many draws: noise near 1 must not round up to 1.0 (or to the next grey level)
    top = dequantize(torch.full((2_000_000,), 255, dtype=torch.uint8), generator=g)
    assert top.max() < 1 and (torch.floor(top * 256) == 255).all()
    # same generator seed, same noise
    assert torch.equal(dequantize(x, torch.Generator().manual_seed(5)), dequantize(x, torch.Generator().manual_seed(5)))
    assert torch.equal(to_float(torch.tensor([0, 51, 255], dtype=torch.uint8)), torch.tensor([0.0, 0.2, 1.0]))


def test_cifar10_interpolation_matches_hand_computation():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (103, 3, 2, 2), dtype=torch.uint8, generator=g)
    x[0, 0, 0, 0], x[100, 0, 0, 0] = 1, 2  # a .5 case: rounds half up to 2
    out = cifar10_interpolation(x)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    xs = x.tolist()
    for i in range(103):
        j = (i + 100) % 103
        hand = [[[(xs[i][c][h][w] + xs[j][c][h][w] + 1) // 2 for w in range(2)] for h in range(2)] for c in range(3)]
        assert out[i].tolist() == hand, i
    assert out[0, 0, 0, 0] == 2


def test_resize_images_antialiases():
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 255
    x = checker.to(torch.uint8).expand(2, 3, 64, 64)
    y = resize_images(x, 32)
    assert y.shape == (2, 3, 32, 32) and y.dtype == torch.uint8
    # a 1-pixel checkerboard averages to mid grey; without antialiasing it would alias to 0 or 255
    assert ((y[..., 1:-1, 1:-1].float() - 127.5).abs() <= 1).all()
    assert ((y.float() - 127.5).abs() <= 5).all()  # bicubic overshoots a little at the corners
    const = torch.full((1, 3, 64, 64), 77, dtype=torch.uint8)
    assert (resize_images(const, 32) == 77).all()


# ---------------------------------------------------------------------------------------------------- batches

def _toy_set(n=10) -> ImageSet:
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 4, 4).contiguous()
    return ImageSet(images=images, labels=torch.arange(n))


def test_random_batches_epochs_and_labels():
    it = RandomBatches(_toy_set(10), batch_size=4, generator=torch.Generator().manual_seed(0))
    seen = []
    for _ in range(2):  # one epoch: two full batches, the 2-image tail is dropped
        x, y = next(it)
        assert x.shape == (4, 3, 4, 4) and x.dtype == torch.float32 and 0 <= x.min() and x.max() < 1
        assert torch.equal(torch.floor(x[:, 0, 0, 0] * 256).long(), y)  # images stay paired with their labels
        seen += y.tolist()
    assert len(set(seen)) == 8  # no repeats within an epoch
    next(it)
    assert it.epoch == 1


def test_random_batches_state_round_trip():
    data = _toy_set(10)
    a = RandomBatches(data, batch_size=3, generator=torch.Generator().manual_seed(0))
    for _ in range(4):  # into the second epoch
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(6)]
    b = RandomBatches(data, batch_size=3, generator=torch.Generator().manual_seed(123))
    b.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, (next(b) for _ in range(6))):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ValueError, match="10 images"):
        RandomBatches(_toy_set(12), batch_size=3).load_state_dict(state)


def test_random_batches_continue_the_same_epoch_at_another_batch_size():
    """A resumed run with a new --batch-size takes the next images of the same permutation, not a fresh epoch."""
    data = _toy_set(12)
    a = RandomBatches(data, batch_size=2, generator=torch.Generator().manual_seed(0), dequant=False)
    next(a)
    state = a.state_dict()
    rest = torch.cat([next(a)[1] for _ in range(5)])  # the epoch's other 10 labels, in order
    b = RandomBatches(data, batch_size=5, generator=torch.Generator().manual_seed(9), dequant=False)
    b.load_state_dict(state)
    assert torch.equal(torch.cat([next(b)[1] for _ in range(2)]), rest)
    assert b.epoch == 0 and b.position == 12


# ---------------------------------------------------------------------------------------------------- errors

def _image_folder(root, classes=("a", "b"), per_class=3, size=40):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{c}_{k:04d}.png")
    return root


def test_missing_and_empty_roots_raise_data_error(tmp_path):
    tmp_path = tmp_path.resolve()  # messages name resolved paths
    missing = tmp_path / "nope"
    for load in (load_cifar10, load_celeba, load_dtd):
        with pytest.raises(DataError, match=re.escape(str(missing))):
            load(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=re.escape(str(empty))):
        load_dtd(empty)
    with pytest.raises(DataError, match=re.escape(str(empty))):
        load_celeba(empty)
    with pytest.raises(DataError, match=re.escape(str(empty / "train"))):
        load_cifar10(empty)
    (empty / "a").mkdir()  # a class folder without images
    with pytest.raises(DataError, match=re.escape(str(empty / "a"))):
        load_dtd(empty)


def test_wrong_cifar_layout_raises(tmp_path):
    _image_folder(tmp_path / "train", classes=("cat", "dog"), size=32)
    with pytest.raises(DataError, match="airplane"):
        load_cifar10(tmp_path)


def test_malformed_attribute_file_raises(tmp_path):
    tmp_path = tmp_path.resolve()
    img_dir = tmp_path / "img_align_celeba_89x109"
    img_dir.mkdir()
    Image.new("RGB", (89, 109)).save(img_dir / "000001.jpg")
    attr = tmp_path / "list_attr_celeba.txt"
    for kwargs in ({"rows": ["000001.jpg 1"]},  # too few values
                   {"rows": ["000001.jpg 1 0"]},  # not ±1
                   {"rows": ["000001.jpg 1 -1"], "count": 5}):  # count line disagrees
        _write_attr_file(attr, ["000001.jpg"], **kwargs)
        with pytest.raises(DataError, match=re.escape(str(attr))):
            load_celeba(tmp_path)
    attr.write_text("Male Smiling\n000001.jpg 1 -1\n")  # no count line
    with pytest.raises(DataError, match=re.escape(str(attr))):
        load_celeba(tmp_path)


def test_corrupt_image_raises_naming_the_file(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    monkeypatch.setenv("CLEL_CACHE", str(tmp_path / "cache"))
    root = _image_folder(tmp_path / "dtd")
    bad = root / "a" / "a_9.jpg"
    bad.write_bytes(data_path("cifar10", "test", "cat", "0000.jpg").read_bytes()[:300])  # truncated JPEG
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load_dtd(root)
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load_dtd(root)
    # large folders decode in worker processes; the error must still name the file
    monkeypatch.setattr(clel.data.files, "POOL_MIN_IMAGES", 2)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load_dtd(root)


def test_cache_round_trip_and_invalidation(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLEL_CACHE", str(cache))
    root = _image_folder(tmp_path / "dtd", size=40)
    first = load_dtd(root, size=32)
    assert len(list(cache.glob("*.safetensors"))) == 1
    again = load_dtd(root, size=32)
    assert torch.equal(first.images, again.images) and again.classes == ["a", "b"]
    Image.new("RGB", (40, 40), (9, 9, 9)).save(root / "b" / "b_9.png")  # a new file must not hit the old cache
    grown = load_dtd(root, size=32)
    assert len(grown) == 7 and (grown.images[-1] == 9).all()
    with pytest.raises(DataError, match="at least 48x48"):
        load_dtd(root, size=48)


# ---------------------------------------------------------------------------------------------------- other sets

@pytest.mark.parametrize("name", ["svhn", "cifar100", "imagenet32"])
def test_unavailable_sets_say_where_to_get_them(tmp_path, name):
    with pytest.raises(DataError, match="not available"):
        load_dataset(name, tmp_path, split="train")
    with pytest.raises(DataError, match="not available"):
        load_dataset(name, tmp_path / "missing", split="train")


def test_imagenet32_npz_layout(tmp_path):
    data = np.arange(4 * 3072, dtype=np.int64).reshape(4, 3072) % 256
    np.savez(tmp_path / "train_data_batch_1.npz", data=data.astype(np.uint8), labels=np.array([1, 2, 1000, 5]))
    np.savez(tmp_path / "train_data_batch_2.npz", data=data[:1].astype(np.uint8), labels=np.array([7]))
    s = load_dataset("imagenet32", tmp_path, split="train")
    assert s.images.shape == (5, 3, 32, 32) and s.labels.tolist() == [0, 1, 999, 4, 6]
    assert s.images[0, 1, 0, 0] == 1024 % 256 and s.images[0, 0, 0, 1] == 1  # channel-major rows of 32x32
    assert load_dataset("imagenet-32", tmp_path, image_size=16).images.shape == (5, 3, 16, 16)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("mnist", "/tmp")
