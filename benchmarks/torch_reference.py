r"""The project's SimCLR step written in PyTorch (CPU), timed like train_step.py.

  pip install -e '.[bench]' --extra-index-url https://download.pytorch.org/whl/cpu
  python benchmarks/torch_reference.py --config=configs/contrastive.py --steps=10
  python benchmarks/torch_reference.py --config=configs/contrastive.py --alternate=5

The same network as ``attn_contrastive.models`` for the config (ResNet layout,
stem, zero-initialised last BatchNorm scale per block, projection MLP
Dense → BN → ReLU → Dense), the same NT-Xent over the 2N views, LARS with the
same masking (no weight decay or trust ratio on 1-D parameters), the same
batch and image size, on random uint8 images made once. PyTorch has no LARS,
so it is written out here (``Lars``).

``--alternate=R`` builds this step and the project's JAX step in one process
and times them in turn, R rounds of ``--steps`` each, so that both see the
same machine load; the last line is one JSON object with both step times and
``jax_over_torch`` (the median of the per-round ratios; < 1 means JAX is
faster). Without it, the last line is this step's JSON, in train_step.py's
fields.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import train_step  # noqa: E402  (the sibling benchmark: the project's compiled step)
from attn_contrastive import main as main_lib  # noqa: E402
from attn_contrastive.models.resnet import STAGE_SIZES, STAGE_STRIDES  # noqa: E402
from attn_contrastive.train import optim  # noqa: E402
from attn_contrastive.models.forward import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

# --steps and --warmup are train_step.py's flags (per round with --alternate).
_ALTERNATE = flags.DEFINE_integer("alternate", 0, "Rounds of JAX then PyTorch; 0: PyTorch only.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False,
                               "With --alternate: also time forward and forward + backward alone.")
_CHANNELS_LAST = flags.DEFINE_bool(
    "channels_last", False,
    "NHWC memory format; slower than the default NCHW for these small models on CPU.")


def _bn(c: int, zero: bool = False) -> nn.BatchNorm2d:
  bn = nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)  # flax momentum 0.9 == torch 0.1
  if zero:
    nn.init.zeros_(bn.weight)
  return bn


class Block(nn.Module):
  """Basic (two 3×3) or bottleneck (1×1, 3×3, 1×1×4) block, as in models/resnet.py."""

  def __init__(self, cin: int, filters: int, stride: int, bottleneck: bool):
    super().__init__()
    cout = filters * (4 if bottleneck else 1)
    if bottleneck:
      self.body = nn.Sequential(
          nn.Conv2d(cin, filters, 1, bias=False), _bn(filters), nn.ReLU(inplace=True),
          nn.Conv2d(filters, filters, 3, stride, 1, bias=False), _bn(filters),
          nn.ReLU(inplace=True), nn.Conv2d(filters, cout, 1, bias=False), _bn(cout, True))
    else:
      self.body = nn.Sequential(
          nn.Conv2d(cin, filters, 3, stride, 1, bias=False), _bn(filters), nn.ReLU(inplace=True),
          nn.Conv2d(filters, cout, 3, 1, 1, bias=False), _bn(cout, True))
    self.proj = None
    if stride != 1 or cin != cout:
      self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

  def forward(self, x):
    return F.relu(self.body(x) + (x if self.proj is None else self.proj(x)))


class ScaledBatchNorm(nn.Module):
  """BatchNorm with a learned scale and no shift (SimCLR's projection output)."""

  def __init__(self, c: int):
    super().__init__()
    self.norm = nn.BatchNorm1d(c, eps=1e-5, momentum=0.1, affine=False)
    self.scale = nn.Parameter(torch.ones(c))

  def forward(self, x):
    return self.norm(x) * self.scale


class SimCLRNet(nn.Module):
  """ResNet encoder (``config.model``) + SimCLR projection MLP."""

  def __init__(self, m):
    super().__init__()
    k, s, bottleneck = m.stem_kernel, m.stem_stride, m.depth >= 50
    layers = [nn.Conv2d(3, m.width, k, s, k // 2, bias=False), _bn(m.width), nn.ReLU(inplace=True)]
    if m.stem_pool:
      layers.append(nn.MaxPool2d(3, 2, 1))
    cin = m.width
    for i, (n, stride) in enumerate(zip(STAGE_SIZES[m.depth], STAGE_STRIDES)):
      for j in range(n):
        layers.append(Block(cin, m.width * 2**i, stride if j == 0 else 1, bottleneck))
        cin = m.width * 2**i * (4 if bottleneck else 1)
    self.encoder = nn.Sequential(*layers)
    head = []
    for _ in range(m.proj_num_layers - 1):
      head += [nn.Linear(cin, m.proj_hidden_dim, bias=False),
               nn.BatchNorm1d(m.proj_hidden_dim, eps=1e-5, momentum=0.1), nn.ReLU(inplace=True)]
      cin = m.proj_hidden_dim
    self.head = nn.Sequential(*head, nn.Linear(cin, m.proj_out_dim, bias=False),
                              ScaledBatchNorm(m.proj_out_dim))

  def forward(self, x):
    return self.head(self.encoder(x).mean(dim=(2, 3)))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
  """NT-Xent at SimCLR's scale (twice the mean over the 2N anchors), as
  ``attn_contrastive.losses.nt_xent``."""
  z = F.normalize(torch.cat([z1, z2]), dim=1)
  n = z1.shape[0]
  logits = (z @ z.T) / temperature
  logits.fill_diagonal_(float("-inf"))
  targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
  return 2 * F.cross_entropy(logits, targets)


class Lars(torch.optim.Optimizer):
  """optax.lars's update: weight decay and trust ratio on ≥2-D parameters, momentum."""

  def __init__(self, params, lr: float, weight_decay: float, momentum: float, eta: float):
    super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      for p in group["params"]:
        if p.grad is None:
          continue
        g = p.grad
        if p.ndim > 1:
          g = g.add(p, alpha=group["weight_decay"])
          p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
          trust = torch.where((p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm,
                              torch.ones_like(p_norm))
          g = g * trust
        buf = self.state[p].get("momentum")
        buf = g.clone() if buf is None else buf.mul_(group["momentum"]).add_(g)
        self.state[p]["momentum"] = buf
        p.add_(buf, alpha=-group["lr"])


class TorchStep:
  """The SimCLR step on a fixed batch; ``run(n)`` → seconds per step."""

  def __init__(self, config, channels_last: bool = False):
    if config.task != "pretrain":
      raise ValueError("torch_reference.py mirrors the SimCLR (pretrain) step only")
    torch.manual_seed(0)
    self.config, self.fmt = config, (
        torch.channels_last if channels_last else torch.contiguous_format)
    self.model = SimCLRNet(config.model).to(memory_format=self.fmt).train()
    b, s = config.input.global_batch_size, config.data.image_size
    rng = np.random.default_rng(0)
    self.views = [
        torch.from_numpy(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)) for _ in range(2)
    ]
    self.mean = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1)
    self.std = torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1)
    o = config.optim
    self.opt = Lars(self.model.parameters(), optim.peak_learning_rate(o, b), o.weight_decay,
                    o.momentum, o.trust_coefficient)
    self.loss = float("nan")

  def step(self) -> None:
    loss = self._loss()
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    self.loss = float(loss)

  def time_parts(self, steps: int) -> dict[str, float]:
    """Seconds per call of the forward pass alone and of forward + backward."""

    def forward():
      with torch.no_grad():
        return self._loss()

    def forward_backward():
      self.model.zero_grad(set_to_none=True)
      self._loss().backward()

    return train_step.time_calls({"forward": forward, "forward_backward": forward_backward}, steps)

  def _loss(self) -> torch.Tensor:
    x = torch.cat(self.views).permute(0, 3, 1, 2).float()
    x = ((x - self.mean) / self.std).contiguous(memory_format=self.fmt)
    z1, z2 = self.model(x).chunk(2)
    return nt_xent(z1, z2, self.config.loss.temperature)

  def run(self, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      self.step()
    return (time.perf_counter() - t0) / max(steps, 1)

  def report(self, dt: float) -> dict:
    c, b = self.config, self.config.input.global_batch_size
    return {
        "framework": f"torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "depth": c.model.depth,
        "width": c.model.width,
        "image_size": c.data.image_size,
        "global_batch": b,
        "params": sum(p.numel() for p in self.model.parameters()),
        "step_ms": 1e3 * dt,
        "images_per_s": b / dt,
        "views_per_s": 2 * b / dt,
        "loss": self.loss
    }


def alternate(config, rounds: int, steps: int, warmup: int, channels_last: bool,
              breakdown: bool = False) -> dict:
  """JAX and PyTorch steps timed in turn; the median per-round ratio.

  With ``breakdown``, also the forward pass alone and forward + backward of
  each (``parts_ms``), to place the difference.
  """
  jax_step, torch_step = train_step.StepRunner(config), TorchStep(config, channels_last)
  jax_step.run(warmup)
  torch_step.run(warmup)
  ratios, jax_ms, torch_ms = [], [], []
  for r in range(rounds):
    tj, tt = jax_step.run(steps), torch_step.run(steps)
    jax_ms.append(1e3 * tj)
    torch_ms.append(1e3 * tt)
    ratios.append(tj / tt)
    print(f"round {r}: jax {1e3 * tj:.1f} ms, torch {1e3 * tt:.1f} ms, ratio {tj / tt:.3f}")
  parts = {}
  if breakdown:
    for name, runner in (("jax", jax_step), ("torch", torch_step)):
      parts[name] = {k: 1e3 * v for k, v in runner.time_parts(steps).items()}
      print(f"{name} parts (ms): {parts[name]}")
  return {
      "jax": jax_step.report(float(np.median(jax_ms)) / 1e3),
      "parts_ms": parts,
      "torch": torch_step.report(float(np.median(torch_ms)) / 1e3),
      "jax_step_ms": jax_ms,
      "torch_step_ms": torch_ms,
      "jax_over_torch": float(np.median(ratios))
  }


def main(argv):
  del argv
  config = main_lib._CONFIG.value
  if _ALTERNATE.value > 0:
    out = alternate(config, _ALTERNATE.value, train_step._STEPS.value, train_step._WARMUP.value,
                    _CHANNELS_LAST.value, _BREAKDOWN.value)
  else:
    runner = TorchStep(config, _CHANNELS_LAST.value)
    runner.run(train_step._WARMUP.value)
    out = runner.report(runner.run(train_step._STEPS.value))
  print(json.dumps(out))


if __name__ == "__main__":
  app.run(main, flags_parser=main_lib.parse_flags)
