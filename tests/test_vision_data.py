"""oe_vision data: synthetic anomaly generators and the real loaders on $OE_DATA_DIR."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from oe_common.experiments.data_dir import MissingDataError
from oe_vision import data as D
from oe_vision import synthetic as S

# ------------------------------------------------------------------------------------------------ synthetic


def _clipped_normal_std(a: float = 1.0) -> float:
    """Std of clip(Z, -a, a) for standard normal Z (then scaled by sigma)."""
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + math.erf(a / math.sqrt(2)))
    inside = (2 * cdf - 1) - 2 * a * phi  # integral of z^2 phi(z) over [-a, a]
    return math.sqrt(inside + 2 * a * a * (1 - cdf))


def test_gaussian_statistics():
    x = S.generate("gaussian", 3000, seed=0, shape=(1, 28, 28))
    assert x.shape == (3000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert abs(x.mean().item() - 0.5) < 0.003
    assert abs(x.std().item() - 0.5 * _clipped_normal_std(1.0)) < 0.003  # 0.359
    tail = 0.5 * (1 - math.erf(1 / math.sqrt(2)))  # P(Z > 1) = 0.1587 clipped to each end
    assert abs((x == 0).float().mean().item() - tail) < 0.003 and abs((x == 1).float().mean().item() - tail) < 0.003
    c = S.generate("gaussian", 800, seed=0, shape=(3, 32, 32), mean=0.0, low=-1.0, high=1.0)  # the CIFAR set
    assert c.min() == -1.0 and c.max() == 1.0 and abs(c.mean().item()) < 0.003


def test_bernoulli_and_rademacher_statistics():
    b = S.generate("bernoulli", 3000, seed=1)
    assert set(b.unique().tolist()) == {0.0, 1.0}
    assert abs(b.mean().item() - 0.5) < 0.003
    assert abs(S.generate("bernoulli", 2000, seed=1, p=0.2).mean().item() - 0.2) < 0.003
    r = S.generate("rademacher", 800, seed=1, shape=(3, 32, 32))
    assert r.shape == (800, 3, 32, 32) and set(r.unique().tolist()) == {-1.0, 1.0}
    assert abs((r == 1).float().mean().item() - 0.5) < 0.003 and abs(r.mean().item()) < 0.006


def test_blobs():
    x = S.generate("blobs", 1500, seed=2, shape=(1, 28, 28))
    nonzero = x[x > 0]
    assert nonzero.min() >= 0.75 and x.max() <= 1.0 and x.min() == 0.0
    # blurred Bernoulli(0.7) ~ N(0.7, 0.21 * sum w^2): about 30 % of pixels clear the 0.75 threshold
    assert 0.25 < (x > 0).float().mean().item() < 0.36
    # blobs are spatially smooth: neighbours agree on zero / non-zero far more often than for i.i.d. pixels
    on = x > 0
    agree = (on[..., :, 1:] == on[..., :, :-1]).float().mean().item()
    frac = on.float().mean().item()
    assert agree > 0.85 and agree > frac**2 + (1 - frac) ** 2 + 0.2
    signed = S.generate("blobs", 200, seed=2, shape=(3, 32, 32), signed=True)
    values = signed[signed > -1]
    assert signed.min() == -1.0 and values.min() >= 0.5 and signed.max() <= 1.0


def test_blur_is_torchvision_gaussian_blur():
    from torchvision.transforms.v2.functional import gaussian_blur

    x = torch.rand(7, 3, 32, 32)
    assert S.blur_kernel_size(1.5) == 11
    assert torch.allclose(S.gaussian_blur(x, 1.5), gaussian_blur(x, kernel_size=[11, 11], sigma=[1.5, 1.5]), atol=1e-5)


@pytest.mark.parametrize("kind,shape,params", [
    ("gaussian", (1, 28, 28), {}),
    ("uniform", (1, 28, 28), {}),
    ("bernoulli", (1, 28, 28), {}),
    ("rademacher", (3, 32, 32), {}),
    ("blobs", (3, 32, 32), {"signed": True}),
])
def test_synthetic_determinism_and_dataset(kind, shape, params):
    a = S.generate(kind, 40, 7, shape, **params)
    assert torch.equal(a, S.generate(kind, 40, 7, shape, **params))  # same seed: identical
    assert not torch.equal(a, S.generate(kind, 40, 8, shape, **params))  # another seed: different
    assert torch.equal(a[:10], S.generate(kind, 10, 7, shape, **params))  # example i does not depend on n
    ds = S.SyntheticImageDataset(kind, 40, 7, shape, **params)
    assert len(ds) == 40
    for i in (0, 17, 39, -1):
        x, y = ds[i]
        assert torch.equal(x, a[i]) and y == -1
    assert torch.equal(ds.materialize(), a)
    with pytest.raises(IndexError):
        ds[40]


def test_synthetic_kinds_independent_and_validated():
    g = S.generate("bernoulli", 5, 0)
    assert not torch.equal(g, S.generate("blobs", 5, 0, p=0.5, sigma=1e-3, threshold=0.5))
    with pytest.raises(ValueError, match="unknown"):
        S.generate("poisson", 3, 0)
    with pytest.raises(ValueError, match="shape"):
        S.generate("gaussian", 3, 0, shape=(0, 28, 28))
    with pytest.raises(ValueError, match="p must"):
        S.SyntheticImageDataset("bernoulli", 3, 0, p=1.5)


# ------------------------------------------------------------------------------------------------ IDX sets


def test_read_idx_checks_header(tmp_path):
    bad = tmp_path / "bad-idx.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x0d\x03" + (2).to_bytes(4, "big") + b"\x00" * 16)  # type 0x0d (float), not uint8
    with pytest.raises(ValueError, match="IDX"):
        D.read_idx(bad)
    short = tmp_path / "short-idx"
    short.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match="header says"):
        D.read_idx(short)


def test_mnist(data_dir):
    train, test = D.mnist_in_distribution(data_dir)
    assert len(train) == 60_000 and len(test) == 10_000
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert test.labels.tolist()[:5] == [7, 2, 1, 0, 4]  # the well-known first test digits
    assert torch.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    raw = test.images.float()
    assert abs(raw.mean().item() - 33.8) < 0.2  # README: mean pixel 33.8
    # white digits on black: the frame is background (0) and the centre is bright
    frame = torch.cat([raw[:, 0, :2].flatten(), raw[:, 0, -2:].flatten(), raw[:, 0, :, :2].flatten(), raw[:, 0, :, -2:].flatten()])
    assert frame.mean().item() < 0.5 and raw[:, 0, 10:18, 10:18].mean().item() > 80
    batch = next(iter(DataLoader(test, batch_size=8, collate_fn=D.image_collate)))
    assert batch["pixel_values"].shape == (8, 1, 28, 28) and batch["labels"].tolist() == test.labels[:8].tolist()


def test_fashion_and_notmnist(data_dir):
    fashion = D.load_idx_corpus("fashion_mnist", "test", data_dir)
    notmnist = D.load_idx_corpus("notmnist", "test", data_dir)
    for ds in (fashion, notmnist):
        assert len(ds) == 10_000 and ds.images.shape == (10_000, 1, 28, 28)
        assert torch.bincount(ds.labels).tolist() == [1000] * 10
        x, _ = ds[0]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert abs(notmnist.images.float().mean().item() - 108.8) < 0.5  # README: notMNIST backgrounds are not 0
    with pytest.raises(MissingDataError, match="train-images-idx3-ubyte.gz"):
        D.load_idx_corpus("fashion_mnist", "train", data_dir)  # only the test split is in the data directory


def test_omniglot_orientation(data_dir):
    omni = D.load_omniglot(data_dir)
    assert len(omni) == 5840 and int(omni.labels.max()) + 1 == 242
    native, label = omni[0]
    assert native.shape == (1, 105, 105) and label == 0
    assert native.mean() > 0.8  # native: black strokes on a white background
    sets = D.mnist_ood_sets(data_dir, n=300, seed=0)
    xs = torch.stack([sets["omniglot"][i][0] for i in range(300)])
    assert xs.shape == (300, 1, 28, 28)
    # inverted: bright strokes on black, like MNIST
    assert xs.mean() < 0.2 and xs[..., 0, :].mean() < 0.02 and xs.amax(dim=(1, 2, 3)).min() > 0.5


def test_isun_parts(data_dir):
    full = D.load_isun(data_dir)
    assert len(full) == 8925 and full.images.shape == (8925, 3, 32, 32) and full.images.dtype == torch.uint8
    x, y = full[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == D.OOD_LABEL
    test, oe = D.load_isun(data_dir, part="test"), D.load_isun(data_dir, part="oe")
    assert len(test) == D.ISUN_TEST_SIZE == 2000 and len(oe) == 6921
    # the parts are a partition of the full set (compare images as rows of bytes)
    rows = lambda ds: {bytes(img.numpy().tobytes()) for img in ds.images}  # noqa: E731
    r_test, r_oe = rows(test), rows(oe)
    assert len(rows(full)) == 8921  # the archive holds 4 pixel-identical duplicates; the parts keep each once
    assert len(r_test) == 2000 and len(r_oe) == 6921 and not (r_test & r_oe) and r_test | r_oe == rows(full)
    assert torch.equal(D.load_isun(data_dir, part="test").images, test.images)  # fixed split


# ------------------------------------------------------------------------------------------------ experiment sets


def _stack(ds, k):
    xs, ys = zip(*(ds[i] for i in range(k)))
    return torch.stack(xs), list(ys)


def test_mnist_ood_sets(data_dir):
    sets = D.mnist_ood_sets(data_dir, n=150, seed=3)
    assert tuple(sets) == D.MNIST_OOD_NAMES
    for name, ds in sets.items():
        assert len(ds) == 150, name
        xs, ys = _stack(ds, 20)
        assert xs.shape == (20, 1, 28, 28) and xs.dtype == torch.float32, name
        assert xs.min() >= 0 and xs.max() <= 1, name
        assert set(ys) == {D.OOD_LABEL}, name
    # negative MNIST is 1 - x of the MNIST test image with the same index
    mnist_test = D.load_idx_corpus("mnist", "test", data_dir)
    neg = sets["negative_mnist"]
    assert isinstance(neg, Subset)
    j = neg.indices[0]
    assert torch.allclose(neg[0][0], 1 - mnist_test[j][0], atol=1e-6)
    # seeds: same seed, same draw; another seed, another draw
    again = D.mnist_ood_sets(data_dir, n=150, seed=3)
    other = D.mnist_ood_sets(data_dir, n=150, seed=4)
    assert torch.equal(again["gaussian"][5][0], sets["gaussian"][5][0]) and again["notmnist"].indices == sets["notmnist"].indices
    assert not torch.equal(other["gaussian"][5][0], sets["gaussian"][5][0]) and other["notmnist"].indices != sets["notmnist"].indices
    full = D.mnist_ood_sets(data_dir)
    assert {k: len(v) for k, v in full.items()} == {
        "gaussian": 10_000, "bernoulli": 10_000, "blobs": 10_000, "isun_gray": 2000,
        "fashion_mnist": 10_000, "negative_mnist": 10_000, "notmnist": 10_000, "omniglot": 5840,
    }
    with pytest.raises(ValueError, match="cannot draw"):
        D.mnist_ood_sets(data_dir, n=2001)  # isun_gray has 2,000


def test_mnist_oe_source(data_dir, monkeypatch):
    monkeypatch.delenv(D.CIFAR10_ENV, raising=False)
    oe = D.mnist_oe_source(data_dir)  # auto: no CIFAR-10 in the shared data dir -> iSUN
    assert oe.name == "oe:isun-oe-gray28" and len(oe) == 6921
    x, y = oe[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1 and y == D.OOD_LABEL
    # disjoint from the isun_gray test set
    test_rows = {bytes(img.numpy().tobytes()) for img in D.load_isun(data_dir, part="test").images}
    assert not any(bytes(img.numpy().tobytes()) in test_rows for img in oe.images)
    with pytest.raises(MissingDataError, match="fetch.py"):
        D.mnist_oe_source(data_dir, source="cifar10")


def test_cifar10_ood_sets(data_dir):
    sets = D.cifar10_ood_sets(data_dir, n=60, seed=0)
    assert tuple(sets) == D.CIFAR10_OOD_NAMES
    mean = torch.tensor(D.CIFAR10_MEAN)[:, None, None]
    std = torch.tensor(D.CIFAR10_STD)[:, None, None]
    for name, ds in sets.items():
        xs, ys = _stack(ds, 10)
        assert xs.shape == (10, 3, 32, 32) and xs.dtype == torch.float32 and set(ys) == {D.OOD_LABEL}, name
        if name in ("gaussian", "rademacher", "blobs"):
            assert xs.min() >= -1 and xs.max() <= 1, name
        else:  # real images: standardised; undoing it gives [0, 1] and three equal (gray) channels
            pixels = xs * std + mean
            assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5, name
            assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5) and torch.allclose(pixels[:, 0], pixels[:, 2], atol=1e-5)
    assert set(_stack(sets["rademacher"], 5)[0].unique().tolist()) == {-1.0, 1.0}
    mnist_pixels = _stack(sets["mnist"], 10)[0] * std + mean
    assert mnist_pixels[..., 0, :].max() < 0.05  # still white on black after resizing to 32


def test_cifar10_oe_source(data_dir):
    oe = D.cifar10_oe_source(data_dir)
    assert len(oe) == 6921
    x, y = oe[0]
    assert x.shape == (3, 32, 32) and y == D.OOD_LABEL
    xs = torch.stack([oe[i][0] for i in range(300)])
    # standardised with the CIFAR statistics (iSUN's own statistics are close, not equal)
    assert xs.mean().abs() < 0.6 and 0.6 < xs.std() < 1.5


def test_image_transform_augment():
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[:, :, :16] = 255  # left half white
    t = D.image_transform(size=32, augment=True)
    torch.manual_seed(0)
    outs = torch.stack([t(img) for _ in range(40)])
    assert outs.shape == (40, 3, 32, 32)
    left = outs[:, 0, 16, 8]
    assert (left == 1).any() and (left == 0).any()  # some outputs flipped
    assert (outs[:, 0, 0, :] == 0).all(dim=-1).any()  # some crops padded with zeros at the top


# ------------------------------------------------------------------------------------------------ CIFAR-10 & folders


def _write_cifar_format(folder, per_file: int = 4):
    """A tiny FORMAT fixture (not data): 6 npz files in fetch.py's layout, pixel values encode the file index."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(D.CIFAR10_FILES):
        images = np.zeros((per_file, 32, 32, 3), np.uint8)
        images[..., 0], images[..., 1], images[..., 2] = 10 + k, 100, 200  # R, G, B
        np.savez_compressed(folder / name, images=images, labels=np.arange(per_file, dtype=np.int64) + k)


def test_cifar10_loader_format_and_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(D.CIFAR10_ENV, raising=False)
    folder = tmp_path / "c10"
    _write_cifar_format(folder)
    train = D.load_cifar10("train", cifar_dir=folder)
    test = D.load_cifar10("test", cifar_dir=folder)
    assert len(train) == 20 and len(test) == 4
    x, y = test[0]
    assert x.shape == (3, 32, 32) and y == 5
    assert torch.allclose(x[:, 0, 0], torch.tensor([15, 100, 200]) / 255)  # HWC -> CHW keeps R, G, B order
    monkeypatch.setenv(D.CIFAR10_ENV, str(folder))
    assert D.resolve_cifar10_dir() == folder and D.cifar10_available()
    assert D.mnist_oe_source(source="auto", data_dir=tmp_path).name == "oe:cifar10-train-gray28"


def test_missing_data_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(D.CIFAR10_ENV, raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError, match="t10k-images-idx3-ubyte.gz"):
        D.load_idx_corpus("mnist", "test", data_dir=empty)
    with pytest.raises(MissingDataError, match="iSUN.tar.gz"):
        D.load_isun(data_dir=empty)
    with pytest.raises(MissingDataError, match="images_background_small1.zip"):
        D.load_omniglot(data_dir=empty)
    with pytest.raises(MissingDataError, match="fetch.py"):
        D.load_cifar10("train", cifar_dir=empty)
    with pytest.raises(MissingDataError, match=D.CIFAR10_ENV):
        D.load_cifar10("test", data_dir=empty)
    monkeypatch.setenv(D.CIFAR10_ENV, str(empty))
    with pytest.raises(MissingDataError, match=D.CIFAR10_ENV):
        D.resolve_cifar10_dir()
    assert not D.cifar10_available()
    with pytest.raises(MissingDataError):
        D.load_svhn(empty)
    with pytest.raises(MissingDataError):
        D.load_cifar100(empty)
    with pytest.raises(MissingDataError, match="does not exist"):
        D.load_image_folder(tmp_path / "nope", name="textures")
    with pytest.raises(MissingDataError, match="no image files"):
        D.load_image_folder(empty, name="lsun")
    monkeypatch.delenv("OE_DATA_DIR", raising=False)
    with pytest.raises(MissingDataError, match="OE_DATA_DIR"):
        D.load_idx_corpus("mnist", "test")


def test_image_folder_and_extra_roots(tmp_path, data_dir):
    folder = tmp_path / "textures" / "banded"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(folder / f"img{i}.jpg")
    (folder / "notes.txt").write_text("not an image")
    ds = D.load_image_folder(tmp_path / "textures", name="textures")
    assert len(ds) == 3 and ds[0][0].shape == (3, 40, 48) and ds[0][1] == D.OOD_LABEL
    sets = D.cifar10_ood_sets(data_dir, n=3, extra_roots={"textures": tmp_path / "textures"})
    x, y = sets["textures"][2]
    assert x.shape == (3, 32, 32) and y == D.OOD_LABEL


def test_cifar10_real_when_available(monkeypatch):
    """Runs only where CIFAR-10 has been fetched (``$OE_CIFAR10_DIR``); CI does not need it."""
    if not D.cifar10_available():
        pytest.skip(f"CIFAR-10 not fetched (set {D.CIFAR10_ENV} after `python <data_dir>/cifar10/fetch.py DIR`)")
    train, test = D.cifar10_in_distribution()
    assert len(train) == 50_000 and len(test) == 10_000
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # torchvision's CIFAR10 test order
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    xs = torch.stack([test[i][0] for i in range(1000)])
    assert xs.mean((0, 2, 3)).abs().max() < 0.1 and (xs.std((0, 2, 3)) - 1).abs().max() < 0.1  # standardised
