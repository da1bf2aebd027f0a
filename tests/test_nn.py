"""Layers: the polyphase transposed convolution and GDN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tica.nn.conv import GDN, ConvTranspose2d, nhwc


@pytest.mark.parametrize("cin, cout, size", [(5, 3, (7, 9)), (8, 16, (3, 2)), (4, 17, (5, 5))])
def test_polyphase_transposed_conv_equals_the_definition(cin, cout, size):
    torch.manual_seed(0)
    layer = ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)
    x = torch.randn(2, cin, *size, requires_grad=True)
    out = layer(nhwc(x))
    ref = F.conv_transpose2d(x, layer.weight, layer.bias, 2, 2, 1)
    assert out.shape == ref.shape == (2, cout, 2 * size[0], 2 * size[1])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (grad_fast,) = torch.autograd.grad(out.square().sum(), layer.weight)
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), layer.weight)
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-4, atol=1e-4)


def test_gdn_divides_and_igdn_multiplies_by_the_same_norm():
    gdn, igdn = GDN(8), GDN(8, inverse=True)
    x = torch.randn(2, 8, 4, 4)
    norm = (1 + 1e-6 + 0.1 * x * x).sqrt()               # beta = 1, gamma = 0.1 I at init
    torch.testing.assert_close(gdn(x), x / norm)
    torch.testing.assert_close(igdn(x), x * norm)
