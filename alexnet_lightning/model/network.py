"""AlexNet as in Krizhevsky, Sutskever and Hinton (NIPS 2012), with a switch for every ablation.

The two-tower ("two-GPU") network is one tensor program: conv2, conv4 and conv5 only see their own
tower's maps (groups=2); conv1, conv3 and the fully connected layers see both (Section 3.2, Figure 2).
"""

from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

# Kernels per layer of the full two-tower network (Section 3.5): the totals over both towers.
PAPER_KERNELS = OrderedDict(conv1=96, conv2=256, conv3=384, conv4=384, conv5=256)
PAPER_FC = 4096
# Layers whose input is their own tower's maps only; the others take both towers' maps.
WITHIN_TOWER = ("conv2", "conv4", "conv5")
# Layers followed by local response normalisation (Section 3.3) and by max-pooling (Section 3.4).
NORMALISED = ("conv1", "conv2")
POOLED = ("conv1", "conv2", "conv5")
# Layers whose biases start at 1, "to accelerate the early stages of learning" (Section 5).
UNIT_BIAS = ("conv2", "conv4", "conv5", "fc6", "fc7")
DROPPABLE = ("conv3", "conv4", "conv5")


LRN_FORMULAS = ("cuda-convnet2", "printed")


def local_response_norm(
    x: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, towers: int = 1,
    formula: Literal["cuda-convnet2", "printed"] = "cuda-convnet2",
) -> torch.Tensor:
    """b_i = a_i / (k + alpha / n * sum_{j=i-n/2}^{i+n/2} a_j^2)^beta over the maps of each tower (Section 3.3).

    ``formula="cuda-convnet2"`` (the default) is what the authors' code computed: its layer parser divides the
    configured scale (alpha = 1e-4) by the window size n (cuda-convnet2 layer.py, ``NormLayerParser.add_params``) and
    its kernel computes ``minDiv + addScale * sum(a^2)`` (cudaconv3/src/conv_util.cu, ``kFCNorm``), as Caffe and
    torch.nn.LocalResponseNorm do. ``formula="printed"`` is the literal reading of the paper's formula, alpha per
    squared term (five times stronger), a deviation. The window never crosses from one tower's maps into the
    other's (each GPU normalised only the maps it held).
    Half-precision inputs are normalised in float32: in bfloat16, k + alpha / n * sum rounds to k.
    Eager, the hand-written ``_LocalResponseNorm`` computes it; under torch.compile, ``lrn_by_ops``.
    """
    _check_choice("lrn_formula", formula, LRN_FORMULAS)
    per_term = alpha / size if formula == "cuda-convnet2" else alpha
    lrn = lrn_by_ops if torch.compiler.is_compiling() else _LocalResponseNorm.apply
    if x.dtype in (torch.float16, torch.bfloat16):
        return lrn(x.float(), size, per_term, beta, k, towers).to(x.dtype)
    return lrn(x, size, per_term, beta, k, towers)


def lrn_by_ops(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, towers: int) -> torch.Tensor:
    """``_LocalResponseNorm``'s values in plain tensor operations, left to autograd: the form torch.compile fuses. Its
    backward comes from autograd, so the compiler chooses what to save and fuses both passes with the layers around
    them; the Function's backward is written for eager execution (saved powers, buffers reused in place).
    ``alpha`` is the weight of each squared term."""
    squares = x.square().unflatten(1, (towers, -1))  # [N, towers, maps per tower, H, W]
    maps = squares.shape[2]
    padded = nn.functional.pad(squares, (0, 0, 0, 0, size // 2, (size - 1) // 2))  # zero maps past each tower's ends
    window = sum(padded[:, :, j : j + maps] for j in range(size))
    return x * (window.flatten(1, 2) * alpha + k).pow(-beta)


def _window_sum(s: torch.Tensor, towers: int, before: int, after: int) -> torch.Tensor:
    """Sum of s over maps i-before .. i+after of the same tower, by in-place shifted adds (no padded copies); the
    result has s's memory format (channels-last stays channels-last)."""
    n, c, h, w = s.shape
    maps = s.reshape(n, towers, c // towers, h, w)
    total = maps.clone()
    for j in range(1, before + 1):
        total[:, :, j:] += maps[:, :, :-j]
    for j in range(1, after + 1):
        total[:, :, :-j] += maps[:, :, j:]
    return total.reshape(n, c, h, w)


class _LocalResponseNorm(torch.autograd.Function):
    """The formula with a hand-written backward, written for few passes over memory and few new tensors.

    ``alpha`` here is the weight of each squared term (alpha / n for the authors' code). With
    d_i = k + alpha * sum_{j in W(i)} a_j^2, b_i = a_i d_i^-beta and upstream gradient g,
    dL/da_j = g_j d_j^-beta - 2 alpha beta a_j sum_{i: j in W(i)} g_i a_i d_i^(-beta-1).
    The forward saves d^-beta and d^(-beta-1) beside the input (two more maps per LRN layer), so the
    backward has no window sum over a^2 and no power to recompute. For the paper's beta = 3/4 the powers
    come from rsqrt and sqrt, which are several times faster than pow on the CPU.
    Every elementwise step writes into a buffer it already has: on the CPU a new tensor of this size costs
    about as much as five in-place passes (its pages are faulted in fresh).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, towers: int) -> torch.Tensor:
        a = torch.mul(x, x)
        d = _window_sum(a, towers, size // 2, (size - 1) // 2).mul_(alpha).add_(k)
        if beta == 0.75:
            r = torch.rsqrt(d, out=a)  # d^-1/2
            scale = torch.sqrt(r, out=d).mul_(r)  # d^-3/4
            slope = r.mul_(r).mul_(scale)  # d^-7/4
        else:
            scale = torch.pow(d, -beta, out=a)
            slope = d.reciprocal_().mul_(scale)  # d^(-beta-1)
        ctx.save_for_backward(x, scale, slope)
        ctx.args = (size, alpha, beta, towers)
        return x * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, scale, slope = ctx.saved_tensors
        size, alpha, beta, towers = ctx.args
        t = torch.mul(grad, x).mul_(slope)
        # The transposed window: map j is in the window of map i for i in j-after .. j+before.
        t_sum = _window_sum(t, towers, (size - 1) // 2, size // 2)
        grad_x = torch.mul(grad, scale, out=t).addcmul_(x, t_sum, value=-2 * alpha * beta)
        return grad_x, None, None, None, None, None


class LocalResponseNorm(nn.Module):
    """Local response normalisation with the paper's constants, applied per tower (see ``local_response_norm``)."""

    def __init__(
        self, towers: int = 1, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
        formula: Literal["cuda-convnet2", "printed"] = "cuda-convnet2",
    ):
        super().__init__()
        _check_choice("lrn_formula", formula, LRN_FORMULAS)
        self.towers, self.size, self.alpha, self.beta, self.k, self.formula = towers, size, alpha, beta, k, formula

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.towers, self.formula)

    def extra_repr(self) -> str:
        return (f"towers={self.towers}, size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"formula={self.formula}")


def conv1_padding(input_size: int) -> int:
    """227 needs no padding to give 55x55 maps; 224 (the size the paper writes) needs 2 pixels."""
    return 0 if (input_size - 11) % 4 == 0 else 2


def feature_sizes(input_size: int, overlapping_pool: bool = True) -> dict[str, int]:
    """Side of each conv layer's output maps (after pooling where there is pooling)."""
    z = 3 if overlapping_pool else 2
    side = (input_size + 2 * conv1_padding(input_size) - 11) // 4 + 1
    sizes = {}
    for name in PAPER_KERNELS:  # conv2-5 keep the side ("same" padding); the pools halve it
        if name in POOLED:
            side = (side - z) // 2 + 1
        sizes[name] = side
    return sizes


class AlexNet(nn.Module):
    """The paper's network; every argument's default is the paper's choice.

    Args:
        num_classes: outputs of fc8 (1000 for ILSVRC).
        towers: 2 is the paper's two-GPU layout; 1 is its one-GPU control with half the kernels of every
            layer except conv5 and the fully connected layers (the footnote of Section 3.2).
        lrn: local response normalisation after conv1 and conv2.
        lrn_formula: "cuda-convnet2", what the authors' code computed (alpha / n per squared term), or the
            deviation "printed", the literal reading of the paper's formula (alpha per term); see local_response_norm.
        lrn_alpha: the LRN's alpha (the paper: 1e-4, for activations of raw-pixel inputs). Deviation: inputs
            scaled by 1 / s (``data.value_scale``) shrink the activations LRN sees by about s, and alpha * s^2 gives
            them the normalisation the paper's alpha gives at raw pixel values (1e-4 * 255^2 for [0, 1] inputs).
        overlapping_pool: max-pooling with z=3, s=2; False is the non-overlapping control z=2, s=2.
        dropout: dropout probability on the outputs of fc6 and fc7 (0 disables it).
        activation: "relu" (the paper) or "tanh" (its saturating control).
        drop_layer: remove one middle conv layer ("conv3", "conv4" or "conv5"); the next layer takes its input.
        input_size: side of the input crop: 227 (conv1 unpadded, as in Caffe) or 224 (conv1 padded by 2).
        width: fraction of the paper's kernels and hidden units in every layer. Deviation: 1.0 is the paper;
            smaller widths make CPU-sized runs on the built-in data.
        init: "paper" (weights N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6, fc7, else 0), or the deviation
            "kaiming" (He-normal weights, zero biases), which trains reliably at any width and depth.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        towers: Literal[1, 2] = 2,
        lrn: bool = True,
        lrn_formula: Literal["cuda-convnet2", "printed"] = "cuda-convnet2",
        lrn_alpha: float = 1e-4,
        overlapping_pool: bool = True,
        dropout: float = 0.5,
        activation: Literal["relu", "tanh"] = "relu",
        drop_layer: Literal["conv3", "conv4", "conv5"] | None = None,
        input_size: int = 227,
        width: float = 1.0,
        init: Literal["paper", "kaiming"] = "paper",
    ):
        super().__init__()
        _check_choice("towers", towers, (1, 2))
        _check_choice("activation", activation, ("relu", "tanh"))
        _check_choice("drop_layer", drop_layer, (None, *DROPPABLE))
        _check_choice("init", init, ("paper", "kaiming"))
        _check_choice("lrn_formula", lrn_formula, LRN_FORMULAS)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not lrn_alpha > 0:
            raise ValueError(f"lrn_alpha must be positive, got {lrn_alpha}")
        if not 0 < width <= 1:
            raise ValueError(f"width must be in (0, 1], got {width}")
        sizes = feature_sizes(input_size, overlapping_pool)
        if sizes["conv5"] < 1:
            raise ValueError(f"input_size={input_size} is too small: the maps vanish before fc6")
        self.towers, self.init = towers, init

        def kernels(name: str) -> int:
            total = PAPER_KERNELS[name] if towers == 2 or name == "conv5" else PAPER_KERNELS[name] // 2
            return max(towers, round(total * width / towers) * towers)  # a whole number per tower

        def act() -> nn.Module:
            return nn.ReLU(inplace=True) if activation == "relu" else nn.Tanh()

        z = 3 if overlapping_pool else 2
        features: OrderedDict[str, nn.Module] = OrderedDict()
        channels = 3
        convs = [name for name in PAPER_KERNELS if name != drop_layer]
        for name in convs:
            size, stride, pad = {"conv1": (11, 4, conv1_padding(input_size)), "conv2": (5, 1, 2)}.get(name, (3, 1, 1))
            groups = towers if name in WITHIN_TOWER else 1
            features[name] = nn.Conv2d(channels, kernels(name), size, stride, pad, groups=groups)
            features[f"{name}_act"] = act()
            if lrn and name in NORMALISED:
                features[f"{name}_lrn"] = LocalResponseNorm(towers, alpha=lrn_alpha, formula=lrn_formula)
            if name in POOLED or name == convs[-1]:  # the last conv layer is pooled even when conv5 is dropped
                features[f"{name}_pool"] = nn.MaxPool2d(z, 2)
            channels = kernels(name)
        self.features = nn.Sequential(features)

        hidden = max(1, round(PAPER_FC * width))
        classifier: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        in_features = channels * sizes["conv5"] ** 2
        for name in ("fc6", "fc7"):
            classifier[name] = nn.Linear(in_features, hidden)
            classifier[f"{name}_act"] = act()
            if dropout > 0:
                classifier[f"{name}_dropout"] = nn.Dropout(dropout)
            in_features = hidden
        classifier["fc8"] = nn.Linear(hidden, num_classes)
        self.classifier = nn.Sequential(classifier)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, layer in self.learned_layers().items():
            if self.init == "paper":  # Section 5
                nn.init.normal_(layer.weight, 0.0, 0.01)
                nn.init.constant_(layer.bias, 1.0 if name in UNIT_BIAS else 0.0)
            else:
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)

    def learned_layers(self) -> dict[str, nn.Conv2d | nn.Linear]:
        """The learned layers by their paper names: conv1 ... conv5 (less a dropped one), fc6, fc7, fc8."""
        modules = dict(self.features.named_children()) | dict(self.classifier.named_children())
        return {name: m for name, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _check_choice(option: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {choices}, got {value!r}")
