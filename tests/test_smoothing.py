"""Noise sampling and class counts for randomized-smoothing certification (CPU, seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from robustreg import smoothing
from robustreg.io import image_ids
from robustreg.models import create_model
from robustreg.smoothing import certify_counts, evaluated_in, image_generator, sample_counts

K = 10


class PixelArgmax(nn.Module):
    """Logits = the first K pixels of row 0 of channel 0, read through an exact 1x1 conv.

    Its prediction moves with every noise draw, and it is exactly batch-invariant, so any
    difference in counts is a difference in noise. The conv puts it on the NHWC path.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = K):
        super().__init__()
        self.num_classes = num_classes
        self.pick = nn.Conv2d(in_chans, 1, kernel_size=1)
        with torch.no_grad():
            self.pick.weight.zero_()
            self.pick.weight[0, 0] = 1.0
            self.pick.bias.zero_()

    def forward(self, x):
        return self.pick(x)[:, 0, 0, : self.num_classes]


class FixedLogits(nn.Module):
    def __init__(self, winner: int, num_classes: int = K):
        super().__init__()
        logits = torch.linspace(-1.0, 0.0, num_classes)
        logits[winner] = 5.0
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


class PixelSign(nn.Module):
    """Class 1 iff the pixel at (channel 0, row 5, column 5) is positive, else class 0."""

    def forward(self, x):
        v = x[:, 0, 5, 5]
        return torch.stack([-v, v], dim=1)


def _images(num: int, chans: int = 3, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand((num, chans, size, size), generator=torch.Generator().manual_seed(seed))


def _gens(seed: int, indices) -> list[torch.Generator]:
    return [image_generator(seed, int(i), "cpu") for i in indices]


def _certify(model, images, n0=20, n=130, batch_size=64, seed=0, **kwargs):
    labels = np.zeros(images.shape[0], dtype=np.int64)
    return certify_counts(
        model, images, labels, sigma=0.5, n0=n0, n=n, batch_size=batch_size, seed=seed,
        device="cpu", num_classes=K, progress=False, **kwargs,
    )  # fmt: skip


def test_certify_counts_shapes_and_totals_on_lenet():
    model = create_model("lenet_mnist", K)
    images = _images(3, chans=1, size=28)
    out = _certify(model, images, n0=7, n=50, batch_size=16)
    assert out["counts0"].shape == out["counts"].shape == (3, K)
    assert out["counts0"].dtype == out["counts"].dtype == np.int64
    np.testing.assert_array_equal(out["counts0"].sum(1), [7, 7, 7])
    np.testing.assert_array_equal(out["counts"].sum(1), [50, 50, 50])
    np.testing.assert_array_equal(out["idx"], [0, 1, 2])
    np.testing.assert_array_equal(out["label"], [0, 0, 0])
    assert out["seconds"].shape == (3,) and np.all(out["seconds"] > 0)


def test_sample_counts_sum_to_num():
    counts = sample_counts(PixelArgmax(), _images(4), 0.25, 77, K, 32, _gens(0, range(4)))
    assert counts.shape == (4, K) and counts.dtype == torch.int64
    assert counts.sum(1).tolist() == [77] * 4


def test_same_seed_same_counts_different_seed_different_counts():
    images = _images(3)
    first = _certify(PixelArgmax(), images, seed=1)
    again = _certify(PixelArgmax(), images, seed=1)
    other = _certify(PixelArgmax(), images, seed=2)
    for key in ("counts0", "counts"):
        np.testing.assert_array_equal(first[key], again[key])
        assert (first[key] > 0).sum() > 3 * 3  # the model's output is far from constant
        assert not np.array_equal(first[key], other[key])


def test_lenet_counts_deterministic_for_same_seed_and_batch_size():
    model = create_model("lenet_mnist", K)
    images = _images(2, chans=1, size=28)
    first = _certify(model, images, n0=10, n=300, batch_size=128, seed=3)
    again = _certify(model, images, n0=10, n=300, batch_size=128, seed=3)
    np.testing.assert_array_equal(first["counts0"], again["counts0"])
    np.testing.assert_array_equal(first["counts"], again["counts"])


def test_counts_do_not_depend_on_packing():
    images = _images(5)
    model = PixelArgmax()
    alone = _certify(model, images, images_per_batch=1)
    for per_batch in (2, 5, None):
        packed = _certify(model, images, images_per_batch=per_batch)
        np.testing.assert_array_equal(packed["counts0"], alone["counts0"])
        np.testing.assert_array_equal(packed["counts"], alone["counts"])


def test_image_counts_do_not_depend_on_batch_neighbours():
    images = _images(4)
    model = PixelArgmax()
    # num below batch_size: all four images share each forward pass
    together = sample_counts(model, images, 0.5, 30, K, 128, _gens(9, range(4)))
    for i in range(4):
        alone = sample_counts(model, images[i : i + 1], 0.5, 30, K, 128, _gens(9, [i]))
        torch.testing.assert_close(alone[0], together[i], rtol=0, atol=0)


def test_resuming_at_an_index_reproduces_its_counts():
    images = _images(6)
    full = _certify(PixelArgmax(), images, seed=4)
    tail = _certify(PixelArgmax(), images[4:], seed=4, indices=[4, 5])
    np.testing.assert_array_equal(tail["idx"], [4, 5])
    np.testing.assert_array_equal(tail["counts0"], full["counts0"][4:])
    np.testing.assert_array_equal(tail["counts"], full["counts"][4:])


def test_constant_model_puts_every_count_on_its_class():
    out = _certify(FixedLogits(winner=3), _images(2))
    expected0 = np.zeros((2, K), dtype=np.int64)
    expected0[:, 3] = 20
    expected = np.zeros((2, K), dtype=np.int64)
    expected[:, 3] = 130
    np.testing.assert_array_equal(out["counts0"], expected0)
    np.testing.assert_array_equal(out["counts"], expected)


@pytest.mark.parametrize(("value", "sigma"), [(0.1, 0.25), (0.3, 1.0)])
def test_sign_of_one_pixel_follows_the_normal_cdf(value, sigma):
    # P(value + N(0, sigma^2) > 0) = Phi(value / sigma), independently of the sampler's code
    n = 20000
    image = torch.full((1, 1, 10, 10), value)
    counts = sample_counts(PixelSign(), image, sigma, n, 2, 1000, _gens(5, [0]))[0]
    p = 0.5 * (1.0 + math.erf(value / sigma / math.sqrt(2.0)))
    stderr = math.sqrt(p * (1.0 - p) / n)
    assert abs(counts[1].item() / n - p) < 5 * stderr


def test_uint8_images_are_scaled_to_unit_interval():
    pixels = torch.randint(0, 256, (2, 1, 10, 10), dtype=torch.uint8)
    pixels[:, 0, 5, 5] = 26  # 0.102 once scaled; unscaled, the sign would never flip
    labels = np.zeros(2, dtype=np.int64)
    kwargs = dict(sigma=0.25, n0=50, n=2000, batch_size=500, seed=0, device="cpu",
                  num_classes=2, progress=False)  # fmt: skip
    from_uint8 = certify_counts(PixelSign(), pixels, labels, **kwargs)
    from_float = certify_counts(PixelSign(), pixels.float() / 255.0, labels, **kwargs)
    np.testing.assert_array_equal(from_uint8["counts"], from_float["counts"])
    assert np.all(from_uint8["counts"][:, 0] > 300)


def test_model_left_as_it_was_given():
    model = create_model("lenet_mnist", K).train()
    weight = model[1][0].weight
    before = weight.detach().clone()
    _certify(model, _images(1, chans=1, size=28), n0=5, n=20, batch_size=8)
    assert model.training
    assert model[1][0].weight is weight and weight.is_contiguous()
    torch.testing.assert_close(weight.detach(), before, rtol=0, atol=0)


def test_image_generator_reproducible_and_distinct_per_index():
    def draw(seed, index):
        return torch.randn(5, generator=image_generator(seed, index, "cpu"))

    torch.testing.assert_close(draw(0, 7), draw(0, 7), rtol=0, atol=0)
    assert not torch.equal(draw(0, 7), draw(0, 8))
    assert not torch.equal(draw(0, 7), draw(1, 7))


def test_image_ids_default_indices_tensor_labels_and_mismatch():
    idx, label = image_ids(3, None, torch.tensor([4, 5, 6]))
    assert idx.tolist() == [0, 1, 2] and label.dtype == np.int64 and label.tolist() == [4, 5, 6]
    assert image_ids(2, [7, 9], np.array([1, 2]))[0].tolist() == [7, 9]
    with pytest.raises(ValueError, match="need one label and one index per image"):
        certify_counts(
            nn.Flatten(),
            torch.zeros(2, 1, 2, 2),
            [0],
            sigma=0.1,
            n0=1,
            n=1,
            batch_size=1,
            seed=0,
            device="cpu",
            num_classes=4,
        )


class Autocast(nn.Module):
    """``inner`` evaluated under bfloat16 autocast on the CPU, built by hand: what
    ``precision="bf16"`` must amount to."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.inner(x).float()


def _lenet_counts(model, precision: str) -> np.ndarray:
    images = torch.rand((3, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    result = certify_counts(
        model,
        images,
        [0, 1, 2],
        sigma=0.25,
        n0=10,
        n=300,
        batch_size=100,
        seed=0,
        device="cpu",
        num_classes=K,
        progress=False,
        precision=precision,
    )
    return np.stack([result["counts0"], result["counts"]])


def test_bf16_precision_is_autocast_of_the_same_noisy_samples():
    torch.manual_seed(0)
    model = create_model("lenet_mnist", K)
    bf16 = _lenet_counts(model, "bf16")
    by_hand = _lenet_counts(Autocast(model), "fp32")
    np.testing.assert_array_equal(bf16, by_hand)
    # a different classifier: its counts differ somewhere from fp32's, but the top class holds
    fp32 = _lenet_counts(model, "fp32")
    assert (bf16.sum(axis=-1) == fp32.sum(axis=-1)).all()
    np.testing.assert_array_equal(bf16[1].argmax(1), fp32[1].argmax(1))


def test_fp32_precision_turns_tf32_off_for_its_duration_only():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    with evaluated_in("fp32", "cpu"):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with (
        pytest.raises(ValueError, match="precision: 'fp16' is not one of fp32, bf16"),
        evaluated_in("fp16", "cpu"),
    ):
        pass


def test_cpu_slices_of_a_batch_give_the_counts_of_one_forward_pass(monkeypatch):
    torch.manual_seed(0)
    model = create_model("lenet_mnist", K)
    images = torch.rand((2, 1, 28, 28), generator=torch.Generator().manual_seed(3))

    def counts():
        gens = [image_generator(0, i, "cpu") for i in range(2)]
        return sample_counts(model, images, 0.5, 1200, K, 1200, gens)

    sliced = counts()
    monkeypatch.setattr(smoothing, "CPU_SLICE", 10**6)
    np.testing.assert_array_equal(sliced.numpy(), counts().numpy())
