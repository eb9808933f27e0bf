"""Shape rules and work counts of the shared op vocabulary."""

import pytest
import torch

from hal import ops
from hal.device import OpSpec, TensorSpec
from hal.errors import InvalidInput, ShapeError


def spec(*shapes, **params):
    return [TensorSpec(s) for s in shapes], {k: TensorSpec(v) for k, v in params.items()}


@pytest.mark.parametrize(
    "name, shapes, params, attrs, out",
    [
        ("matmul", [(2, 3, 4), (4, 5)], {}, {}, (2, 3, 5)),
        ("linear", [(7, 16)], {"weight": (8, 16)}, {}, (7, 8)),
        ("linear", [(None, 16)], {"weight": (8, 16)}, {}, (None, 8)),
        ("conv2d", [(2, 3, 8, 8)], {"weight": (4, 3, 3, 3)}, {"padding": (1, 1)}, (2, 4, 8, 8)),
        ("conv2d", [(2, 4, 9, 9)], {"weight": (6, 2, 3, 3)}, {"stride": (2, 2), "groups": 2}, (2, 6, 4, 4)),
        ("add", [(4, 1, 3), (5, 3)], {}, {}, (4, 5, 3)),
        ("attention", [(2, 8, 16, 32), (2, 2, 20, 32), (2, 2, 20, 64)], {}, {}, (2, 8, 16, 64)),
        ("selective_scan", [(2, 4, 6), (2, 4, 6), (4, 3), (2, 3, 6), (2, 3, 6), (4,)], {}, {}, (2, 4, 6)),
    ],
)
def test_output_shapes(name, shapes, params, attrs, out):
    inputs, p = spec(*shapes, **params)
    assert ops.check(OpSpec(name, inputs, p, attrs)) == out


@pytest.mark.parametrize(
    "name, shapes, params, attrs, error, words",
    [
        ("matmul", [(2, 3), (4, 5)], {}, {}, ShapeError, "inner dimensions"),
        ("matmul", [(3,), (3, 2)], {}, {}, ShapeError, "unsqueeze"),
        ("linear", [(7, 15)], {"weight": (8, 16)}, {}, ShapeError, "15 features"),
        ("linear", [(7, 16)], {}, {}, ShapeError, "weight"),
        ("linear", [(7, 16)], {"weight": (8, 16), "bias": (9,)}, {}, ShapeError, "bias"),
        ("linear", [(7, 16)], {"weight": (8, 16)}, {"activation": "tanh"}, InvalidInput, "activation"),
        ("conv2d", [(2, 3, 8, 8)], {"weight": (4, 2, 3, 3)}, {}, ShapeError, "channels"),
        ("conv2d", [(2, 3, 2, 2)], {"weight": (4, 3, 3, 3)}, {}, ShapeError, "does not fit"),
        ("add", [(4, 3), (5, 3)], {}, {}, ShapeError, "broadcast"),
        ("softmax", [(4, 3)], {}, {"dim": 2}, InvalidInput, "out of range"),
        ("layer_norm", [(4, 3)], {"weight": (4,)}, {}, ShapeError, "weight"),
        ("attention", [(2, 3, 16, 32), (2, 2, 16, 32), (2, 2, 16, 32)], {}, {}, ShapeError, "multiple"),
        ("relu", [(3,), (3,)], {}, {}, ShapeError, "1 input"),
    ],
)
def test_bad_shapes_name_the_problem(name, shapes, params, attrs, error, words):
    inputs, p = spec(*shapes, **params)
    with pytest.raises(error, match=words):
        ops.check(OpSpec(name, inputs, p, attrs))


def test_unknown_parameter_is_named():
    inputs, p = spec((2, 3), weight=(3,), gamma=(3,))
    with pytest.raises(InvalidInput, match="gamma"):
        ops.check(OpSpec("rms_norm", inputs, p))


def test_flop_counts():
    inputs, p = spec((4, 16), weight=(8, 16))
    assert ops.flops(OpSpec("linear", inputs, p)) == 2 * 4 * 8 * 16
    inputs, _ = spec((1, 2, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16))
    full = ops.flops(OpSpec("attention", inputs))
    assert full == 4 * 1 * 2 * 8 * 8 * 16
    assert ops.flops(OpSpec("attention", inputs, attrs={"causal": True})) == full // 2
    assert ops.bytes_moved(OpSpec("relu", [TensorSpec((10,), torch.float16)])) == 40


def test_paradigm_ops_are_the_drivers_business():
    assert ops.check(OpSpec("lif_layer", [TensorSpec((10, 4))])) is None
    assert ops.flops(OpSpec("lif_layer", [TensorSpec((10, 4))])) == 0


def test_every_vocabulary_op_has_its_reference_eager_method_and_sample():
    """The vocabulary (hal/ops.py) is the one list of ops; the torch reference (kernels, which cannot import the
    contract), the eager methods and the conformance samples must cover exactly it."""
    import torch

    from hal import ops
    from hal.device import Device
    from hal.kernels.torch_ops import TORCH_OPS
    from hal.testing.samples import default_sample

    names = set(ops.VOCABULARY)
    assert set(TORCH_OPS) == names
    assert all(callable(getattr(Device, name, None)) for name in names)
    for name in names:
        sample = default_sample(name, torch.float32, torch.Generator().manual_seed(0))
        assert len(sample.inputs) == len(ops.VOCABULARY[name].inputs)
