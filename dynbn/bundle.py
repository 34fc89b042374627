"""Bundles: what serving needs, fitted once, in one folder (like a model repository of an inference server).

    manifest.json          versions; model spec, class count, BN fingerprint and weights' sha256; class
                           names, domains, severities; the fit's recipe and results; sha256 of every other file
    model.safetensors      the classifier's full state dict, BN buffers included: serving needs no data directory
    detector.safetensors   the corruption detector (``Detector.save``)
    bn_table.safetensors   the BN table (``BNTable.save``)

``fit_bundle`` builds one (``dynbn fit``), writing every file under a temporary name and the
manifest last, so a folder with a manifest is complete. ``load_bundle`` reads it back, refuses a
missing, damaged or edited file by name, and, given a model, checks the bundle was fitted for it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ._version import __version__
from .bn.table import BNTable, fingerprint
from .corruptions import corrupt
from .data import CLASSES, Split, frost_dir, load_cifar10, load_images, resize, sha256
from .detector import Detector
from .domains import CLEAN, components
from .fitting import FitConfig, build
from .models import Normalized, architecture, build_model, checkpoint_path, classifier_key, parse_spec
from .spectrum import to_tensor

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE, DETECTOR_FILE, TABLE_FILE = "model.safetensors", "detector.safetensors", "bn_table.safetensors"
FILES = (MODEL_FILE, DETECTOR_FILE, TABLE_FILE)
MIN_IMAGES = 64  # fewer leave a dozen held-out frames to tune on: the clean bias and threshold would be noise
CIFAR_ORIGIN = "cifar10-train"
PSEUDO_LABELS = "model predictions on the clean images (no labels given)"
REFIT = "re-fit with `dynbn fit`"
_KEYS = ("format_version", "dynbn_version", "model", "class_names", "domains", "severities", "fit", "fit_results",
         "files", "created")
_MODEL_KEYS = ("spec", "weights", "weights_sha256", "num_classes", "bn_fingerprint", "input_size")
_log = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle cannot be fitted, read or used with a model; the message names every problem and the fix."""


@dataclass
class Bundle:
    """A loaded bundle: its manifest, the model (eval mode), the detector and the BN table."""

    path: Path
    manifest: dict
    model: Normalized
    detector: Detector
    table: BNTable

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def domains(self) -> list[str]:
        return list(self.manifest["domains"])

    @property
    def severities(self) -> list[int]:
        return list(self.manifest["severities"])

    @property
    def input_size(self) -> int:
        return int(self.manifest["model"]["input_size"])

    @property
    def model_spec(self) -> str:
        return self.manifest["model"]["spec"]


def fit_bundle(model_spec: str, out: str | os.PathLike, *, weights: str | os.PathLike | None = None,
               images: str | os.PathLike | Split | None = None, quick: bool = False, seed: int = 0,
               data_dir: str | os.PathLike | None = None, input_size: int | None = None,
               class_names: list[str] | None = None, config: FitConfig | None = None, log=_log.info) -> Bundle:
    """Fit the detector and the BN table for a model and write both, with the model, as the bundle ``out``.

    ``weights``: a state dict file for ``model_spec`` (else the shipped checkpoint, or a random
    torchvision model); ``images``: a folder, an ``.npz`` (``data.load_images``) or a Split to fit on
    (else CIFAR-10's training split from ``data_dir``), unlabelled ones labelled by the model's own
    clean predictions; ``config``: a recipe of one's own (its seed wins), else quick or full.
    """
    if config is None:
        config = FitConfig.quick(seed) if quick else FitConfig(seed=seed)
        config.detector.seed = seed
    size = input_size or 32
    frost = frost_dir(data_dir) if any("frost" in components(d) for d in config.domains) else None
    _check_corruptions(config.domains, size, frost)
    out = _check_out(Path(out))
    tv_classes = len(class_names) if class_names and weights is None and parse_spec(model_spec)[0] == "tv" else None
    model = build_model(model_spec, data_dir, weights, tv_classes, size)
    names = _class_names(model, model_spec, weights, class_names)
    split, origin = _fit_images(images, size, data_dir)
    split, labels_note = _labelled(model, split, len(names))
    log(f"fitting a bundle for {model_spec} on {len(split)} images ({origin}; labels: {labels_note})")
    detector, tables, timings = build(model, split, config, frost, log=log)
    table = tables[config.table_images]
    manifest = {
        "format_version": FORMAT_VERSION, "dynbn_version": __version__,
        "model": _model_entry(model_spec, model, weights, data_dir, len(names)),
        "class_names": names, "domains": list(detector.domains), "severities": list(detector.severities),
        "fit": {"config": asdict(config), "seed": config.seed, "images": len(split), "origin": origin,
                "labels": labels_note},
        "fit_results": _results(timings),
    }
    _write(out, model, detector, table, manifest)
    log(f"wrote bundle {out.name}: {', '.join(FILES)} and {MANIFEST}")
    return Bundle(out, manifest, model, detector, table)


def _check_corruptions(domains, size: int, frost) -> None:
    """Refuse, before any work, corruptions that cannot make ``size x size`` frames (frost above 62 pixels)."""
    frame = np.full((1, size, size, 3), 128, np.uint8)
    bad = []
    for name in sorted({c for d in domains if d != CLEAN for c in components(d)}):
        try:
            corrupt(frame, name, 5, np.random.default_rng(0), frost_dir=frost)
        except ValueError as exc:
            bad.append(f"{name}: {exc}")
    if bad:
        raise BundleError(f"cannot synthesise {size}x{size} frames for {'; '.join(bad)}; fit at a size every "
                          "corruption supports (--size / input_size), or leave these out of FitConfig.domains")


def _check_out(out: Path) -> Path:
    """The bundle folder, checked: new, empty, or an earlier bundle (never someone else's files)."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"--out {out.name} is a file; give a folder for the bundle")
    if out.is_dir():
        ours = {MANIFEST, *FILES} | {f".{n}.tmp" for n in (MANIFEST, *FILES)}
        other = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if other:
            raise BundleError(f"{out.name} holds files that are not a bundle's ({', '.join(other[:5])}); "
                              "choose a new or empty folder for --out")
    return out


def _class_names(model: Normalized, spec: str, weights, given: list[str] | None) -> list[str]:
    """Class names: given, CIFAR-10's for the shipped checkpoints, else "0", "1", ..."""
    n = model.net.state_dict()[classifier_key(model.net)].shape[0]
    if given is not None:
        if len(given) != n:
            raise BundleError(f"{len(given)} class names were given, the model has {n} classes: "
                              "give one name per class, one a line")
        return [str(c) for c in given]
    if weights is None and parse_spec(spec)[0] == "cifar":
        return list(CLASSES)
    return [str(i) for i in range(n)]


def _fit_images(images, size: int, data_dir) -> tuple[Split, str]:
    """(images at ``size``, their origin for the manifest); at least MIN_IMAGES of them."""
    if images is None:
        train = load_cifar10("train", data_dir)
        split, origin = Split(resize(train.images, size), train.labels), CIFAR_ORIGIN
    elif isinstance(images, Split):
        split, origin = Split(resize(images.images, size), np.asarray(images.labels, np.int64)), "arrays"
    else:
        split, origin = load_images(images, size), Path(images).name
    if len(split) < MIN_IMAGES:
        raise BundleError(f"{origin}: {len(split)} images; fitting needs at least {MIN_IMAGES} "
                          "(a fifth is held out to tune the clean bias and the open-set threshold)")
    return split, origin


@torch.no_grad()
def _labelled(model: Normalized, split: Split, num_classes: int) -> tuple[Split, str]:
    """Fill unknown labels (-1) with the model's predictions on the clean images; returns the note for the manifest.

    Tuning the clean bias then maximises agreement with the clean predictions instead of accuracy:
    the corruptions are synthesised, so a frame's right answer is what the model says without them.
    """
    labels = split.labels
    if labels.max() >= num_classes or labels.min() < -1:
        raise BundleError(f"labels span {labels.min()}..{labels.max()}, the model has {num_classes} classes "
                          f"(0..{num_classes - 1}; -1: unknown); fix the labels or pass the matching weights")
    unknown = np.flatnonzero(labels < 0)
    if not len(unknown):
        return split, "given"
    model.eval()
    chunks = [model(to_tensor(split.images[unknown[i:i + 256]])).argmax(1) for i in range(0, len(unknown), 256)]
    labels = labels.copy()
    labels[unknown] = torch.cat(chunks).numpy()
    if len(unknown) == len(labels):
        return Split(split.images, labels), PSEUDO_LABELS
    return Split(split.images, labels), (f"given for {len(labels) - len(unknown)} images, model predictions on "
                                         f"the clean images for the other {len(unknown)}")


def _model_entry(spec: str, model: Normalized, weights, data_dir, num_classes: int) -> dict:
    """The manifest's ``model``: what a user's model must match (``load_bundle(path, model)``)."""
    if weights is not None:
        digest = sha256(Path(weights))
    elif parse_spec(spec)[0] == "cifar":
        digest = sha256(checkpoint_path(parse_spec(spec)[1], data_dir))
    else:
        digest = None  # a randomly initialised torchvision model: model.safetensors is its only record
    return {"spec": spec, "weights": Path(weights).name if weights is not None else None, "weights_sha256": digest,
            "num_classes": num_classes, "bn_fingerprint": fingerprint(model), "input_size": model.input_size}


def _results(timings: dict) -> dict:
    """build()'s JSON-able scalars, and the held-out accuracies at the chosen clean bias."""
    out = {k: (v if math.isfinite(v) else None) for k, v in timings.items() if isinstance(v, (int, float))}
    evidence = timings.get("clean_bias_evidence")
    if evidence:
        chosen = evidence["grid"][f"{evidence['chosen']:.2f}"]
        out.update(held_out_clean_accuracy=chosen["clean"], held_out_corrupted_accuracy=chosen["corrupted"],
                   checkpoint_clean_accuracy=evidence["source_clean"])
    return out


def _write(out: Path, model: Normalized, detector: Detector, table: BNTable, manifest: dict) -> None:
    """Every file under a temporary name, then renamed; the manifest last (its absence marks an unfinished bundle)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # an earlier bundle here stops being one until this one is complete
    # clones: safetensors refuses tensors sharing memory (tied weights), and needs contiguous ones
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    writers = {MODEL_FILE: lambda p: save_file(state, str(p), metadata={"spec": manifest["model"]["spec"]}),
               DETECTOR_FILE: detector.save, TABLE_FILE: table.save}
    for name, write in writers.items():
        tmp = out / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, out / name)
    manifest["files"] = {name: sha256(out / name) for name in FILES}
    manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / MANIFEST)


def load_bundle(path: str | os.PathLike, model: Normalized | None = None) -> Bundle:
    """Read a bundle, checking every file against the manifest's sha256; BundleError names each problem.

    Without ``model`` the bundle's own model is rebuilt from model.safetensors (no data directory);
    with one (a user's model), the bundle must have been fitted for it: same spec, classes, input
    size, BN layers and weights, and that model is the one returned.
    """
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest)
    state = load_file(str(path / MODEL_FILE))
    if model is None:
        model = _rebuild(manifest["model"], state)
    else:
        check_model(manifest, state, model)
    detector = _load_detector(path, manifest)
    try:
        table = BNTable.load(path / TABLE_FILE, model)
    except ValueError as exc:
        raise BundleError(f"{TABLE_FILE}: {exc}; {REFIT}") from exc
    missing = [d for d in manifest["domains"] if d not in table.stats]
    if missing:
        raise BundleError(f"{TABLE_FILE} lacks the manifest's domains {missing}; {REFIT}")
    _log.info("loaded bundle %s: %s, %d domains", path.name, manifest["model"]["spec"], len(manifest["domains"]))
    return Bundle(path, manifest, model.eval(), detector, table)


def read_manifest(path: Path) -> dict:
    """The parsed manifest.json of a bundle folder, checked for its format version and keys."""
    file = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"bundle folder not found: {path}; give a folder written by `dynbn fit`")
    if not file.is_file():
        raise BundleError(f"{path.name}: no {MANIFEST}: not a bundle folder, or its fit did not finish; "
                          f"fit one with `dynbn fit --out {path.name}`")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{MANIFEST} is not JSON ({exc}): the file is damaged; {REFIT}") from exc
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise BundleError(f"{MANIFEST} has no format_version: not a dynbn bundle manifest; {REFIT}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{MANIFEST}: format_version {manifest['format_version']!r} is not supported; this dynbn "
                          f"({__version__}) reads format_version {FORMAT_VERSION}: {REFIT}, or load it with the dynbn "
                          f"that wrote it ({manifest.get('dynbn_version', 'unknown version')})")
    missing = [k for k in _KEYS if k not in manifest]
    missing += [f"model.{k}" for k in _MODEL_KEYS if k not in manifest.get("model", {})]
    if missing:
        raise BundleError(f"{MANIFEST} lacks {', '.join(missing)}: it is damaged or was edited; {REFIT}")
    return manifest


def verify_files(path: Path, manifest: dict) -> None:
    """Every file the manifest lists exists and has its sha256; raises naming every missing or damaged one."""
    files = manifest["files"]
    problems = [f"{name}: not listed in the manifest's files" for name in FILES if name not in files]
    for name, want in files.items():
        file = path / name
        if Path(name).name != name or name.startswith("."):
            problems.append(f"{name!r}: not a plain file name; the manifest was edited")
        elif not file.is_file():
            problems.append(f"{name}: missing from the bundle (copy the whole folder)")
        elif (got := sha256(file)) != want:
            problems.append(f"{name}: sha256 {got[:12]}.. does not match the manifest's {str(want)[:12]}..: "
                            "the file is damaged or was changed after fitting")
    if problems:
        raise BundleError(f"bundle {path.name} fails its check ({len(problems)} problems): {'; '.join(problems)}; {REFIT}")


def _rebuild(entry: dict, state: dict) -> Normalized:
    """The bundle's model from its spec and model.safetensors (strict)."""
    try:
        model = architecture(entry["spec"], entry["num_classes"], entry["input_size"])
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"{MODEL_FILE} does not rebuild {entry['spec']!r} ({exc}); {REFIT}") from exc
    return model


def check_model(manifest: dict, state: dict, model) -> None:
    """Raise BundleError listing every way ``model`` differs from the one the bundle was fitted for."""
    if not isinstance(model, Normalized):
        raise BundleError(f"the model must be a dynbn model taking [0, 1] frames (dynbn.build_model), "
                          f"got {type(model).__name__}")
    entry, problems = manifest["model"], []
    theirs, ours = entry["bn_fingerprint"], fingerprint(model)
    if model.spec is not None and model.spec != entry["spec"]:
        problems.append(f"bundle was fitted for {entry['spec']} ({len(theirs)} BN layers), this model is "
                        f"{model.spec} ({len(ours)} BN layers)")
    classes = model.net.state_dict()[classifier_key(model.net)].shape[0]
    if classes != entry["num_classes"]:
        problems.append(f"bundle has {entry['num_classes']} classes, this model {classes}")
    if model.input_size != entry["input_size"]:
        problems.append(f"bundle takes {entry['input_size']}x{entry['input_size']} frames, this model "
                        f"{model.input_size}x{model.input_size}")
    layers = _fingerprint_problems(theirs, ours)
    problems += layers
    if not layers and classes == entry["num_classes"]:  # same tensors' shapes: compare the values
        mine = model.state_dict()
        differ = [k for k, v in state.items() if not k.endswith("num_batches_tracked")
                  and (k not in mine or mine[k].shape != v.shape or not torch.equal(mine[k].cpu(), v))]
        if differ:
            fitted = entry["weights"] or ("the shipped checkpoint" if entry["weights_sha256"] else "a random initialisation")
            problems.append(f"weights differ from the fitted model's ({fitted}) in {len(differ)} tensors, "
                            f"e.g. {', '.join(differ[:3])}")
    if problems:
        raise BundleError(f"bundle does not fit this model ({len(problems)} problems): {'; '.join(problems)}. "
                          f"Fit one for it (`dynbn fit --model SPEC --weights FILE`) or load the bundle without a model")


def _fingerprint_problems(theirs: dict, ours: dict) -> list[str]:
    """How a model's BN layers (``ours``, layer -> channels) differ from a bundle's (``theirs``)."""
    out = []
    missing, extra = [k for k in theirs if k not in ours], [k for k in ours if k not in theirs]
    wrong = [f"{k}: bundle {theirs[k]}, model {ours[k]}" for k in theirs if k in ours and theirs[k] != ours[k]]
    for what, keys in (("of the bundle's BN layers missing from the model", missing),
                       ("BN layers of the model not in the bundle", extra),
                       ("BN layers with other channel counts", wrong)):
        if keys:
            out.append(f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    return out


def _load_detector(path: Path, manifest: dict) -> Detector:
    """The detector, checked against the manifest's domains, severities and input size."""
    try:
        detector = Detector.load(path / DETECTOR_FILE)
    except ValueError as exc:
        raise BundleError(f"{DETECTOR_FILE}: {exc}; {REFIT}") from exc
    size, problems = manifest["model"]["input_size"], []
    if detector.domains != manifest["domains"]:
        problems.append(f"its domains {detector.domains} are not the manifest's {manifest['domains']}")
    if list(detector.severities) != list(manifest["severities"]):
        problems.append(f"its severities {list(detector.severities)} are not the manifest's {manifest['severities']}")
    if (detector.height, detector.width) != (size, size):
        problems.append(f"it reads {detector.height}x{detector.width} frames, the manifest's input size is {size}")
    if problems:
        raise BundleError(f"{DETECTOR_FILE} does not match {MANIFEST}: {'; '.join(problems)}; {REFIT}")
    return detector
