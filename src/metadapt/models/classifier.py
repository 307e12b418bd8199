"""The convolutional classifier of the MAML paper's few-shot image classification (Finn et al. 2017, Sec. 5.2).

Vinyals et al.'s embedding network with a linear head: ``layers`` blocks of
3 x 3 convolution (``filters`` channels, padding 1), batch normalisation,
ReLU and 2 x 2 max-pooling, then a linear map of the flattened features to
``n_way`` logits. On 28 x 28 Omniglot images four blocks leave 64 features
(28 -> 14 -> 7 -> 3 -> 1). ``pool="stride"`` is the layout of the MAML code's
Omniglot network instead (the paper: "strided convolutions instead of
max-pooling"): convolutions of stride 2 with the same map sizes (28 -> 14 -> 7
-> 4 -> 2) and the features averaged over the last map, as that code does; its
first block computes a quarter of the feature map. Two details differ from
TensorFlow's: the padding is one pixel on every side (SAME pads an even side
by 0 before and 1 after) and batch norm's epsilon is 1e-5 (TensorFlow's
1e-3).

Batch normalisation always uses the statistics of the batch it is given and
keeps no running averages, as the MAML code does (so a test batch is
normalised by its own statistics, which is transductive). Its scale and shift
are parameters like the rest; ``norm_scale=False`` drops the scale, as the MAML
code's ``tf.contrib.layers.batch_norm`` (``scale=False`` by default) does (that
code also leaves the shifts out of the inner loop: ``meta.inner_frozen:
["norm."]``, see ``meta.inner.freeze_rates``). It is written
out in tensor operations rather than calling ``F.batch_norm``: the same values
(to rounding), but under ``vmap`` the fused kernel's double backward is wrong
(pytorch/functorch#534: the batching rule of ``native_batch_norm_backward``
for the input gradient), which made the second-order MAML gradient of the
convolution weights wrong by tens of percent while first-order and
unbatched gradients were right. The convolutions have no bias: batch
normalisation subtracts the channel mean right after, which cancels any bias
exactly.

A pure function of its parameter dict. Parameters may be stacked (every
tensor ``B x ...``, one network per task of a meta-batch, ``stacked = True``):
the ``B`` tasks' images then go through one grouped convolution per block
(``groups = B``), per-task batch statistics and one ``baddbmm`` head, and
``loss`` returns ``B`` losses; a meta-batch costs one pass instead of ``B``
``vmap`` lanes (``metadapt bench maml`` has the sinusoid's version of the
ratio). With plain parameters it is the usual one-task network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from metadapt.types import Params

POOLS = ("max", "stride")


def batch_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)`` of ``N x C x H x W`` in plain tensor
    operations, whose derivatives of every order are right under ``vmap`` (see the module docstring); ``weight``
    ``None`` is a scale of one."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=(0, 2, 3), keepdim=True)  # biased, as batch norm's; a product backpropagates
    scale = torch.rsqrt(var + eps)  # faster than square() or var_mean on the CPU
    if weight is not None:
        scale = scale * weight.view(1, -1, 1, 1)
    return centred * scale + bias.view(1, -1, 1, 1)


class ConvClassifier:
    """``N x C x H x W`` images -> ``N x n_way`` logits, with cross-entropy.

    Args:
        n_way: classes per episode (the output size).
        in_channels: image channels (Omniglot: 1).
        image_size: side of the (square) images.
        filters: channels of every convolution (MAML: 64).
        layers: convolution blocks (MAML: 4); the image must survive ``layers`` halvings.
        norm_scale: batch norm has a learned scale (``False``: a shift only, as the MAML code's).
        pool: ``"max"`` (2 x 2 max-pooling after each block) or ``"stride"`` (stride-2 convolutions, features
            averaged over the last map: the MAML code's Omniglot network).
    """

    stacked = True

    def __init__(self, n_way: int, in_channels: int = 1, image_size: int = 28, filters: int = 64,
                 layers: int = 4, norm_scale: bool = True, pool: str = "max") -> None:
        if min(n_way, in_channels, image_size, filters, layers) < 1:
            raise ValueError(f"sizes must be >= 1, got n_way={n_way}, in_channels={in_channels}, "
                             f"image_size={image_size}, filters={filters}, layers={layers}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        side = image_size
        for _ in range(layers):
            # max-pooling 2 x 2 floors odd sides (7 -> 3), as the MAML code's pooling does; a stride-2
            # convolution with padding 1 rounds them up (7 -> 4), as its SAME padding does
            side = side // 2 if pool == "max" else (side + 1) // 2
        if side < 1:
            raise ValueError(f"{layers} poolings leave nothing of a {image_size}-pixel image")
        self.pool = pool
        self.n_way, self.in_channels, self.image_size = int(n_way), int(in_channels), int(image_size)
        self.filters, self.layers, self.norm_scale = int(filters), int(layers), bool(norm_scale)
        self.features = self.filters * side * side if pool == "max" else self.filters

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(self.layers):
            c_in = self.in_channels if i == 0 else self.filters
            shapes[f"conv.{i}.weight"] = (self.filters, c_in, 3, 3)
            if self.norm_scale:
                shapes[f"norm.{i}.weight"] = (self.filters,)
            shapes[f"norm.{i}.bias"] = (self.filters,)
        shapes["out.weight"] = (self.n_way, self.features)
        shapes["out.bias"] = (self.n_way,)
        return shapes

    def init_params(self, generator: torch.Generator, device: torch.device | str = "cpu") -> Params:
        """As the MAML code: Glorot-uniform convolutions, batch-norm scale 1 and shift 0; the head as ``nn.Linear``
        (uniform in ``+-1/sqrt(features)``)."""
        params: Params = {}
        for name, shape in self.param_shapes().items():
            if name.startswith("conv."):
                fan_in, fan_out = shape[1] * 9, shape[0] * 9
                bound = math.sqrt(6.0 / (fan_in + fan_out))
            elif name.startswith("norm."):
                params[name] = torch.full(shape, 1.0 if name.endswith("weight") else 0.0, device=device)
                continue
            else:
                bound = 1.0 / math.sqrt(self.features)
            params[name] = torch.empty(shape).uniform_(-bound, bound, generator=generator).to(device)
        return params

    def forward(self, params: Params, images: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W -> N x n_way`` logits (``N >= 2``: batch norm needs two values per channel); with
        stacked parameters ``B x N x C x H x W -> B x N x n_way``."""
        if params["out.weight"].dim() == 3:
            return self._forward_stacked(params, images)
        x = images
        for i in range(self.layers):
            x = F.conv2d(x, params[f"conv.{i}.weight"], padding=1, stride=self.stride)
            x = batch_norm(x, params[f"norm.{i}.weight"] if self.norm_scale else None, params[f"norm.{i}.bias"])
            x = self._pool(F.relu(x))
        return F.linear(self._features(x), params["out.weight"], params["out.bias"])

    @property
    def stride(self) -> int:
        return 1 if self.pool == "max" else 2

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2) if self.pool == "max" else x

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x h x w`` maps -> ``N x features``: flattened after max-pooling, averaged after strides."""
        return x.flatten(1) if self.pool == "max" else x.mean(dim=(2, 3))

    def _forward_stacked(self, params: Params, images: torch.Tensor) -> torch.Tensor:
        b, n = images.shape[:2]
        # Tasks side by side as channel groups: N x (B C) x H x W, one grouped convolution per block.
        x = images.transpose(0, 1).reshape(n, b * images.shape[2], *images.shape[3:])
        for i in range(self.layers):
            w = params[f"conv.{i}.weight"]
            x = F.conv2d(x, w.reshape(b * w.shape[1], *w.shape[2:]), padding=1, stride=self.stride, groups=b)
            scale = params[f"norm.{i}.weight"].reshape(-1) if self.norm_scale else None
            x = batch_norm(x, scale, params[f"norm.{i}.bias"].reshape(-1))
            x = self._pool(F.relu(x))
        feats = self._features(x).reshape(n, b, -1).transpose(0, 1)  # B x N x F, each task's channels in a block
        return torch.baddbmm(params["out.bias"].unsqueeze(1), feats, params["out.weight"].transpose(1, 2))

    def loss(self, params: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of ``(images N x C x H x W, labels N)``: a scalar (``B`` when stacked)."""
        images, labels = batch
        logits = self.forward(params, images)
        if logits.dim() == 3:
            ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
            return ce.view(labels.shape).mean(dim=1)
        return F.cross_entropy(logits, labels)

    def accuracy(self, params: Params, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Fraction of ``batch`` whose largest logit is its label: a scalar (``B`` when stacked)."""
        images, labels = batch
        return (self.forward(params, images).argmax(dim=-1) == labels).float().mean(dim=-1)
