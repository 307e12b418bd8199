"""``metadapt bench maml``: one sinusoid meta-iteration of metadapt against reference MAML loops, side by side.

The iteration is the MAML paper's (meta-batch 25, K = 10 support and 10 query
points, one inner step of 0.01, second order, Adam on the 1-40-40-1 network).
Timed in the same process, interleaved round by round so a busy neighbour
slows every variant alike:

- metadapt: ``meta.outer.MAML`` with the stacked regressor (one batched pass);
- the same outer loop with one ``torch.func.vmap`` lane per task (the path of models that cannot stack);
- a plain PyTorch loop over tasks (``torch.autograd.grad`` with ``create_graph``);
- the ``higher`` library's ``innerloop_ctx`` loop over tasks, the usual way to write MAML in PyTorch
  before ``torch.func`` (an optional benchmark extra: ``pip install metadapt[bench]``).

The last line is ``maml_speedup_vs_higher=<x>``: the best ``higher`` time over the best metadapt time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from metadapt.data.sinusoid import SinusoidTasks
from metadapt.errors import MetadaptError
from metadapt.meta.outer import MAML
from metadapt.models.regressor import MLPRegressor
from metadapt.types import TaskBatch

INNER_LR, OUTER_LR = 0.01, 1e-3


def _torch_net(hidden: tuple[int, ...]) -> nn.Sequential:
    sizes = (1, *hidden, 1)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _loop_step(net: nn.Sequential, opt: torch.optim.Optimizer, tasks: TaskBatch) -> float:
    """Plain PyTorch MAML: a Python loop over tasks, functional_call on adapted weights."""
    names = [n for n, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    opt.zero_grad(set_to_none=True)
    total = 0.0
    b = tasks.num_tasks
    for i in range(b):
        xs, ys = tasks.support[0][i], tasks.support[1][i]
        xq, yq = tasks.query[0][i], tasks.query[1][i]
        inner = nn.functional.mse_loss(net(xs), ys)
        grads = torch.autograd.grad(inner, params, create_graph=True)
        fast = {n: p - INNER_LR * g for n, p, g in zip(names, params, grads, strict=True)}
        outer = nn.functional.mse_loss(torch.func.functional_call(net, fast, (xq,)), yq) / b
        outer.backward()
        total += float(outer.detach())
    opt.step()
    return total


def _higher_step(net: nn.Sequential, opt: torch.optim.Optimizer, tasks: TaskBatch) -> float:
    """MAML as the ``higher`` library's examples write it: innerloop_ctx per task, second order."""
    import higher

    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    b = tasks.num_tasks
    for i in range(b):
        with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
            diffopt.step(nn.functional.mse_loss(fnet(tasks.support[0][i]), tasks.support[1][i]))
            outer = nn.functional.mse_loss(fnet(tasks.query[0][i]), tasks.query[1][i]) / b
            outer.backward()
            total += float(outer.detach())
    opt.step()
    return total


def bench_maml(repeats: int = 5, iterations: int = 20, meta_batch: int = 25, shots: int = 10,
               hidden: tuple[int, ...] = (40, 40), seed: int = 0,
               print_fn: Callable[[str], None] = print) -> dict[str, float]:
    """Best milliseconds per meta-iteration of each variant and ``maml_speedup_vs_higher``.

    Raises:
        MetadaptError: ``higher`` is not installed (one line saying how to get it).
    """
    try:
        import higher  # noqa: F401
    except ImportError:
        raise MetadaptError("bench maml times a reference loop written with the optional 'higher' package, "
                            "which is not installed: pip install 'metadapt[bench]'") from None
    gen = torch.Generator().manual_seed(seed)
    batches = [SinusoidTasks(shots, shots).sample(meta_batch, gen) for _ in range(iterations)]
    model = MLPRegressor(1, 1, hidden)
    params = model.init_params(gen)
    stacked = MAML(model.loss, params, INNER_LR, stacked=True, outer_lr=OUTER_LR)
    vmapped = MAML(model.loss, params, INNER_LR, stacked=False, outer_lr=OUTER_LR)
    nets = {name: _torch_net(hidden) for name in ("loop", "higher")}
    for net in nets.values():
        with torch.no_grad():
            for (_, p), v in zip(net.named_parameters(), params.values(), strict=True):
                p.copy_(v)
    opts = {name: torch.optim.Adam(net.parameters(), lr=OUTER_LR) for name, net in nets.items()}
    variants: dict[str, Callable[[TaskBatch], float]] = {
        "metadapt": stacked.step,
        "metadapt_vmap": vmapped.step,
        "loop": lambda t: _loop_step(nets["loop"], opts["loop"], t),
        "higher": lambda t: _higher_step(nets["higher"], opts["higher"], t),
    }
    # The same first step from the same weights: every variant computes the same meta-gradient.
    first = {name: fn(batches[0]) for name, fn in variants.items()}
    spread = max(first.values()) - min(first.values())
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for tasks in batches:
                fn(tasks)
            best[name] = min(best[name], (time.perf_counter() - t0) / len(batches))
    out = {f"{name}_step_ms": 1e3 * t for name, t in best.items()}
    out["first_loss_spread"] = spread
    out["maml_speedup_vs_loop"] = best["loop"] / best["metadapt"]
    out["maml_speedup_vs_vmap"] = best["metadapt_vmap"] / best["metadapt"]
    out["maml_speedup_vs_higher"] = best["higher"] / best["metadapt"]
    print_fn(f"sinusoid meta-iteration: meta-batch {meta_batch}, K = {shots}, second order, hidden {list(hidden)}, "
             f"{torch.get_num_threads()} thread(s); best of {repeats} rounds of {iterations} iterations")
    for name in variants:
        print_fn(f"{name}_step_ms={out[f'{name}_step_ms']:.3f}")
    print_fn(f"first_loss_spread={spread:.2e}  (the variants' first outer losses agree)")
    print_fn(f"maml_speedup_vs_loop={out['maml_speedup_vs_loop']:.2f}")
    print_fn(f"maml_speedup_vs_vmap={out['maml_speedup_vs_vmap']:.2f}")
    print_fn(f"maml_speedup_vs_higher={out['maml_speedup_vs_higher']:.2f}")
    return out
