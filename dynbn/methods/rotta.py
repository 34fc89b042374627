"""rotta: robust test-time adaptation in dynamic scenarios (Yuan, Xie, Li, CVPR 2023).

Yuan, Xie, Li, "Robust Test-Time Adaptation in Dynamic Scenarios", CVPR 2023
(github.com/BIT-DA/RoTTA: ``core/adapter/rotta.py``, ``core/utils/memory.py``,
``core/utils/bn_layers.py``). Three parts:

- **Robust BN** (RBN): every BN layer keeps global statistics, starting at the source ones; a
  forward that adapts first moves them towards the batch's (biased) statistics by an
  exponential moving average, ``(1 - alpha) * global + alpha * batch``, and normalises with
  the result (the batch part stays in the graph); a forward that predicts uses them as they are.
- **Category-balanced memory** (CSTU, capacity 64): each frame joins the bank under the
  teacher's predicted class, with its prediction entropy as uncertainty and age 0; an item's
  score is ``lambda_t / (1 + exp(-age / capacity)) + lambda_u * entropy / log(classes)``. A
  frame of a class below its share (capacity / classes) enters if the bank has room, else in
  place of the highest-scoring item of the fullest classes; a frame of a class at its share
  replaces its own class's highest-scoring item. It enters only if that item scores higher than
  its own score; every item ages by one per frame added.
- **Teacher-student update**: the prediction is the teacher's (RBN statistics as they are).
  Every ``update_every`` frames, the teacher (adapting its RBN statistics) labels the memory and
  the student (adapting its own) sees the strongly augmented memory; one Adam step on the
  student's BN affine parameters minimises the cross-entropy to the teacher's softmax, weighted
  per item by ``exp(-a) / (1 + exp(-a))`` with ``a = age / capacity`` (timeliness); then every
  teacher parameter moves to ``(1 - nu) * teacher + nu * student``.

Hyper-parameters, the authors' CIFAR-10-C defaults (``configs/adapter/rotta.yaml``): Adam,
lr 1e-3, betas (0.9, 0.999), no weight decay; alpha 0.05; nu 0.001; capacity 64; an update
every 64 frames; lambda_t = lambda_u = 1. The strong augmentation is CoTTA's, which the
authors use (``custom_transforms.get_tta_transforms``): colour jitter (brightness 0.6-1.4,
contrast 0.7-1.3, saturation 0.5-1.5, hue +-0.06, gamma 0.7-1.3, random order), edge padding by
half the size, random affine (+-15 degrees, translation 1/16, scale 0.9-1.1, bilinear),
Gaussian blur (5 x 5, sigma 0.001-0.5), centre crop, horizontal flip (p 0.5), Gaussian noise
(std 0.005), clipped to [0, 1]; as torchvision does on a batch tensor, one draw per update for
the whole memory. Draws come from the arm's own seeded generator, so ``reset()`` replays them.

One global state for every camera, as published. RoTTA works on two deep copies of the model
(student and teacher), so the shared model is never touched; ``reset()`` restores both copies,
the RBN statistics, the memory, the frame counter, the optimizer and the generator exactly.
Cost: a teacher forward per batch, plus every 64 frames a 64-frame teacher forward and student
forward and backward (at batch size 1, a latency spike every 64 frames).

Checked against the authors' code: a re-typed copy of their RobustBN2d, CSTU, RoTTA
``forward_and_adapt`` / ``update_model`` and timeliness weight (``/tmp/rotta_check/check.py``,
outside the project; modules swapped into a deep copy as they do), given the same strong
augmentation (this module's, with an equally seeded generator), on 512 CIFAR-10 test frames
under Gaussian noise (severity 5, seed 0) with the ResNet-20, at B = 64 and B = 16: identical
logits (max probability difference 0.0), the same bank class counts and ages at the end. The
augmentation itself is a re-implementation of CoTTA's pipeline on ``torchvision`` functionals
and was not compared draw for draw with ``torchvision.transforms``' own random draws.
"""

from __future__ import annotations

import copy
import math

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from ..bn.per_sample import patched_bn, source_stats
from ..bn.table import bn_layers
from .base import Method
from .lame import last_linear

LR = 1e-3
BETAS = (0.9, 0.999)
ALPHA = 0.05
NU = 0.001
CAPACITY = 64
UPDATE_EVERY = 64
LAMBDA_T = 1.0
LAMBDA_U = 1.0


class MemoryBank:
    """CSTU: a category-balanced bank of (frame, uncertainty, age), ``capacity`` items at most."""

    def __init__(self, capacity: int, classes: int, lambda_t: float = LAMBDA_T, lambda_u: float = LAMBDA_U) -> None:
        self.capacity, self.classes = capacity, classes
        self.share = capacity / classes
        self.lambda_t, self.lambda_u = lambda_t, lambda_u
        self.items: list[list[list]] = [[] for _ in range(classes)]  # per class: [frame, uncertainty, age]

    def __len__(self) -> int:
        return sum(len(c) for c in self.items)

    def counts(self) -> list[int]:
        return [len(c) for c in self.items]

    def score(self, age: int, uncertainty: float) -> float:
        return self.lambda_t / (1 + math.exp(-age / self.capacity)) + self.lambda_u * uncertainty / math.log(self.classes)

    def add(self, frame: torch.Tensor, label: int, uncertainty: float) -> None:
        if self._make_room(label, self.score(0, uncertainty)):
            self.items[label].append([frame, uncertainty, 0])
        for items in self.items:  # the new item ages too, as in the authors' bank
            for item in items:
                item[2] += 1

    def _make_room(self, label: int, score: float) -> bool:
        if len(self.items[label]) >= self.share:
            return self._evict([label], score)
        if len(self) < self.capacity:
            return True
        counts = self.counts()
        return self._evict([c for c, n in enumerate(counts) if n == max(counts)], score)

    def _evict(self, classes: list[int], score: float) -> bool:
        """Drop the highest-scoring item of ``classes`` (the last of equals) if it outscores ``score``."""
        best = None
        for c in classes:
            for i, (_, unc, age) in enumerate(self.items[c]):
                s = self.score(age, unc)
                if best is None or s >= best[0]:
                    best = (s, c, i)
        if best is None:
            return True
        if best[0] > score:
            self.items[best[1]].pop(best[2])
            return True
        return False

    def contents(self) -> tuple[list[torch.Tensor], list[float]]:
        """The frames, class by class, and their ages as fractions of the capacity."""
        frames = [it[0] for items in self.items for it in items]
        return frames, [it[2] / self.capacity for items in self.items for it in items]


def strong_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """CoTTA's strong augmentation of a [0, 1] batch, one draw for the whole batch (see the module docstring)."""
    def u(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    h, w = x.shape[-2:]
    x = x.clamp(0, 1)
    for op in torch.randperm(5, generator=gen).tolist():
        if op == 0:
            x = TF.adjust_brightness(x, u(0.6, 1.4))
        elif op == 1:
            x = TF.adjust_contrast(x, u(0.7, 1.3))
        elif op == 2:
            x = TF.adjust_saturation(x, u(0.5, 1.5))
        elif op == 3:
            x = TF.adjust_hue(x, u(-0.06, 0.06))
        else:
            x = TF.adjust_gamma(x.clamp(1e-8, 1.0), u(0.7, 1.3))
    x = TF.pad(x, [h // 2, w // 2], padding_mode="edge")
    ph, pw = x.shape[-2:]
    angle, scale = u(-15, 15), u(0.9, 1.1)
    shift = [round(u(-pw / 16, pw / 16)), round(u(-ph / 16, ph / 16))]
    x = TF.affine(x, angle=angle, translate=shift, scale=scale, shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR)
    sigma = u(0.001, 0.5)
    x = TF.gaussian_blur(x, [5, 5], [sigma, sigma])
    x = TF.center_crop(x, [h, w])
    if float(torch.rand((), generator=gen)) < 0.5:
        x = TF.hflip(x)
    x = x + 0.005 * torch.randn(x.shape, generator=gen).to(x.device)
    return x.clamp(0, 1)


def timeliness(ages: list[float]) -> torch.Tensor:
    """Per-item loss weight exp(-a) / (1 + exp(-a)) for ages a in units of the capacity."""
    a = torch.tensor(ages, dtype=torch.float32)
    return torch.exp(-a) / (1 + torch.exp(-a))


class RoTTA(Method):
    """RBN statistics, a category-balanced memory and a timeliness-weighted teacher-student update."""

    name = "rotta"
    carries_state = True

    def __init__(self, model, lr: float = LR, betas: tuple[float, float] = BETAS, alpha: float = ALPHA, nu: float = NU,
                 capacity: int = CAPACITY, update_every: int = UPDATE_EVERY, lambda_t: float = LAMBDA_T,
                 lambda_u: float = LAMBDA_U, augment: bool = True, seed: int = 0) -> None:
        super().__init__(model)
        if capacity < 1 or update_every < 1 or not 0.0 <= alpha <= 1.0 or not 0.0 <= nu <= 1.0:
            raise ValueError(f"rotta needs capacity, update_every >= 1 and alpha, nu in [0, 1]; got capacity={capacity}, "
                             f"update_every={update_every}, alpha={alpha}, nu={nu}")
        self.alpha, self.nu, self.update_every, self.seed = float(alpha), float(nu), int(update_every), int(seed)
        self.capacity, self.lambda_t, self.lambda_u = int(capacity), float(lambda_t), float(lambda_u)
        self.classes = last_linear(model).out_features
        self.augment = strong_augment if augment else (lambda x, gen: x)
        self.student = copy.deepcopy(model).eval()
        self.student.requires_grad_(False)
        self.student_layers = bn_layers(self.student)
        params = [p for bn in self.student_layers.values() for p in (bn.weight, bn.bias) if p is not None]
        if not params:
            raise ValueError("rotta needs affine BN layers (weight/bias); this model's BN layers have none")
        for p in params:
            p.requires_grad_(True)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher_layers = bn_layers(self.teacher)
        self.optimizer = torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=0.0)
        self._initial = (copy.deepcopy(self.student.state_dict()), copy.deepcopy(self.teacher.state_dict()),
                         copy.deepcopy(self.optimizer.state_dict()), source_stats(model))
        self.reset()

    def reset(self) -> None:
        student, teacher, optimizer, stats = self._initial
        self.student.load_state_dict(student)
        self.teacher.load_state_dict(teacher)
        self.optimizer.load_state_dict(copy.deepcopy(optimizer))
        self.stats = {"student": dict(stats), "teacher": dict(stats)}  # RBN global statistics per copy
        self.memory = MemoryBank(self.capacity, self.classes, self.lambda_t, self.lambda_u)
        self.frames_seen = 0
        self.gen = torch.Generator().manual_seed(self.seed)

    def _rbn(self, which: str, adapt: bool):
        stats, a = self.stats[which], self.alpha

        def make(name, bn):
            def fwd(h):
                mean, var = stats[name]
                if adapt:
                    b_var, b_mean = torch.var_mean(h, dim=(0, 2, 3), unbiased=False)
                    mean, var = (1 - a) * mean + a * b_mean, (1 - a) * var + a * b_var
                    stats[name] = (mean.detach(), var.detach())
                out = (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + bn.eps)
                if bn.weight is not None:
                    out = out * bn.weight[None, :, None, None]
                if bn.bias is not None:
                    out = out + bn.bias[None, :, None, None]
                return out
            return fwd
        return make

    @torch.no_grad()
    def predict(self, x, cameras=None, truth=None) -> torch.Tensor:
        """The teacher with its RBN statistics as they are; nothing enters the memory, nothing is updated."""
        with patched_bn(self.teacher_layers, self._rbn("teacher", adapt=False)):
            return self.teacher(x)

    @torch.no_grad()
    def forward(self, x, cameras=None, truth=None) -> torch.Tensor:
        logits = self.predict(x)
        p = logits.softmax(1)
        labels = p.argmax(1).tolist()
        entropy = (-(p * torch.log(p + 1e-6)).sum(1)).tolist()
        for i in range(len(x)):
            self.memory.add(x[i].detach().clone(), labels[i], entropy[i])
            self.frames_seen += 1
            if self.frames_seen % self.update_every == 0:
                self._update()
        return logits

    def _update(self) -> None:
        frames, ages = self.memory.contents()
        if frames:
            memory = torch.stack(frames)
            strong = self.augment(memory, self.gen)
            with patched_bn(self.teacher_layers, self._rbn("teacher", adapt=True)):
                teacher_out = self.teacher(memory)
            with torch.enable_grad(), patched_bn(self.student_layers, self._rbn("student", adapt=True)):
                student_out = self.student(strong)
                weight = timeliness(ages).to(student_out.device)
                loss = (-(teacher_out.softmax(1) * student_out.log_softmax(1)).sum(1) * weight).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        for t, s in zip(self.teacher.parameters(), self.student.parameters()):
            t.copy_((1 - self.nu) * t + self.nu * s)
