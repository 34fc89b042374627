"""Corruption detector: a 3-layer MLP over the normalised Fourier spectrum of each frame.

``fit`` standardises the spectra (per-feature mean and std of the training set, stored
in the detector) and trains the MLP with AdamW (one-cycle schedule) and cross-entropy. The detector is a plain
``nn.Module``: ``forward`` takes [0, 1] frames ``B x 3 x H x W`` and returns logits over
its domains; ``predict_proba`` returns probabilities. ``save``/``load`` use safetensors
with the domain list and the architecture in the metadata, so nothing is unpickled.

A detector may carry a *severity head* (``attach_severity``): a second detector of the same
shape over the severity-aware domains (``"fog@3"``: every corruption at every severity, and
clean), trained on the same frames. ``severity_logprobs`` turns its logits into, for each of
the main detector's domains, log-probabilities over the severities *given* that domain; the
vote (``dynbn.vote``) sums them over a camera's frames. It is saved in the same file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .device import full_precision
from .domains import CLEAN
from .progress import progress
from .spectrum import EPS, feature_dim, spectrum


@dataclass
class DetectorConfig:
    """Architecture and training recipe (defaults used for every reported figure)."""

    # (256, 128): half the multiply-accumulates of (512, 256) for the same accuracy (measured on
    # held-out test frames at severity 5 with this recipe: 59.5 % against 59.2 % for the classifier
    # with the detected statistics, 73.5 % against 74.8 % right domains), and the detector is the
    # largest part of dynbn_vote's cost over the plain model
    hidden: tuple[int, int] = (256, 128)
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    seed: int = 0


class Detector(nn.Module):
    """spectrum -> standardise -> Linear-ReLU-Linear-ReLU-Linear -> domain logits."""

    def __init__(self, domains: list[str], height: int = 32, width: int = 32,
                 hidden: tuple[int, int] = (256, 128), dropout: float = 0.1, eps: float = EPS) -> None:
        super().__init__()
        self.domains = list(domains)
        self.height, self.width, self.eps = height, width, eps
        dim = feature_dim(height, width)
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))
        # log-prior adjustment added to the logits; fitting.tune_clean_bias sets the clean entry
        self.register_buffer("logit_bias", torch.zeros(len(self.domains)))
        # open set (dynbn.open_set.fit_open_set): per domain, the mean, precision and log-determinant
        # of the covariance of the penultimate features, and the score above which a frame is
        # "unknown" (inf: not fitted)
        self.register_buffer("ood_means", torch.zeros(len(self.domains), hidden[1]))
        self.register_buffer("ood_precision", torch.zeros(len(self.domains), hidden[1], hidden[1]))
        self.register_buffer("ood_logdet", torch.zeros(len(self.domains)))
        self.register_buffer("ood_threshold", torch.tensor(float("inf")))
        # where the known frames' statistics start to lean towards the checkpoint's (dynbn_open's ramp,
        # from this score up to ood_threshold); inf: no ramp (files from before it)
        self.register_buffer("ood_low", torch.tensor(float("inf")))
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden[0]), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden[1], len(self.domains)),
        )

        self.severity: Detector | None = None      # optional severity head (attach_severity)
        self.severities: tuple[int, ...] = ()

    def spectra(self, x: torch.Tensor) -> torch.Tensor:
        """Flat normalised spectra ``B x 3*H*(W//2+1)`` of frames ``B x 3 x H x W`` (before standardising)."""
        if tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(f"detector was trained on {self.height}x{self.width} frames, got {tuple(x.shape[-2:])}")
        return spectrum(x, self.eps).flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised flat spectra ``B x D`` of frames ``B x 3 x H x W``."""
        return (self.spectra(x) - self.feat_mean) / self.feat_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x):  # under --precision bf16/fp16 the detector stays float32
            return self.mlp(self.features(x)) + self.logit_bias

    # -- severity head ---------------------------------------------------------------------------

    def attach_severity(self, head: "Detector", severities: tuple[int, ...]) -> None:
        """Carry ``head``, a detector over ``"{domain}@{s}"`` for every corrupted domain of this one
        and every s in ``severities`` (plus any other names, such as clean, which are ignored)."""
        if (head.height, head.width, head.eps) != (self.height, self.width, self.eps):
            raise ValueError("the severity head must read the same spectrum (frame size and eps) as the detector")
        missing = [f"{d}@{s}" for d in self.domains if d != CLEAN for s in severities
                   if f"{d}@{s}" not in head.domains]
        if missing:
            raise ValueError(f"the severity head lacks the domains {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        self.severity, self.severities = head.eval(), tuple(int(s) for s in severities)
        # column of the head's logits for (domain d, severity s), d over self.domains; clean (or any domain
        # without severities) points at column 0 for every s: its log-probabilities are then uniform, unused
        cols = [[head.domains.index(f"{d}@{s}") if f"{d}@{s}" in head.domains else 0 for s in self.severities]
                for d in self.domains]
        # D x S; a buffer (not saved) so that it moves with the detector: index_select takes it on the same device
        self.register_buffer("_severity_cols", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.has_levels = torch.tensor([d != CLEAN for d in self.domains])  # domains whose severity is read

    @property
    def has_severity(self) -> bool:
        return self.severity is not None

    def severity_logprobs(self, flat: torch.Tensor) -> torch.Tensor:
        """``B x D x S`` log-probabilities of each severity given each of this detector's domains, from
        flat spectra ``flat`` (``spectra(x)``): the head's logits, softmaxed within each domain's S columns."""
        if self.severity is None:
            raise ValueError("this detector has no severity head")
        head = self.severity
        h = head._hidden((flat - head.feat_mean) / head.feat_std)
        weight, bias = head._transposed()[2]
        logits = torch.addmm(bias, h, weight)
        cols = self._severity_cols
        return logits.index_select(1, cols.flatten()).view(len(logits), *cols.shape).log_softmax(dim=2)

    def _hidden(self, z: torch.Tensor) -> torch.Tensor:
        """The MLP's last hidden layer from standardised spectra ``z``: ``mlp[:-1]``, outside training as
        ``addmm`` on the layers' transposed weights (what ``F.linear`` computes, without the modules' and
        the transposes' per-call overhead, which at batch size 1 cost as much as the multiplications;
        dropout is off outside training)."""
        if self.training:
            return self.mlp[:-1](z)
        (w1, b1), (w2, b2), _ = self._transposed()
        return torch.addmm(b2, torch.addmm(b1, z, w1).relu_(), w2).relu_()

    def _transposed(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight.t(), bias) of the MLP's three linear layers. Without gradients, detached views kept from
        call to call and remade when a weight's storage changes (``to``, loading; in-place updates are seen
        through the views); with gradients, fresh views each call."""
        linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
        if torch.is_grad_enabled():
            return [(m.weight.t(), m.bias) for m in linears]
        key = tuple(m.weight.data_ptr() for m in linears)
        if getattr(self, "_transposed_key", None) != key:
            self._transposed_views = [(m.weight.detach().t(), m.bias.detach()) for m in linears]
            self._transposed_key = key
        return self._transposed_views

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations ``B x hidden[1]`` (what the open-set score reads)."""
        return self._hidden(self.features(x))

    def logits_and_distance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Domain logits and the open-set score per frame, from one pass over the spectrum.

        The score is the smallest, over the domains, of the squared Mahalanobis distance of the
        frame's penultimate features to the domain's mean under the domain's own covariance, plus
        that covariance's log-determinant: -2 log of the domain's Gaussian density, up to a
        constant. Above ``ood_threshold`` the frame is unknown. ``inf`` threshold: the open set
        was never fitted.
        """
        logits, distance, _ = self.read(x, distance=True)
        return logits, distance

    def read(self, x: torch.Tensor, distance: bool = False, severity: bool = False):
        """(logits, open-set score or None, ``severity_logprobs`` or None) from one spectrum (in float32,
        under autocast too)."""
        with full_precision(x):
            return self._read(x, distance, severity)

    def _read(self, x: torch.Tensor, distance: bool, severity: bool):
        flat = self.spectra(x)
        h = self._hidden((flat - self.feat_mean) / self.feat_std)
        weight, bias = self._transposed()[2]
        logits = torch.addmm(bias, h, weight) + self.logit_bias
        dist = None
        if distance:
            # (h - m_d)' P_d (h - m_d) = h' P_d h - 2 h' P_d m_d + m_d' P_d m_d, for every domain d at once
            hp = torch.einsum("bi,dij->bdj", h, self.ood_precision)                    # B x D x H
            quad = (hp * h[:, None, :]).sum(2) - 2 * (hp * self.ood_means).sum(2)       # B x D
            dist = (quad + self._mean_norms() + self.ood_logdet).min(1).values
        return logits, dist, self.severity_logprobs(flat) if severity else None

    def _mean_norms(self) -> torch.Tensor:
        """m_d' P_d m_d per domain: a constant of the fit, recomputed only when the buffers change
        (at batch size 1 it would otherwise cost as much as the MLP for every frame)."""
        key = (self.ood_means._version, self.ood_precision._version, self.ood_means.data_ptr(),
               self.ood_precision.data_ptr())
        if getattr(self, "_norms_key", None) != key:
            self._norms = torch.einsum("di,dij,dj->d", self.ood_means, self.ood_precision, self.ood_means)
            self._norms_key = key
        return self._norms

    @property
    def has_open_set(self) -> bool:
        return bool(torch.isfinite(self.ood_threshold))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Domain probabilities ``B x len(domains)`` (eval mode)."""
        self.eval()
        return self(x).softmax(dim=1)

    def macs(self) -> int:
        """Multiply-accumulates of the MLP (and of the severity head's) for one frame (the FFT is counted separately)."""
        own = sum(m.in_features * m.out_features for m in self.mlp if isinstance(m, nn.Linear))
        return own + (self.severity.macs() if self.severity is not None else 0)

    def save(self, path: str | os.PathLike) -> None:
        """safetensors with domains and architecture in the metadata."""
        meta = self._meta()
        # a severity head's open-set buffers are never fitted (its D x H x H precision would be zeros)
        state = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith("severity.ood_")}
        if self.severity is not None:
            meta.update({f"severity_{k}": v for k, v in self.severity._meta().items()},
                        severities=json.dumps(list(self.severities)))
        save_file(state, str(path), metadata=meta)

    def _meta(self) -> dict[str, str]:
        hidden = [m.out_features for m in self.mlp if isinstance(m, nn.Linear)][:2]
        return {"domains": json.dumps(self.domains), "height": str(self.height), "width": str(self.width),
                "hidden": json.dumps(hidden), "eps": repr(self.eps)}

    @classmethod
    def _from_meta(cls, meta: dict[str, str]) -> "Detector":
        return cls(json.loads(meta["domains"]), int(meta["height"]), int(meta["width"]),
                   tuple(json.loads(meta["hidden"])), eps=float(meta["eps"]))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Detector":
        """Load a saved detector; a wrong or damaged file raises ValueError naming it."""

        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            state = load_file(str(path))
            det = cls._from_meta(meta)
            if "severities" in meta:  # a severity head: its own architecture, keys under "severity."
                head = cls._from_meta({k[len("severity_"):]: v for k, v in meta.items() if k.startswith("severity_")})
                det.attach_severity(head, tuple(json.loads(meta["severities"])))
            # a severity head's open-set buffers are never fitted: older files carry them, newer ones do not
            state = {k: v for k, v in state.items() if not k.startswith("severity.ood_")}
            precision = state.get("ood_precision")
            if precision is not None and precision.dim() == 2:
                # a file from before per-domain covariances: its one shared precision is every
                # domain's, with equal log-determinants, i.e. the score it was fitted with
                state["ood_precision"] = precision.expand(len(det.domains), -1, -1).contiguous()
                state.setdefault("ood_logdet", torch.zeros(len(det.domains)))
            missing, unexpected = det.load_state_dict(state, strict=False)
            # files from before the open set
            missing = [k for k in missing if not (k.startswith("ood_") or k.startswith("severity.ood_"))]
            if missing or unexpected:
                raise KeyError(f"missing {missing}, unexpected {unexpected}")
        except Exception as exc:
            raise ValueError(f"{path}: not a dynbn detector file ({exc})") from exc
        return det.eval()


def fit(frames: torch.Tensor, labels: torch.Tensor, domains: list[str],
        config: DetectorConfig | None = None, log=None) -> Detector:
    """Train a detector on frames ``N x 3 x H x W`` in [0, 1] with domain indices ``labels`` (N,)
    (``config``: the recipe, ``DetectorConfig()`` by default)."""
    config = DetectorConfig() if config is None else config
    torch.manual_seed(config.seed)
    det = Detector(domains, frames.shape[-2], frames.shape[-1], config.hidden, config.dropout)
    with torch.no_grad():
        feats = torch.cat([spectrum(frames[i:i + 4096], det.eps).flatten(1) for i in range(0, len(frames), 4096)])
        det.feat_mean.copy_(feats.mean(0))
        det.feat_std.copy_(feats.std(0).clamp_min(1e-6))
        feats = (feats - det.feat_mean) / det.feat_std
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(det.mlp.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * ((len(feats) + config.batch_size - 1) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps)
    det.train()
    for epoch in progress(range(config.epochs), desc="detector", unit="epoch"):
        order = torch.randperm(len(feats), generator=gen)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            idx = order[start:start + config.batch_size]
            loss = F.cross_entropy(det.mlp(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if log:
            log(f"detector epoch {epoch + 1}/{config.epochs}: loss {total / len(feats):.4f}")
    return det.eval()


def config_dict(config: DetectorConfig) -> dict:
    """The config as plain JSON-able values (for reports)."""
    return asdict(config)
