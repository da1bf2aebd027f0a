"""The integer hyper-synthesis: exact, independent of threads and batch, close to float h_s."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import tica
from tica.nn import integer
from tica.nn.integer import IntegerHyperSynthesis


def _int64_reference(int_hs: IntegerHyperSynthesis, z: torch.Tensor) -> torch.Tensor:
    """The same network in int64 arithmetic (im2col + integer matmul), slow but obviously exact."""
    x = z.long()
    for i, layer in enumerate(int_hs.layers):
        w, b = layer.weight.long(), layer.bias.long()
        if layer.transposed:   # transposed conv == conv over a zero-stuffed input, flipped kernel
            B, C, H, W = x.shape
            s = layer.stride
            up = torch.zeros(B, C, (H - 1) * s + 1, (W - 1) * s + 1, dtype=torch.long)
            up[:, :, ::s, ::s] = x
            k = w.shape[-1]
            lo, hi = k - 1 - layer.padding, k - 1 - layer.padding + layer.output_padding
            x, w, stride, pad = F.pad(up, (lo, hi, lo, hi)), w.flip(-1, -2).transpose(0, 1), 1, 0
        else:
            stride, pad = layer.stride, layer.padding
        k = w.shape[-1]
        cols = F.unfold(x.double(), k, padding=pad, stride=stride).long()   # exact: small ints
        out_h = (x.shape[2] + 2 * pad - k) // stride + 1
        acc = (w.reshape(w.shape[0], -1) @ cols).reshape(x.shape[0], w.shape[0], out_h, -1)
        acc = acc + b.view(1, -1, 1, 1)
        e = layer.exponent.view(1, -1, 1, 1)
        if i == len(int_hs.layers) - 1:
            return acc.double() / torch.pow(2.0, e.double())
        shift = e - layer.act_frac_bits
        acc = acc.clamp_min(0)
        x = torch.where(shift >= 0, acc >> shift.clamp_min(0), acc << (-shift).clamp_min(0))
        x = x.clamp(max=2 ** layer.act_bits - 1)


def _trained_like_h_s():
    model = tica.create_model("tica-cifar", N=32, M=48).eval()
    return model.h_s


@pytest.fixture(params=["float64", "int8", "float32"])
def gemm(request, monkeypatch):
    """Each CPU path in turn: float64 convolutions, or products of digits as int8 or as
    float32 matrix products."""
    monkeypatch.setenv(integer.GEMM_ENV, request.param)
    return request.param


def test_matches_an_int64_reference_exactly(gemm):
    h_s = _trained_like_h_s()
    int_hs = IntegerHyperSynthesis.build(h_s)
    z = torch.randint(-20, 21, (2, 32, 5, 3)).double()
    z[0, 0, 0, 0], z[1, 5, 4, 2] = 2 ** 12 - 1, -(2 ** 12 - 1)        # z at its limits
    assert integer.digit_gemm()[0] == (None if gemm == "float64" else gemm)
    assert torch.equal(int_hs(z), _int64_reference(int_hs, z))


@pytest.mark.parametrize("widths", [(7, 8, 20), (7, 5, 7), (10, 3, 9)])
def test_a_narrow_integer_h_s_is_exact_and_is_what_its_training_sees(gemm, widths):
    """A model's narrower h_s (ModelConfig.hs_format): weights and activations within their
    widths, exact against the int64 reference on every CPU path (7, 5, 7: one int8 digit
    each), and the float h_s quantized as it is (quantized_h_s, what training runs) within
    float rounding of it, where the unquantized float h_s is not."""
    from tica.nn.integer import quantized_h_s
    weight_bits, frac_bits, act_bits = widths
    h_s = _trained_like_h_s().double()
    int_hs = IntegerHyperSynthesis.build(h_s, *widths)
    assert all(int(l.weight.abs().max()) < 2 ** weight_bits for l in int_hs.layers)
    assert int(int_hs.layers[0].weight.abs().max()) >= 2 ** (weight_bits - 1)   # the range used
    z = torch.randint(-4, 5, (3, 32, 5, 3)).double()
    exact = int_hs(z)
    assert torch.equal(exact, _int64_reference(int_hs, z))
    with torch.no_grad():
        trained = quantized_h_s(h_s, z, *widths)
        plain = h_s(z)
    # in float64 every value is a dyadic number the sums hold exactly: the same numbers
    assert torch.equal(trained, exact) and not torch.equal(plain, exact)
    with pytest.raises(ValueError, match="widths"):
        IntegerHyperSynthesis.build(h_s, 15, 8, 20)


def test_quantization_aware_h_s_passes_gradients_straight_through():
    from tica.nn.integer import quantized_h_s
    h_s = _trained_like_h_s().train()
    z = torch.randint(-4, 5, (2, 32, 4, 4)).float()
    quantized_h_s(h_s, z, 7, 5, 7).square().mean().backward()
    for layer in (h_s[0], h_s[2], h_s[4]):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_a_model_with_a_narrow_h_s_codes_exactly_and_keeps_old_ids():
    """hs_* fields at their defaults leave the config's identity (and every shipped id) as it
    was; narrowed, the model trains through the quantized h_s and its streams decode to the
    encoder's latent exactly."""
    from tica.config import ModelConfig
    from tica.errors import ConfigError
    base = tica.create_model("tica-cifar", N=32, M=48).eval()
    assert "hs_weight_bits" not in base.config.identity_json()
    narrow = tica.create_model("tica-cifar", N=32, M=48, hs_weight_bits=7, hs_act_frac_bits=5,
                               hs_act_bits=7).eval()
    assert '"hs_act_bits":7' in narrow.config.identity_json()
    narrow.update()
    assert [l.act_bits for l in narrow.integer_h_s.layers] == [7, 7, 7]
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    payloads = narrow.compress(x)
    assert torch.equal(narrow.decompress(payloads, (32, 32)), narrow.latent(x))
    z = torch.randint(-3, 4, (2, 32, 4, 4)).float()
    from tica.nn.integer import quantized_h_s
    assert torch.equal(narrow.hyper_synthesis(z), quantized_h_s(narrow.h_s, z, 7, 5, 7))
    assert torch.equal(base.hyper_synthesis(z), base.h_s(z))
    for bad in ({"hs_weight_bits": 15}, {"hs_act_bits": 0},
                {"hs_act_frac_bits": 9, "hs_act_bits": 7}, {"hs_mid": -1}, {"hs_kernel": 2},
                {"hs_first_kernel": 4}, {"hs_mid_kernel": 4}, {"hs_mid_kernel": 1}):
        with pytest.raises(ConfigError, match="hs_"):
            ModelConfig(name="x", **bad)


@pytest.mark.parametrize("digit_gemm", integer.DIGIT_GEMMS)
def test_an_h_s_of_another_shape_codes_exactly(digit_gemm, monkeypatch):
    """hs_mid, hs_kernel, hs_first_kernel and hs_mid_kernel reshape h_s (a 1x1 last layer, a
    narrower hidden layer, a 3x3 first layer, a 3x3 transposed one): the defaults keep every
    id, and a reshaped model's streams decode to the encoder's latent exactly, on digit
    products and on float64 alike."""
    identity = tica.create_model("tica-cifar", N=32, M=48).config.identity_json()
    assert "hs_mid" not in identity and "hs_first_kernel" not in identity
    model = tica.create_model("tica-cifar", N=32, M=48, hs_mid=24, hs_kernel=1, hs_first_kernel=3,
                              hs_mid_kernel=3, hs_weight_bits=7, hs_act_frac_bits=5,
                              hs_act_bits=7).eval()
    assert '"hs_kernel":1' in model.config.identity_json()
    assert '"hs_first_kernel":3' in model.config.identity_json()
    assert '"hs_mid_kernel":3' in model.config.identity_json()
    convs = [m for m in model.h_s if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].weight.shape == (48, 32, 3, 3) and convs[-1].weight.shape == (96, 24, 1, 1)
    deconv = next(m for m in model.h_s if isinstance(m, torch.nn.ConvTranspose2d))
    assert deconv.weight.shape == (48, 24, 3, 3)
    z = torch.zeros(1, 32, 3, 5)
    assert model.h_s(z).shape == (1, 96, 6, 10)                     # the grid doubled exactly
    model.update()
    x = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    payloads = model.compress(x)
    expected = model.latent(x)
    for gemm in (digit_gemm, None):
        monkeypatch.setattr(integer, "digit_gemm", lambda: (gemm, 4.0))
        assert torch.equal(model.decompress(payloads, (32, 48)), expected)


@pytest.mark.parametrize("digit_gemm", integer.DIGIT_GEMMS)
def test_digit_products_are_exact_at_the_worst_case_magnitudes(digit_gemm):
    """Weights at +-(2^14 - 1), hidden activations up to 2^20 - 1 and z at +-(2^12 - 1):
    each layer's digit product, int8 or float32 (the transposed one by phases, odd and
    non-square grids; a 3x3 transposed one too, whose phases have 4, 2 and 1 taps) equals the
    float64 convolution, bit for bit."""
    g = torch.Generator().manual_seed(3)
    small = tica.create_model("tica-cifar", N=32, M=48, hs_mid_kernel=3, hs_first_kernel=3).h_s
    layers = (IntegerHyperSynthesis.build(_trained_like_h_s()).layers
              + IntegerHyperSynthesis.build(small).layers[:2])
    for layer in layers:
        w = layer.weight.clone()
        w.view(-1)[:: 7] = 2 ** 14 - 1
        w.view(-1)[3:: 11] = -(2 ** 14 - 1)
        layer = dataclasses.replace(layer, weight=w, limbs={})
        c_in = w.shape[0] if layer.transposed else w.shape[1]
        for first in (True, False):
            if first:
                x = torch.randint(-(2 ** 12 - 1), 2 ** 12, (2, c_in, 5, 3), generator=g)
            else:
                x = torch.randint(0, 2 ** 20, (2, c_in, 4, 7), generator=g)
                x[0, 0] = 2 ** 20 - 1
            x = x.double()
            expected = (F.conv_transpose2d(x, w, None, layer.stride, layer.padding,
                                           layer.output_padding) if layer.transposed
                        else F.conv2d(x, w, None, layer.stride, layer.padding))
            got = integer._digit_linear(layer, x, integer.input_digits(x), digit_gemm)
            assert got.dtype == torch.float64 and torch.equal(got, expected)


def test_streams_are_the_same_bytes_on_either_cpu_path(monkeypatch, cifar_images):
    streams = []
    for path in ("float64", "int8", "float32"):
        monkeypatch.setenv(integer.GEMM_ENV, path)
        model = tica.load("tica-cifar")
        streams.append(tica.compress(model, cifar_images[:6], quality=2.5))
        assert torch.equal(torch.cat([y for _, _, y in tica.decompress(model, streams[0])]),
                           torch.cat([y for _, _, y in tica.decompress(model, streams[-1])]))
    assert streams[0] == streams[1] == streams[2]


def test_close_to_the_float_network():
    h_s = _trained_like_h_s()
    z = torch.randint(-10, 11, (2, 32, 4, 4)).float()
    exact = IntegerHyperSynthesis.build(h_s)(z)
    ref = h_s(z).double()
    assert (exact - ref).abs().max() < 1e-2 * max(ref.abs().max().item(), 1.0)


def test_batch_size_does_not_change_a_single_bit():
    int_hs = IntegerHyperSynthesis.build(_trained_like_h_s())
    z = torch.randint(-30, 31, (8, 32, 4, 6)).double()
    batched = int_hs(z)
    single = torch.cat([int_hs(z[i:i + 1]) for i in range(8)])
    assert torch.equal(batched, single)


_THREADS_SCRIPT = """
import hashlib, sys, torch, tica
from tica.nn.integer import IntegerHyperSynthesis
torch.set_num_threads(int(sys.argv[1]))
h_s = tica.create_model("tica-cifar").h_s
z = torch.randint(-25, 26, (4, 128, 6, 5), generator=torch.Generator().manual_seed(3)).double()
out = IntegerHyperSynthesis.build(h_s)(z)
print(hashlib.sha256(out.numpy().tobytes()).hexdigest(), out.abs().sum().item())
"""


def test_thread_count_does_not_change_a_single_bit():
    runs = [subprocess.run([sys.executable, "-c", _THREADS_SCRIPT, str(n)], capture_output=True,
                           text=True, check=True).stdout for n in (1, 2)]
    assert runs[0] == runs[1] and runs[0].strip()


def test_the_gemm_form_a_gpu_runs_is_exactly_the_cpu_convolutions(monkeypatch):
    """On a GPU each layer runs as unfold/fold around a float64 GEMM (no convolution
    algorithm whose intermediates are not integers); run here, it gives the same numbers
    bit for bit, on odd and non-square grids and with z at its limits."""

    int_hs = IntegerHyperSynthesis.build(_trained_like_h_s())
    z = torch.randint(-30, 31, (3, 32, 5, 7)).double()
    z[0, 0, 0, 0], z[1, 3, 4, 6] = 2 ** 12 - 1, -(2 ** 12 - 1)
    expected = int_hs(z)
    monkeypatch.setattr(IntegerHyperSynthesis, "_digits",
                        staticmethod(lambda layer, x, in_bits=None: None))
    monkeypatch.setattr(IntegerHyperSynthesis, "_linear", staticmethod(
        lambda layer, x: integer._gemm_linear(layer, x) + layer.bias.view(1, -1, 1, 1)))
    assert torch.equal(int_hs(z), expected)
    assert torch.equal(expected, _int64_reference(int_hs, z))


def test_digit_count_holds_every_value_in_as_few_digits_as_it_can():
    cases = [([0, 127], 1), ([-128, 5], 1), ([128], 2), ([-129], 2), ([0, 2 ** 14 - 1], 2),
             ([-(2 ** 14)], 2), ([2 ** 14], 3), ([2 ** 20 - 1], 3), ([-(2 ** 21) - 1], 4), ([], 1)]
    for values, count in cases:
        x = torch.tensor(values, dtype=torch.float64)
        assert integer.digit_count(x) == count, values
        if values:
            digits = integer._limbs(x, count)
            back = sum(d.double() * 2.0 ** (integer.LIMB_BITS * i) for i, d in enumerate(digits))
            assert torch.equal(back, x) and all(d.dtype == torch.int8 for d in digits)


@pytest.mark.parametrize("digit_gemm", integer.DIGIT_GEMMS)
def test_digit_products_are_exact_with_one_two_or_three_digits(digit_gemm):
    """Real z needs one digit and real activations two: each count, at its largest values,
    gives the float64 convolution's integers (a plain and a transposed layer), by int8
    products and by float32 ones."""
    g = torch.Generator().manual_seed(5)
    layers = IntegerHyperSynthesis.build(_trained_like_h_s()).layers
    for layer in layers[:2]:
        layer = dataclasses.replace(layer, limbs={})
        c_in = layer.weight.shape[0] if layer.transposed else layer.weight.shape[1]
        for top in (2 ** 7, 2 ** 14, 2 ** 21):
            x = torch.randint(-top, top, (3, c_in, 6, 5), generator=g).double()
            x[0, 0, 0, 0], x[1, 1, 1, 1] = top - 1, -top
            assert integer.digit_count(x) == {2 ** 7: 1, 2 ** 14: 2, 2 ** 21: 3}[top]
            expected = (F.conv_transpose2d(x, layer.weight, None, layer.stride, layer.padding,
                                           layer.output_padding) if layer.transposed
                        else F.conv2d(x, layer.weight, None, layer.stride, layer.padding))
            assert torch.equal(integer._digit_linear(layer, x, integer.digit_count(x),
                                                     digit_gemm), expected)


def test_the_compiled_epilogue_gives_requantizes_integers_at_the_extremes():
    """tica.nn._intops.hidden_layer (recombine the int32 parts, bias, ReLU, shift, clamp in
    one pass) against `requantize` in float64: negative and huge accumulators, right and
    left shifts, the clamp; and it refuses buffers that do not fit."""
    from tica.nn import _intops
    g = torch.Generator().manual_seed(7)
    rows, cols = 37, 11
    parts = [torch.randint(-2 ** 30, 2 ** 30, (rows, cols), generator=g, dtype=torch.int32)
             for _ in range(3)]
    parts[2][0] = 2 ** 31 - 1                    # 2^31 * 2^14 + ...: near 2^45
    bias = torch.randint(-2 ** 40, 2 ** 40, (cols,), generator=g).double()
    rshift = torch.tensor([0, 1, 7, 14, 30, 40, -1, -3, -12, -40, 62], dtype=torch.int64)
    acc = parts[0].double() + parts[1].double() * 2 ** 7 + parts[2].double() * 2 ** 14 + bias
    # every kind of shift, then only right shifts below 63 (the kernel's branchless loop)
    for shifts in (rshift, torch.tensor([0, 1, 7, 14, 30, 40, 2, 3, 12, 33, 62])):
        out = torch.empty(rows, cols, dtype=torch.int32)
        _intops.hidden_layer([p.numpy() for p in parts], [0, 1, 2], bias.numpy(),
                             shifts.numpy(), 2 ** integer.ACT_BITS - 1, cols, out.numpy())
        expected = integer.requantize(
            acc, torch.pow(2.0, (shifts + integer.ACT_FRAC_BITS).double()), last=False)
        assert torch.equal(out.double(), expected)
        assert 0 < int((expected == 0).sum())
        assert 0 < int((expected == 2 ** integer.ACT_BITS - 1).sum())
        as_float = torch.empty(rows, cols, dtype=torch.float32)    # the same, as float32
        _intops.hidden_layer([p.numpy() for p in parts], [0, 1, 2], bias.numpy(),
                             shifts.numpy(), 2 ** integer.ACT_BITS - 1, cols, as_float.numpy())
        assert torch.equal(as_float.double(), expected)
    with pytest.raises(ValueError, match="float32 for act_max below 2"):
        _intops.hidden_layer([parts[0].numpy()], [0], bias.numpy(), rshift.numpy(), 2 ** 24,
                             cols, as_float.numpy())
    with pytest.raises(ValueError, match="cols"):
        _intops.hidden_layer([parts[0].numpy()], [0], bias.numpy(), rshift.numpy(), 255, cols + 1,
                             out.numpy())
    with pytest.raises(ValueError, match="shifts"):
        _intops.hidden_layer([parts[0].numpy()], [7], bias.numpy(), rshift.numpy(), 255, cols,
                             out.numpy())


def test_the_layer_ends_give_the_same_integers_on_any_number_of_workers():
    """hidden_layer and last_layer share their rows among `workers` threads where built with
    OpenMP (at least 16,384 values each): the same output on 1, 2, 3 or 64 workers, rows
    that do not divide evenly included."""
    from tica.entropy import GaussianConditional
    from tica.nn import _intops
    g = torch.Generator().manual_seed(5)
    rows, cols, half = 4099, 24, 12
    parts = [torch.randint(-2 ** 24, 2 ** 24, (rows, cols), generator=g, dtype=torch.int32),
             torch.randint(-2 ** 10, 2 ** 10, (rows, cols), generator=g, dtype=torch.int32)]
    bias = torch.randint(-2 ** 20, 2 ** 20, (cols,), generator=g).double()
    rshift = torch.randint(0, 20, (cols,), generator=g)
    scale = torch.pow(2.0, torch.randint(8, 16, (cols,), generator=g).double())
    gain = torch.ones(cols, dtype=torch.float64)
    bounds = GaussianConditional().scale_bounds.double()
    args = [p.numpy() for p in parts], [0, 1], bias.numpy()
    hidden, last = [], []
    for workers in (1, 2, 3, 64):
        out = torch.full((rows, cols), -7, dtype=torch.int32)
        _intops.hidden_layer(*args, rshift.numpy(), 2 ** 8 - 1, cols, out.numpy(), workers)
        hidden.append(out)
        out = torch.full((rows, cols), -7, dtype=torch.int32)
        _intops.last_layer(*args, scale.numpy(), gain.numpy(), bounds.numpy(), half, cols,
                           out.numpy(), workers)
        last.append(out)
    _, expected, _ = _table_choice(parts, [0, 1], bias, scale, gain, bounds, half)
    assert torch.equal(last[0], expected)
    assert 0 < int((hidden[0] == 255).sum()) and 0 < int((hidden[0] == 0).sum())
    for out in hidden[1:]:
        assert torch.equal(out, hidden[0])
    for out in last[1:]:
        assert torch.equal(out, last[0])


def test_the_layer_ends_read_float32_parts_as_their_integers():
    """A float32 digit product of one slice comes to the layer ends as it is (integers
    within 2^24): hidden_layer and last_layer give, for float32 parts or a mix, what they
    give for the same integers in int32; a part of another type is refused."""
    from tica.entropy import GaussianConditional
    from tica.nn import _intops
    g = torch.Generator().manual_seed(9)
    rows, cols, half = 301, 14, 7
    parts = [torch.randint(-2 ** 24, 2 ** 24 + 1, (rows, cols), generator=g, dtype=torch.int32)
             for _ in range(2)]
    parts[0][0], parts[1][1] = 2 ** 24, -2 ** 24
    bias = torch.randint(-2 ** 30, 2 ** 30, (cols,), generator=g).double()
    rshift = torch.randint(0, 30, (cols,), generator=g)
    scale = torch.pow(2.0, torch.randint(8, 16, (cols,), generator=g).double())
    gain = torch.ones(cols, dtype=torch.float64)
    bounds = GaussianConditional().scale_bounds.double()

    def ends(parts):
        hidden, last = (torch.empty(rows, cols, dtype=torch.int32) for _ in range(2))
        arrays = [p.numpy() for p in parts]
        _intops.hidden_layer(arrays, [0, 1], bias.numpy(), rshift.numpy(), 2 ** 20 - 1, cols,
                             hidden.numpy())
        _intops.last_layer(arrays, [0, 1], bias.numpy(), scale.numpy(), gain.numpy(),
                           bounds.numpy(), half, cols, last.numpy())
        return hidden, last

    expected = ends(parts)
    assert 0 < int((expected[0] == 0).sum()) < rows * cols
    for mixed in ([parts[0].float(), parts[1].float()], [parts[0], parts[1].float()]):
        got = ends(mixed)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    out = torch.empty(rows, cols, dtype=torch.int32)
    for wrong in (parts[0].double(), parts[0].to(torch.int64), parts[0].view(torch.uint8)):
        with pytest.raises(ValueError, match="int32 or float32|size"):
            _intops.hidden_layer([wrong.numpy()], [0], bias.numpy(), rshift.numpy(), 255, cols,
                                 out.numpy())


@pytest.mark.parametrize("digit_gemm", integer.DIGIT_GEMMS)
def test_channels_of_zeros_are_left_out_exactly(digit_gemm, monkeypatch):
    """A digit layer leaves out the input channels that are zero in the whole batch (most
    of a real z's): the same numbers as the int64 reference with most channels of z zero,
    with all of them zero, and where one image alone makes a channel live; the smaller
    weights are kept per set of channels, at most MAX_KEPT_DIGITS per layer."""
    monkeypatch.setenv(integer.GEMM_ENV, digit_gemm)
    int_hs = IntegerHyperSynthesis.build(_trained_like_h_s())
    g = torch.Generator().manual_seed(4)
    z = torch.randint(-20, 21, (3, 32, 5, 6), generator=g).double()
    z[:, 5:] = 0                           # 27 of 32 channels zero in every image
    z[1, 9, 2, 3] = 2 ** 12 - 1            # ... but one in one image
    for batch in (z, z[:1], torch.zeros_like(z)):
        assert torch.equal(int_hs(batch), _int64_reference(int_hs, batch))
    live = integer._live_channels(z)
    assert live.tolist() == [True] * 5 + [False] * 4 + [True] + [False] * 22
    assert integer._live_channels(torch.zeros(2, 4, 3, 3)).tolist() == [True] + [False] * 3
    assert integer._live_channels(torch.ones(2, 4, 3, 3)) is None
    # the census in one pass (channels-last 32-bit activations) and in torch agree
    acts = torch.zeros(4, 5, 6, 32, dtype=torch.int32)
    acts[..., :3] = torch.randint(0, 3, (4, 5, 6, 3), generator=g, dtype=torch.int32)
    acts[2, 1, 4, 20] = 9
    for x in (acts.permute(0, 3, 1, 2), acts.float().permute(0, 3, 1, 2)):
        live, nonzero = integer._census(x)
        assert nonzero == int(torch.count_nonzero(acts)) > 1
        assert live.tolist() == [bool(v) for v in acts.amax(dim=(0, 1, 2)) > 0]
        in_torch = integer._census(x.contiguous())          # channels first: torch's pass
        assert torch.equal(in_torch[0], live) and in_torch[1] == nonzero
        planar = integer._census(x.double().contiguous())   # 64-bit channels first: C's
        assert torch.equal(planar[0], live) and planar[1] == nonzero
        assert torch.equal(integer._census(x.double()[:, :, ::2])[0],   # not contiguous:
                           x.double()[:, :, ::2].abs().amax(dim=(0, 2, 3)) > 0)  # torch's
    assert integer._census(torch.zeros(2, 3, 1, 1, dtype=torch.int32).permute(0, 1, 2, 3)
                           .contiguous(memory_format=torch.channels_last))[1] == 0
    first = int_hs.layers[0]
    kept = [key for key in first.limbs if key[1] is not None]
    assert len(kept) == 3                  # z's channels, z[:1]'s, and zeros'
    for k in range(2 * integer.MAX_KEPT_DIGITS):
        one = torch.zeros(1, 32, 2, 2)
        one[0, k % 32] = 1
        int_hs(one)
        assert len(first.limbs) <= integer.MAX_KEPT_DIGITS


@pytest.mark.parametrize("digit_gemm", integer.DIGIT_GEMMS)
@pytest.mark.parametrize("compiled", [True, False])
def test_hidden_layers_end_alike_compiled_or_in_torch(compiled, digit_gemm, monkeypatch):
    """The digit paths' hidden layers end in _intops or, where it is not built, in torch:
    the same integers as the int64 reference, at real and worst-case magnitudes."""
    monkeypatch.setenv(integer.GEMM_ENV, digit_gemm)
    if not compiled:
        monkeypatch.setattr(integer, "_intops", None)
    int_hs = IntegerHyperSynthesis.build(_trained_like_h_s())
    z = torch.randint(-20, 21, (3, 32, 5, 6)).double()
    z[0, 0, 0, 0], z[2, 7, 4, 5] = 2 ** 12 - 1, -(2 ** 12 - 1)
    assert torch.equal(int_hs(z), _int64_reference(int_hs, z))


def _table_choice(parts, shifts, bias, scale, gain, bounds, half):
    """_intops.last_layer's output for these parts, and the same computed in torch."""
    from tica.nn import _intops
    rows, cols = parts[0].shape
    out = torch.empty(rows, cols, dtype=torch.int32)
    _intops.last_layer([p.numpy() for p in parts], shifts, bias.numpy(), scale.numpy(),
                       gain.numpy(), bounds.numpy(), half, cols, out.numpy())
    acc = sum(p.double() * 2.0 ** (7 * s) for p, s in zip(parts, shifts)) + bias
    v = acc / scale * gain
    expected = torch.cat([torch.bucketize(v[:, :half].contiguous(), bounds).int(),
                          v[:, half:].float().view(torch.int32)], dim=1)
    return out, expected, v


def test_the_compiled_table_choice_is_bucketizes_and_the_means_are_torchs():
    """tica.nn._intops.last_layer (the last layer's table indexes and means in one pass)
    against torch.bucketize and .float(): scales exactly on a bound, between, below the first
    and past the last, zero and negative; bounds its buckets serve (one gather each), two
    bounds in one bucket (a search in it), bounds from zero (binary search), bounds too far
    apart for buckets, no bounds; with and without a gain."""
    from tica.entropy import GaussianConditional
    g = torch.Generator().manual_seed(11)
    rows, cols, half = 53, 12, 6
    real = GaussianConditional().scale_bounds
    dyadic = torch.tensor([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 64.0], dtype=torch.float64)
    crowded = torch.tensor([0.25, 0.25 + 2 ** -12, 0.5, 2.0], dtype=torch.float64)
    for bounds in (real, dyadic, crowded,
                   torch.cat([torch.zeros(1, dtype=torch.float64), dyadic]),
                   torch.tensor([1e-300, 1.0, 1e300], dtype=torch.float64),
                   torch.zeros(0, dtype=torch.float64)):
        for gain in (torch.ones(cols, dtype=torch.float64),
                     torch.round(torch.rand(cols, generator=g, dtype=torch.float64) * 512) / 256):
            parts = [torch.randint(-2 ** 20, 2 ** 20, (rows, cols), generator=g,
                                   dtype=torch.int32), torch.randint(-3, 4, (rows, cols),
                                                                     generator=g, dtype=torch.int32)]
            parts[0][:4, :half] = torch.tensor([0, -1, 2 ** 20, -2 ** 20], dtype=torch.int32)[:, None]
            # exactly on the dyadic bounds and the crowded ones: acc = bound * 2^12 / gain
            # where that is an integer
            on = (torch.cat([dyadic, crowded[1:2]]) * 2 ** 12).to(torch.int32)
            parts[0][4:4 + len(on), 0], parts[1][4:4 + len(on), 0] = on, 0
            bias = torch.randint(-2 ** 10, 2 ** 10, (cols,), generator=g).double()
            bias[0] = 0
            scale = torch.pow(2.0, torch.randint(8, 16, (cols,), generator=g).double())
            scale[0] = 2.0 ** 12
            out, expected, v = _table_choice(parts, [0, 1], bias, scale, gain, bounds, half)
            assert torch.equal(out, expected), (bounds, gain)
    out, expected, v = _table_choice(parts, [0, 1], bias, scale, torch.ones(cols).double(),
                                     dyadic, half)
    assert torch.equal(out, expected)
    on_bound = torch.isin(v[:, 0], dyadic)
    assert int(on_bound.sum()) == len(dyadic)                   # some scales are bounds
    from tica.nn import _intops
    with pytest.raises(ValueError, match="gain"):
        _intops.last_layer([parts[0].numpy()], [0], bias.numpy(), scale.numpy(),
                           gain[:-1].numpy(), real.numpy(), half, cols,
                           torch.empty(rows, cols, dtype=torch.int32).numpy())


def test_the_table_choice_writes_planar_and_takes_every_path_alike():
    """last_layer's planar output (images, cols, pixels) is its row-major output with each
    image's channels first, for images whose pixels are no multiple of its blocks and rows
    shared among workers; one part of weight 1 with a bias within 2^52 (summed in float64)
    gives what torch's reference gives, as do a weight 2^7 and a bias past 2^52 (summed
    in int64); parts laid out by columns (a transposed product) give the same; a scale
    that is no power of two, a plane that does not divide the rows, or columns without a
    plane, is refused."""
    from tica.entropy import GaussianConditional
    from tica.nn import _intops
    g = torch.Generator().manual_seed(13)
    images, pixels, cols, half = 40, 37, 24, 12     # 35,520 values: two workers
    rows = images * pixels
    bounds = GaussianConditional().scale_bounds.double()
    scale = torch.pow(2.0, torch.randint(4, 10, (cols,), generator=g).double())
    gain = torch.round(torch.rand(cols, generator=g, dtype=torch.float64) * 512) / 256 + 0.5
    part = torch.randint(-2 ** 14, 2 ** 14, (rows, cols), generator=g, dtype=torch.int32)
    for shift, top in ((0, 2 ** 20), (0, 2 ** 53), (1, 2 ** 20)):
        bias = torch.randint(-top, top, (cols,), generator=g).double()
        for parts in ([part], [part.float()]):
            got, expected, _ = _table_choice(parts, [shift], bias, scale, gain, bounds, half)
            assert torch.equal(got, expected), (shift, top, parts[0].dtype)
            for workers in (1, 3):
                planar = torch.empty(images, cols, pixels, dtype=torch.int32)
                _intops.last_layer([p.numpy() for p in parts], [shift], bias.numpy(),
                                   scale.numpy(), gain.numpy(), bounds.numpy(), half, cols,
                                   planar.numpy(), workers, pixels)
                assert torch.equal(planar, expected.view(images, pixels, cols).transpose(1, 2))
                # the parts as a transposed product gives them: (cols, rows)
                by_columns = torch.empty(images, cols, pixels, dtype=torch.int32)
                _intops.last_layer([p.t().contiguous().numpy() for p in parts], [shift],
                                   bias.numpy(), scale.numpy(), gain.numpy(), bounds.numpy(),
                                   half, cols, by_columns.numpy(), workers, pixels, True)
                assert torch.equal(by_columns, planar)
    # two parts by columns (summed in int64), one of them float32
    two = [part, torch.randint(-3, 4, (rows, cols), generator=g, dtype=torch.int32).float()]
    got, expected, _ = _table_choice(two, [0, 1], bias, scale, gain, bounds, half)
    by_columns = torch.empty(images, cols, pixels, dtype=torch.int32)
    _intops.last_layer([p.t().contiguous().numpy() for p in two], [0, 1], bias.numpy(),
                       scale.numpy(), gain.numpy(), bounds.numpy(), half, cols,
                       by_columns.numpy(), 2, pixels, True)
    assert torch.equal(by_columns, expected.view(images, pixels, cols).transpose(1, 2))
    args = [part.numpy()], [0], bias.numpy()
    out = torch.empty(rows, cols, dtype=torch.int32).numpy()
    with pytest.raises(ValueError, match="power of two"):
        _intops.last_layer(*args, (scale * 3).numpy(), gain.numpy(), bounds.numpy(), half, cols,
                           out)
    with pytest.raises(ValueError, match="plane"):
        _intops.last_layer(*args, scale.numpy(), gain.numpy(), bounds.numpy(), half, cols, out,
                           1, pixels + 1)
    with pytest.raises(ValueError, match="with columns"):   # columns need a plane
        _intops.last_layer(*args, scale.numpy(), gain.numpy(), bounds.numpy(), half, cols, out,
                           1, 0, True)


def test_the_int16_product_is_the_int64_one_exactly():
    """_intops.gemm_i16 against the int64 product: digits and weights at the extremes its
    bound allows (a column's sum of |products| just below 2^31), taps odd and even,
    columns and rows no multiple of its tiles, the product transposed, workers; the
    weights `_int16_exact` takes whole and refuses; its refusals of wrong sizes."""
    from tica.nn import _intops
    g = torch.Generator().manual_seed(21)
    cases = [(1, 1, 1), (5, 3, 17), (9, 96, 192), (103, 171, 40), (7, 511, 16),
             (301, 9, 130)]                 # the last: enough values for 2-3 workers
    for rows, k, n in cases:
        a = torch.randint(-128, 128, (rows, k), generator=g, dtype=torch.int16)
        w = torch.randint(-2 ** 15 + 1, 2 ** 15, (k, n), generator=g, dtype=torch.int16)
        if k == 511:                        # 511 * 128 * 32767 = 2^31 - 8,385,537
            a[:], w[:, :8] = -128, -(2 ** 15 - 1)
        else:                               # within the bound: |w| up to 2^31 / 128 / k
            w = torch.div(w, -(-(2 ** 15) * k // 2 ** 24), rounding_mode="trunc")
        expected = a.long() @ w.long()
        assert int(expected.abs().max()) < 2 ** 31
        packed = integer._pack_int16(w)
        for workers, columns in ((1, False), (3, False), (1, True), (2, True)):
            out = torch.empty((n, rows) if columns else (rows, n), dtype=torch.int32)
            _intops.gemm_i16(a.numpy(), packed.numpy(), k, n, out.numpy(), workers, columns)
            assert torch.equal((out.t() if columns else out).long(), expected), (rows, k, n)
    assert integer._int16_exact(torch.full((4, 2, 1, 1), -127.0), False)
    assert not integer._int16_exact(torch.full((4, 2 ** 10, 3, 3), 2.0 ** 14 - 1), False)
    assert not integer._int16_exact(torch.full((1, 1, 1, 1), 2.0 ** 15), True)
    out = torch.empty(4, 16, dtype=torch.int32)
    a, packed = torch.zeros(4, 8, dtype=torch.int16), integer._pack_int16(
        torch.zeros(8, 16, dtype=torch.int16))
    with pytest.raises(ValueError, match="packed"):
        _intops.gemm_i16(a.numpy(), packed.numpy(), 10, 16, out.numpy())
    with pytest.raises(ValueError, match="a does not match"):
        _intops.gemm_i16(a[:3].numpy(), packed.numpy(), 8, 16, out.numpy())
    with pytest.raises(ValueError, match="k >= 1"):
        _intops.gemm_i16(a.numpy(), packed.numpy(), 0, 16, out.numpy())


def test_the_uint8_product_is_the_int64_one_exactly():
    """_intops.gemm_u8 against the int64 product: inputs in [0, 128) and weights in
    [-128, 127] at their extremes (each pair of products at +-32,512, int16's edge), whole
    quads of taps, columns and rows no multiple of its tiles (4x16, or 8x8 by columns), the
    product transposed, workers; the weights `_u8_exact` takes and refuses; its refusals of
    wrong sizes and of taps in no whole quads."""
    from tica.nn import _intops
    g = torch.Generator().manual_seed(23)
    for rows, k, n in [(1, 4, 1), (5, 8, 17), (9, 96, 192), (103, 172, 40), (7, 508, 16),
                       (301, 8, 130)]:          # the last: enough values for 2-3 workers
        a = torch.randint(0, 128, (rows, k), generator=g, dtype=torch.uint8)
        w = torch.randint(-128, 128, (k, n), generator=g, dtype=torch.int16)
        a[0], w[:, -1], w[:, 0] = 127, 127, -128     # a row's pairs at -32,512 and 32,258
        expected = a.long() @ w.long()
        assert int(expected[0, 0]) == -128 * 127 * k
        packed = integer._pack_u8(w)
        for workers, columns in ((1, False), (3, False), (1, True), (2, True)):
            out = torch.empty((n, rows) if columns else (rows, n), dtype=torch.int32)
            _intops.gemm_u8(a.numpy(), packed.numpy(), k, n, out.numpy(), workers, columns)
            assert torch.equal((out.t() if columns else out).long(), expected), (rows, k, n)
    assert integer._u8_exact(torch.full((4, 2, 3, 3), -128.0), False)
    assert integer._u8_exact(torch.full((4, 2, 3, 3), 127.0), True)
    assert not integer._u8_exact(torch.full((4, 2, 1, 1), 128.0), False)
    out = torch.empty(4, 16, dtype=torch.int32)
    a, packed = torch.zeros(4, 8, dtype=torch.uint8), integer._pack_u8(
        torch.zeros(8, 16, dtype=torch.int16))
    with pytest.raises(ValueError, match="packed"):
        _intops.gemm_u8(a.numpy(), packed.numpy(), 12, 16, out.numpy())
    with pytest.raises(ValueError, match="a does not match"):
        _intops.gemm_u8(a[:3].numpy(), packed.numpy(), 8, 16, out.numpy())
    with pytest.raises(ValueError, match="multiple of 4"):
        _intops.gemm_u8(a.numpy(), packed.numpy(), 6, 16, out.numpy())
    with pytest.raises(ValueError, match="whole quads"):
        integer._pack_u8(torch.zeros(6, 16, dtype=torch.int16))


def test_a_hidden_layers_activations_take_uint8_products_exactly(monkeypatch):
    """With int16 products, a layer whose input is one digit known to lie in [0, 2^7) (a
    hidden layer's activations: `in_bits` 7) and whose weight is within int8 runs uint8
    products (`_unsigned_input`): a 3x3 convolution (padded, live channels in no whole
    quads), a 1x1 one, a transposed one (folded) and the last layer's table end, each the
    float64 convolution's integers; not for z (no `in_bits`), a wider input or weight, or
    with UNSIGNED_PRODUCTS off."""
    from tica.nn import _intops
    calls = []
    monkeypatch.setattr(integer, "_intops", _SpiedIntops(_intops, calls))
    g = torch.Generator().manual_seed(24)
    shapes = [(False, 9, 6, 3, 1, 1, 0), (False, 10, 7, 1, 1, 0, 0), (True, 9, 5, 3, 2, 1, 1)]
    for transposed, c_in, c_out, k, stride, padding, extra in shapes:
        shape = (c_in, c_out, k, k) if transposed else (c_out, c_in, k, k)
        weight = torch.randint(-128, 128, shape, generator=g).double()
        layer = integer._IntLayer(weight, torch.zeros(c_out, dtype=torch.float64),
                                  torch.zeros(c_out, dtype=torch.int64), transposed, stride,
                                  padding, extra)
        x = torch.randint(0, 128, (3, c_in, 4, 5), generator=g).double()
        x[:, 1] = 0                            # a channel left out: 8 or 9 live channels
        x[0, 0, 0, 0] = 127
        expected = (F.conv_transpose2d(x, weight, None, stride, padding, extra) if transposed
                    else F.conv2d(x, weight, None, stride, padding))
        assert integer._unsigned_input(layer, 1, 7) and not integer._unsigned_input(layer, 1, 8)
        assert not integer._unsigned_input(layer, 1, None)
        assert not integer._unsigned_input(layer, 2, 7)
        calls.clear()
        got = integer._digit_linear(layer, x, 1, "int16", in_bits=7)
        assert torch.equal(got, expected) and calls == ["gemm_u8"]
        calls.clear()
        assert torch.equal(integer._digit_linear(layer, x, 1, "int16"), expected)
        assert calls == ["gemm_i16"]                                    # z: signed
        monkeypatch.setattr(integer, "UNSIGNED_PRODUCTS", False)
        calls.clear()
        assert torch.equal(integer._digit_linear(layer, x, 1, "int16", in_bits=7), expected)
        assert calls == ["gemm_i16"]
        monkeypatch.setattr(integer, "UNSIGNED_PRODUCTS", True)
        wide = dataclasses.replace(layer, weight=weight * 2, limbs={})
        assert not wide.u8_exact and not integer._unsigned_input(wide, 1, 7)
    # the last layer's table end, through a narrow h_s (7-bit weights and activations)
    h_s = _trained_like_h_s().double()
    int_hs = IntegerHyperSynthesis.build(h_s, 7, 5, 7)
    assert all(layer.u8_exact for layer in int_hs.layers)
    z = torch.randint(-4, 5, (3, 32, 5, 3)).double()
    monkeypatch.setenv(integer.GEMM_ENV, "int16")
    calls.clear()
    assert torch.equal(int_hs(z), _int64_reference(int_hs, z))
    assert calls.count("gemm_u8") >= 2                  # the two layers after the first


def test_negative_zeros_in_z_count_as_zeros(monkeypatch):
    """An encoder's z holds -0.0 where small negatives round to zero; the h_s takes them as
    0.0, so its census (which counts by bits) counts only the nonzero values that choose a
    layer's products (`_mostly_zeros`), and the result is z's with plain zeros."""
    int_hs = IntegerHyperSynthesis.build(_trained_like_h_s(), 7, 5, 7)
    z = torch.zeros(2, 32, 4, 4, dtype=torch.float64)
    z[0, 3, 1, 2], z[1, 5, 0, 0] = 2.0, -3.0
    half = torch.rand(z.shape, generator=torch.Generator().manual_seed(4)) < 0.5
    signed = torch.where(half & (z == 0), torch.tensor(-0.2, dtype=torch.float64), z)
    assert int(torch.signbit(signed.round()).sum()) > 100          # -0.2 rounds to -0.0
    counts, census = [], integer._census
    monkeypatch.setattr(integer, "_census",
                        lambda x: counts.append(census(x)[1]) or census(x))
    monkeypatch.setenv(integer.GEMM_ENV, "int16")
    out = int_hs(signed)
    assert counts[0] == 2 and torch.equal(out, int_hs(z))


class _SpiedIntops:
    """The kernel module, its products' calls listed by name."""

    def __init__(self, module, calls: list[str]) -> None:
        self._module, self._calls = module, calls

    def __getattr__(self, name: str):
        attr = getattr(self._module, name)
        if not name.startswith("gemm_"):
            return attr

        def spied(*args):
            self._calls.append(name)
            return attr(*args)
        return spied


def test_a_mostly_zero_input_takes_float32_digits_for_its_sparse_product():
    """With int16 products, an input whose live channels are mostly zeros (under int16's
    SPARSE_SHARE) is sent to float32 digits (`_mostly_zeros`), whose product by nonzero
    values is faster there; counted among the live channels only."""
    x = torch.zeros(2, 4, 5, 5, dtype=torch.int32)
    x[:, 0, :2] = 3                                  # 20 of 50 live values: 40%
    live, nonzero = integer._census(x)
    assert live.tolist() == [True, False, False, False] and nonzero == 20
    share = integer.SPARSE_SHARE[torch.int16]
    assert share < 0.4 and not integer._mostly_zeros(x, live, nonzero)
    assert integer._mostly_zeros(x, None, nonzero) == (20 < share * x.numel())
    x[:, 0, :2] = 0
    x[0, 0, 0, 0] = 7                                # 1 of 50
    live, nonzero = integer._census(x)
    assert nonzero == 1 and integer._mostly_zeros(x, live, nonzero)


def test_a_transposed_layer_folded_is_the_transposed_convolution():
    """With int16 products a transposed layer of one-digit input is one product and a fold
    of its taps (`_folded_transposed`): the float64 transposed convolution's integers for
    kernels, strides, paddings and output paddings of every kind, with channels left out,
    the images at once and one at a time (FOLD_BYTES); its refusal of wrong sizes."""
    from tica.nn import _intops
    g = torch.Generator().manual_seed(22)
    for k, stride, padding, extra in ((3, 2, 1, 1), (4, 2, 1, 0), (5, 3, 2, 2), (1, 1, 0, 0),
                                      (2, 2, 0, 1)):
        weight = torch.randint(-127, 128, (7, 5, k, k), generator=g).double()
        layer = integer._IntLayer(weight, torch.zeros(5, dtype=torch.float64),
                                  torch.zeros(5, dtype=torch.int64), True, stride, padding,
                                  extra)
        x = torch.randint(-128, 128, (3, 7, 4, 5), generator=g).double()
        x[:, 2] = 0                                       # a channel left out
        live, _ = integer._census(x)
        expected = F.conv_transpose2d(x, weight, None, stride, padding, extra)
        assert torch.equal(integer._folded_transposed(layer, x, live, None), expected)
        saved, integer.FOLD_BYTES = integer.FOLD_BYTES, 1      # one image at a time
        try:
            assert torch.equal(integer._folded_transposed(layer, x, live, None), expected)
        finally:
            integer.FOLD_BYTES = saved
    with pytest.raises(ValueError, match="cols"):
        _intops.fold(torch.zeros(10, dtype=torch.int32).numpy(), 1, 1, 1, 3, 2, 1, 2, 2, 1,
                     torch.zeros(4, dtype=torch.int32).numpy())


def test_the_sparse_convolution_is_the_dense_one_exactly():
    """_intops.sparse_conv (a convolution by the input's nonzero values) against the int64
    product of the unfolded input: mostly-zero inputs of digits at the extremes, a window
    of a larger plane (strided), stride 2, workers; its refusals."""
    from tica.nn import _intops
    g = torch.Generator().manual_seed(21)
    for kh, kw, stride, c_in, c_out in ((3, 3, 1, 7, 32), (2, 1, 1, 5, 3), (5, 5, 2, 4, 9)):
        plane = torch.randint(-128, 128, (40, 13, 11, c_in), generator=g).float()
        plane[torch.rand(plane.shape, generator=g) < 0.9] = 0
        plane[0, 0, 0] = -128
        w = torch.randint(-128, 128, (kh * kw * c_in, c_out), generator=g).float()
        w[:, 0] = -128                          # a column at 2^17 / ... of |digits|
        window = plane[:, 1:12, 2:10]           # not contiguous
        B, H, W, C = window.shape
        Ho, Wo = (H - kh) // stride + 1, (W - kw) // stride + 1
        patches = window.as_strided(
            (B, Ho, Wo, kh, kw, C), (window.stride(0), stride * window.stride(1),
                                     stride * window.stride(2), window.stride(1),
                                     window.stride(2), 1)).reshape(-1, kh * kw * C)
        expected = patches.long() @ w.long()
        for workers in (1, 2, 4):
            out = torch.full((B * Ho * Wo, c_out), 7.0)
            _intops.sparse_conv(window.numpy(), w.numpy(), kh, kw, stride, out.numpy(), workers)
            assert torch.equal(out.long(), expected)
    with pytest.raises(ValueError, match="does not match"):
        _intops.sparse_conv(window.numpy(), w[:-1].numpy(), kh, kw, stride, out.numpy())
    with pytest.raises(ValueError, match="float32"):
        _intops.sparse_conv(window.double().numpy(), w.numpy(), kh, kw, stride, out.numpy())


@pytest.mark.parametrize("gemm", ["float32", "int16"])
@pytest.mark.parametrize("share", [0.0, float("inf")])
def test_digit_layers_give_the_same_numbers_sparse_or_dense(share, gemm, monkeypatch):
    """A digit layer runs by its input's nonzero values where they are few enough
    (SPARSE_SHARE): with every layer forced dense (0) or sparse (inf), float32 or int16
    products, the integer h_s gives the int64 reference's numbers, and tica-cifar's
    decoder the same tables and means, for real and mostly-zero inputs."""
    monkeypatch.setenv(integer.GEMM_ENV, gemm)
    monkeypatch.setattr(integer, "SPARSE_SHARE", dict.fromkeys(integer.SPARSE_SHARE, share))
    int_hs = IntegerHyperSynthesis.build(_trained_like_h_s())
    g = torch.Generator().manual_seed(6)
    z = torch.randint(-3, 4, (3, 32, 5, 6), generator=g).double()
    z[torch.rand(z.shape, generator=g) < 0.8] = 0
    assert torch.equal(int_hs(z), _int64_reference(int_hs, z))
    model = tica.load("tica-cifar")
    x = torch.rand(4, 3, 32, 32, generator=g)
    z_int = model.analyze(x, 4.0)[0]
    monkeypatch.setattr(integer, "SPARSE_SHARE", dict.fromkeys(integer.SPARSE_SHARE, 0.0))
    dense = model._hyper_decode(z_int, 4.0)
    monkeypatch.setattr(integer, "SPARSE_SHARE", dict.fromkeys(integer.SPARSE_SHARE, share))
    got = model._hyper_decode(z_int, 4.0)
    assert (got[0] == dense[0]).all() and torch.equal(got[1], dense[1])


@pytest.mark.parametrize("digit_gemm", integer.DIGIT_GEMMS)
@pytest.mark.parametrize("compiled", [True, False])
def test_the_table_choice_is_the_same_compiled_or_in_torch(compiled, digit_gemm, monkeypatch):
    """The decoder's table indexes and means from z (`_hyper_decode`) on a digit path
    (int8 or float32), whose last layer ends in _intops, and on the float64 path, which
    ends in torch: the same numbers, with an entropy gain at several qualities and without
    one."""
    monkeypatch.setenv(integer.GEMM_ENV, "float64")
    models = [tica.create_model("tica-cifar", N=32, M=48, seed=seed, rate_levels=4,
                                entropy_gain=gain).eval() for seed, gain in ((3, True), (4, False))]
    with torch.no_grad():
        models[0].log_gain.copy_(torch.linspace(-2.0, 1.0, 4)[:, None].expand_as(models[0].log_gain))
    z = torch.randint(-20, 21, (3, 32, 4, 5)).double()
    z[0, 0, 0, 0], z[2, 7, 3, 4] = 2 ** 12 - 1, -(2 ** 12 - 1)
    want = []
    for model in models:
        model.update()
        want.append([model._hyper_decode(z, q) for q in (1.0, 2.37, 4.0)])
    monkeypatch.setenv(integer.GEMM_ENV, digit_gemm)
    if not compiled:
        monkeypatch.setattr(integer, "_intops", None)
    for model, expected in zip(models, want):
        for q, (indexes, means) in zip((1.0, 2.37, 4.0), expected):
            got_indexes, got_means = model._hyper_decode(z, q)
            assert got_indexes.dtype == indexes.dtype and (got_indexes == indexes).all()
            assert got_means.dtype == torch.float32 and torch.equal(got_means, means)
        assert len(set(int(i.sum()) for i, _ in expected)) > 1 or model is models[1]


def test_float32_products_sum_exactly_over_their_weights_slices():
    """A float32 digit product is exact because each float32 product sums a slice of taps
    whose partial sums stay within 2^24: 128 times the column's |digits| over the slice.
    1,024 products of -128 * -128 reach 2^24 exactly, and one more product of 1 lies past
    float32's 24 bits: that weight takes two slices (and so would the default F32_TAPS
    slicing); summed in one float32 product the 1 is lost. Real weights take one slice,
    and their product is float32 (integers) where the sum of two slices is int32."""
    k = integer.F32_TAPS + 1
    a = torch.full((3, k), -128, dtype=torch.int8)
    b = torch.full((k, 2), -128, dtype=torch.int8)
    a[:, -1], b[-1] = 1, 1
    exact = torch.full((3, 2), integer.F32_TAPS * 2 ** 14 + 1, dtype=torch.int32)
    assert torch.equal((a.long() @ b.long()).int(), exact)
    slices = integer._float32_slices(b.float())
    assert slices == ((0, integer.F32_TAPS), (integer.F32_TAPS, k))
    for by in (slices, None):
        got = integer._digit_product(a.float(), b.float(), by)
        assert got.dtype == torch.int32 and torch.equal(got, exact)
    assert not torch.equal(integer._digit_product(a.float(), b.float(), ((0, k),)).int(), exact)
    # a column at the limit, 2^24 / 128 = 2^17 in |digits| over 1,153 taps: one slice, and
    # the product of inputs at -128 with it exact in float32
    w = torch.zeros(1153, 3)
    w[:1024, 0] = -128.0
    w[:, 1] = 113.0
    assert integer._float32_slices(w) == ((0, 1153),)
    x = torch.full((2, 1153), -128.0)
    got = integer._digit_product(x, w, integer._float32_slices(w))
    assert got.dtype == torch.float32
    assert torch.equal(got.long(), x.long() @ w.long()) and got.abs().max() == 2 ** 24
    w[-1, 0] = 1.0                 # one more: two slices
    assert integer._float32_slices(w) == ((0, 1152), (1152, 1153))
    # the shipped tica-cifar's weights: one slice each
    for layer in tica.load("tica-cifar").integer_h_s.layers:
        if not layer.transposed:
            digits = integer._weight_digits(layer.weight, torch.float32)
            assert all(len(s) == 1 for s in digits.slices)


def test_each_layer_takes_digits_only_where_its_products_cost_less(monkeypatch):
    """With float32 digit products measured at 2.4 to a float64 one: the layers of a model
    with a narrow h_s (7-bit weights and activations: one digit each) take them, a layer
    whose weights need two digits takes them against inputs of one digit (two products)
    and float64 against inputs of two (four); where torch's float32 products are set to
    round (bfloat16 or TF32), float32 is never taken, measured or forced, and int8 is
    where it was measured fast enough."""
    monkeypatch.delenv(integer.GEMM_ENV, raising=False)
    monkeypatch.setattr(integer, "_measured_gemms", lambda: (("float32", 2.4), ("int8", 0.1)))
    narrow = tica.create_model("tica-cifar", N=32, M=48, hs_weight_bits=7, hs_act_frac_bits=5,
                               hs_act_bits=7).eval()
    narrow.update()
    first, hidden = narrow.integer_h_s.layers[:2]
    z = torch.randint(-20, 21, (2, 32, 4, 4)).double()
    act = torch.randint(0, 128, (2, hidden.weight.shape[0], 4, 4), dtype=torch.int32)
    assert IntegerHyperSynthesis._digits(first, z) == ("float32", 1)
    assert IntegerHyperSynthesis._digits(hidden, act, 7) == ("float32", 1)
    wide = IntegerHyperSynthesis.build(_trained_like_h_s()).layers[1]       # 14-bit weights
    act = torch.randint(0, 2 ** 13, (2, wide.weight.shape[0], 4, 4)).double()
    assert integer.digit_count(wide.weight) == 2 and integer.input_digits(act) == 2
    assert IntegerHyperSynthesis._digits(wide, act) is None
    assert IntegerHyperSynthesis._digits(wide, act.clamp(max=127)) == ("float32", 1)
    reference = IntegerHyperSynthesis.build(_trained_like_h_s())
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert integer.digit_gemm() == (None, 0.0)       # int8 measured slower than float64
        monkeypatch.setattr(integer, "_measured_gemms", lambda: (("float32", 9.0), ("int8", 3.0)))
        assert integer.digit_gemm() == ("int8", 3.0)
        monkeypatch.setenv(integer.GEMM_ENV, "float32")
        assert integer.digit_gemm() == (None, 0.0)
        assert torch.equal(reference(z), _int64_reference(reference, z))
    finally:
        torch.set_float32_matmul_precision(precision)
    assert integer.digit_gemm() == ("float32", float("inf"))


def test_float32_digits_wait_for_ieee_float32_products(monkeypatch):
    """The CPU backend's own precision setting decides before the global ones: bf16 or tf32
    there keeps float32 digit products out (the float64 path, the same numbers), ieee
    lets them in."""
    monkeypatch.setenv(integer.GEMM_ENV, "float32")
    matmul = torch.backends.mkldnn.matmul
    before = matmul.fp32_precision
    z = torch.randint(-20, 21, (2, 32, 4, 4)).double()
    reference = IntegerHyperSynthesis.build(_trained_like_h_s())
    try:
        for setting, taken in (("bf16", None), ("tf32", None), ("ieee", "float32")):
            matmul.fp32_precision = setting
            assert integer.digit_gemm()[0] == taken, setting
            assert torch.equal(reference(z), _int64_reference(reference, z))
    finally:
        matmul.fp32_precision = before
    assert integer.digit_gemm()[0] == "float32"


def test_the_layer_benchmark_times_every_way_on_real_images(capsys):
    """benchmarks/hs_layers.py: a row per layer of both models with its live channels and
    zeros (z's mostly dead channels, a photograph's mostly-zero activations), the three
    ways checked to agree, and a total per model."""
    from conftest import DATA, REPO, load_module
    bench = load_module(REPO / "benchmarks" / "hs_layers.py")
    assert bench.main(["--images", "8", "--photos", "1", "--rounds", "1",
                       "--data", str(DATA)]) == 0
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| tica-")]
    assert [(r[0], r[1]) for r in rows] == [
        (f"{m} ({n})", layer) for m, n in (("tica-cifar", 8), ("tica-photo", 1))
        for layer in ("1", "2 (transposed)", "3", "all")]
    z_cifar, z_photo = rows[0], rows[4]
    assert z_cifar[2] == "128x4x4" and int(z_cifar[3]) < 64
    assert z_photo[2] == "128x7x7" and int(z_photo[3]) < 64
    assert float(rows[6][4].rstrip("%")) > 50             # tica-photo's last layer's input
    assert all(float(v) > 0 for r in rows for v in r[5:8])


def test_the_int16_benchmark_checks_and_times_each_shape(capsys):
    """benchmarks/int16_gemm.py: a row per shape with each product's time (float32, int16,
    uint8, uint8 by columns), checked to agree, and the ratios."""
    from conftest import REPO, load_module
    bench = load_module(REPO / "benchmarks" / "int16_gemm.py")
    assert bench.main(["--rounds", "1"]) == 0
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = [r for r in rows if r[0] in bench.SHAPES]
    assert [r[0] for r in rows] == list(bench.SHAPES)
    assert all(len(r) == 7 and all(float(c.split()[0]) > 0 for c in r[1:5])
               and all(float(c.rstrip("x")) > 0 for c in r[5:]) for r in rows)
