"""The frequent-shift benchmark: one prediction per frame and arm, oracle = offline, metrics, CLI contract."""

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dynbn.stream as stream_mod
from dynbn.bn import table as bn_table
from dynbn.detector import Detector
from dynbn.domains import DEFAULT_DOMAINS
from dynbn.methods import REGISTRY, build_method
from dynbn.open_set import fit_open_set
from dynbn.schedule import explicit
from dynbn.spectrum import to_tensor
from dynbn.stream import build_stream
from dynbn.experiments.stream_bench import (BenchConfig, adapt_every, around_shift, correctness, realtime_tables,
                                            run_combo, summarise, switch_delays)
from dynbn.experiments.stream_report import acceptance, catch_up

DOMAINS = ("clean", "dark", "noise")
CONTRACT_ARMS = {"source", "bn_adapt", "bn_prior", "bn_ema", "tent", "unmix_tns", "dynbn_frame", "dynbn_vote",
                 "dynbn_open", "dynbn_soft", "dynbn_prior", "dynbn_oracle", "lame", "rotta"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cheap_domains(monkeypatch):
    """'dark' halves the pixels and 'noise' adds seeded noise: two domains without real corruptions."""
    def apply(images, domain, severity, rng, frost_dir):
        if domain == "dark":
            return images // 2
        if domain == "noise":
            return np.clip(images + rng.normal(0, 30, images.shape), 0, 255).astype(np.uint8)
        return images

    monkeypatch.setattr(stream_mod, "apply", apply)


@pytest.fixture
def parts(resnet20, frames):
    x = frames[:64]
    noisy = (x + 0.12 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    table = bn_table.calibrate(resnet20, {"clean": x, "dark": x * 0.5, "noise": noisy})
    torch.manual_seed(0)
    detector = Detector(list(DOMAINS)).eval()
    fit_open_set(detector, torch.cat([x[:16], x[:16] * 0.5, noisy[:16]]), torch.arange(3).repeat_interleave(16), x[16:48])
    return resnet20, table, detector


class Recorder:
    """Wraps an arm; keeps every batch it was given."""

    def __init__(self, arm):
        self.arm, self.seen = arm, []

    def __call__(self, x, cameras, truth):
        self.seen.append(x.clone())
        return self.arm(x, cameras, truth)


schedules = st.lists(st.lists(st.tuples(st.sampled_from(DOMAINS), st.integers(1, 6)), min_size=1, max_size=4),
                     min_size=1, max_size=3).map(lambda cams: [explicit(s) for s in cams])


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schedules, st.integers(1, 7))
def test_every_frame_gets_exactly_one_prediction_from_every_arm(cheap_domains, parts, test_split, scheds, batch):
    model, table, det = parts
    s = build_stream(test_split.images, test_split.labels, scheds, DOMAINS, 0, None)
    arms = {n: Recorder(build_method(n, model, table=table, detector=det)) for n in REGISTRY}
    runs = run_combo(arms, s, batch)
    frames = torch.cat([b.x for b in s.batches(len(s))])
    for name, arm in arms.items():
        assert torch.equal(torch.cat(arm.seen), frames), name  # each frame once, in arrival order
        assert runs[name].preds.shape == (len(s),) and (runs[name].preds >= 0).all()
        assert len(runs[name].seconds) == -(-len(s) // batch)


def test_oracle_on_a_stream_equals_the_offline_per_frame_result(cheap_domains, parts, test_split):
    model, table, det = parts
    scheds = [explicit([("dark", 5), ("noise", 3), ("clean", 4)]), explicit([("noise", 6), ("dark", 6)])]
    s = build_stream(test_split.images, test_split.labels, scheds, DOMAINS, 1, None)
    oracle = build_method("dynbn_oracle", model, table=table, detector=det)
    runs = run_combo({"dynbn_oracle": oracle}, s, batch_size=5)
    offline = []
    for i, b in enumerate(s.batches(1)):
        bn_table.swap(model, table, b.truth[0])
        with torch.no_grad():
            offline.append(int(model(b.x).argmax(1)))
    assert runs["dynbn_oracle"].preds.tolist() == offline


def test_an_arm_costing_k_adapts_on_one_batch_in_ceil_k():
    assert [adapt_every(k) for k in (0.7, 1.0, 1.0000001, 1.01, 2.0, 2.5)] == [1, 1, 1, 2, 2, 3]


def test_realtime_protocol_skips_only_what_an_arm_has_no_time_for(cheap_domains, parts, test_split):
    """An arm that costs k > 1 adapts on batches 0, ceil(k), ... and predicts in between (an arm without state: as
    source does); one as fast as source keeps its offline result frame for frame."""
    model, table, det = parts
    scheds = [explicit([("dark", 5), ("noise", 3), ("clean", 4)]), explicit([("noise", 6), ("dark", 6)])]
    s = build_stream(test_split.images, test_split.labels, scheds, DOMAINS, 1, None)
    names = ("source", "bn_adapt", "bn_ema", "dynbn_vote")
    arms = {n: build_method(n, model, table=table, detector=det) for n in names}
    offline = {(4, 2): correctness(s, run_combo(arms, s, 2))}
    cost = {"source": 1.0, "bn_adapt": 3.0, "bn_ema": 2.5, "dynbn_vote": 1.0}
    cfg = BenchConfig(periods=(4,), batch_sizes=(2,), arms=names, resamples=50)
    rt = realtime_tables(cfg, arms, {4: s}, offline, {4: np.zeros(len(s), dtype=int)},
                         {"2": cost})
    assert rt["every"] == {"2": {"source": 1, "bn_adapt": 3, "bn_ema": 3, "dynbn_vote": 1}}
    rows = {r["arm"]: r for r in rt["rows"]}
    for arm in ("source", "dynbn_vote"):
        assert rows[arm]["accuracy"] == offline[(4, 2)][arm].mean() and rows[arm]["adapted"] == 1.0
    source = build_method("source", model)
    for arm in ("bn_ema", "bn_adapt"):
        method, preds = build_method(arm, model, table=table, detector=det), []
        for b, batch in enumerate(s.batches(2)):
            call = method if b % 3 == 0 else method.predict
            out = call(batch.x, batch.cameras, batch.truth)
            if arm == "bn_adapt" and b % 3:
                assert torch.equal(out, source(batch.x))  # no state: the skipped batches are source's
            preds += out.argmax(1).tolist()
        assert rows[arm]["accuracy"] == (np.array(preds) == s.labels).mean(), arm
        assert rows[arm]["adapted"] == 4 / 12  # 24 frames in 12 batches, batches 0, 3, 6, 9 adapted
    assert {c["arm"] for c in rt["comparisons"]} == set(names) - {"dynbn_vote"}


def test_switch_delay_and_around_shift_on_a_hand_made_stream(cheap_domains, test_split):
    scheds = [explicit([("clean", 4), ("dark", 4), ("noise", 4)])]
    s = build_stream(test_split.images, test_split.labels, scheds, DOMAINS, 0, None)
    right = np.array([1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0], dtype=bool)  # second shift never caught
    delay, reached, shifts = switch_delays(s, right)
    assert (delay, reached, shifts) == (2.0, 0.5, 2)
    correct = np.arange(12) % 2 == 0
    curve = around_shift(s, correct, before=2, after=3)
    # offsets -2, -1 (frames 2,3 and 6,7), 0, 1, 2 (frames 4,5,6 and 8,9,10)
    assert curve == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_summary_rows_hold_the_contract_keys(cheap_domains, parts, test_split):
    model, table, det = parts
    s = build_stream(test_split.images, test_split.labels, [explicit([("dark", 6), ("noise", 6)])], DOMAINS, 0, None)
    arms = {n: build_method(n, model, table=table, detector=det) for n in ("source", "dynbn_vote")}
    rows, curves = summarise(s, run_combo(arms, s, 4), 6, 4, BenchConfig(first_k=2), list(DOMAINS))
    for row in rows:
        assert {"period", "batch_size", "arm", "accuracy", "frames", "relative_time"} <= set(row)
        assert 0 <= row["accuracy"] <= 1 and row["frames"] == 12
    assert rows[0]["relative_time"] == 1.0 and "switch_delay" in rows[1]
    assert set(curves) == {"source", "dynbn_vote"}


def test_summary_counts_every_arm_on_the_frames_dynbn_open_calls_unknown(cheap_domains, parts, test_split):
    model, table, det = parts
    s = build_stream(test_split.images, test_split.labels, [explicit([("dark", 6), ("noise", 6)])], DOMAINS, 0, None)
    with torch.no_grad():
        dist = det.logits_and_distance(to_tensor(s.images))[1]
    det.ood_threshold.fill_(float(dist.median()))  # about half the frames are unknown
    arms = {n: build_method(n, model, table=table, detector=det) for n in ("source", "dynbn_open")}
    runs = run_combo(arms, s, 4)
    rows, _ = summarise(s, runs, 6, 4, BenchConfig(first_k=2), list(DOMAINS))
    flagged = runs["dynbn_open"].active == len(DOMAINS)
    assert 0 < flagged.sum() < len(s)
    for row in rows:
        correct = runs[row["arm"]].preds == s.labels
        assert row["on_unknown"] == [int(correct[flagged].sum()), int(flagged.sum())]
    no_open = summarise(s, {"source": runs["source"]}, 6, 4, BenchConfig(first_k=2), list(DOMAINS))[0]
    assert "on_unknown" not in no_open[0]


def test_acceptance_and_catch_up_read_the_rows():
    rows = [{"period": n, "batch_size": b, "arm": a, "accuracy": acc, "relative_time": t}
            for n in (4, 64) for b in (1, 64)
            for a, acc, t in (("source", 0.4, 1.0), ("bn_adapt", 0.3 if n == 4 else 0.7, 1.0),
                              ("dynbn_vote", 0.6, 1.05))]
    r = {"periods": [4, 64], "batch_sizes": [1, 64], "arms": ["source", "bn_adapt", "dynbn_vote"], "rows": rows,
         "relative_time_pooled": {"64": {"dynbn_vote": {"relative_time": 1.05, "batches": 8}}}}
    assert catch_up(r) == {(1, "bn_adapt"): 64, (64, "bn_adapt"): 64}
    checks = acceptance(r)
    assert [ok for _, ok, _ in checks] == [True, False, True]  # at N=64 bn_adapt leads dynbn_vote by 0.1 at B=1
    # the same checks for another arm read that arm's rows and time, never dynbn_vote's
    rows += [dict(row, arm="dynbn_prior", accuracy=0.55 if row["period"] == 4 and row["batch_size"] == 64 else 0.9,
                  relative_time=1.3) for row in rows if row["arm"] == "dynbn_vote"]
    r = dict(r, arms=r["arms"] + ["dynbn_prior"], rows=rows,
             relative_time_pooled={"64": {"dynbn_vote": {"relative_time": 1.05, "batches": 8},
                                          "dynbn_prior": {"relative_time": 1.3, "batches": 8}}})
    prior = acceptance(r, "dynbn_prior")
    assert [ok for _, ok, _ in prior] == [True, True, False]  # N=4 B=64: 0.55 still above bn_adapt's 0.3; 1.3 > 1.10
    assert all("dynbn_prior" in what for what, _, _ in prior)


def test_peer_checks_need_the_whole_interval_above_zero_except_iid_at_larger_batches():
    from dynbn.experiments.stream_report import peer_acceptance

    def comp(b, arm, lo, hi):
        return {"batch_size": b, "arm": arm, "diff": (lo + hi) / 2, "ci95": [lo, hi]}

    comps = [comp(1, "bn_adapt", 0.30, 0.40), comp(1, "lame", 0.01, 0.05),
             comp(64, "bn_adapt", -0.02, 0.01),  # behind, but within the interval
             comp(64, "tent", 0.02, 0.05), comp(64, "dynbn_prior", -0.09, -0.05)]  # not a peer: ignored
    r = {"batch_sizes": [1, 64], "recommended": "dynbn_vote", "comparisons": comps, "labels": "iid"}
    assert [ok for _, ok, _ in peer_acceptance(r)] == [True, True]
    assert "closest: lame +3.0" in peer_acceptance(r)[0][2]
    # a correlated label order asks for the interval above 0 at every B: bn_adapt at B = 64 fails it
    checks = peer_acceptance(dict(r, labels="video:8"))
    assert [ok for _, ok, _ in checks] == [True, False] and "bn_adapt" in checks[1][2] and "tent" not in checks[1][2]
    # iid at B = 64: a peer ahead beyond its interval fails
    r["comparisons"] = comps[:2] + [comp(64, "bn_ema", -0.04, -0.01)]
    assert [ok for _, ok, _ in peer_acceptance(r)] == [True, False]
    assert peer_acceptance({"batch_sizes": [1]}) == []  # reports made before the comparisons


def _fake_artifacts(model, folder):
    """A table over every default domain (source statistics, variances scaled a little) and an untrained detector."""
    from dynbn.bn.table import BNTable, current_stats, fingerprint

    stats = current_stats(model)
    table = BNTable(fingerprint(model), {d: {k: v * (1 + 0.01 * i) if "var" in k else v.clone() for k, v in stats.items()}
                                         for i, d in enumerate(DEFAULT_DOMAINS)})
    folder.mkdir()
    table.save(folder / "bn_table-resnet20.safetensors")
    torch.manual_seed(0)
    detector = Detector(list(DEFAULT_DOMAINS)).eval()
    g = torch.Generator().manual_seed(0)
    fit_open_set(detector, torch.rand(48, 3, 32, 32, generator=g), torch.arange(16).repeat(3),
                 torch.rand(16, 3, 32, 32, generator=g))
    detector.save(folder / "detector.safetensors")
    return table


def test_tuning_scores_every_rule_on_training_streams(tmp_path, resnet20, train_split, data_dir):
    from dynbn.data import frost_dir
    from dynbn.experiments.stream_tune import TuneConfig, tune
    from dynbn.vote import VoteRule

    table = _fake_artifacts(resnet20, tmp_path / "art")
    torch.manual_seed(0)
    cfg = TuneConfig(periods=(1, 4), frames=24, cost_frames=2, windows=(1, 2), margins=(0.0, 0.3), holds=(1, 2),
                     clean_discounts=(0.0, 3.0), momenta=(0.1, 0.3), priors=(16,), baseline_frames=8,
                     baseline_batch_sizes=(1, 4))
    r = tune(cfg, resnet20, table, Detector(list(DEFAULT_DOMAINS)).eval(), train_split, frost_dir(data_dir), log=lambda m: None)
    grid = {VoteRule(w, m, h, k) for w in (1, 2) for m in (0.0, 0.3) for h in (1, 2) for k in (0.0, 3.0)}
    assert len(r["rules"]) == 16 and {VoteRule(**x["rule"]) for x in r["rules"]} == grid
    assert VoteRule(**r["best_rule"]) in grid
    assert r["best_objective"] == max(x["objective"] for x in r["rules"]) >= r["frame_rule_objective"]
    assert r["bn_ema_momentum"] in (0.1, 0.3) and set(r["bn_prior"]) == {"16"}


def test_cli_writes_the_contract(tmp_path, resnet20, data_dir, monkeypatch):
    from dynbn.cli import main
    from dynbn.experiments.machine import cpu_model

    art = tmp_path / "art"
    _fake_artifacts(resnet20, art)
    out = tmp_path / "out"
    code = main(["stream-bench", "--periods", "2,8", "--batch-sizes", "1,4", "--cameras", "2", "--frames", "16",
                 "--severity", "3", "--realtime", "--artifacts", str(art), "--data-dir", str(data_dir), "--out", str(out)])
    assert code == 0
    r = json.loads((out / "stream_bench.json").read_text())
    assert (r["severity"], r["cameras"], r["seed"]) == (3, 2, 0) and isinstance(r["severity"], int)
    assert {row["arm"] for row in r["rows"]} == CONTRACT_ARMS
    assert len(r["rows"]) == 2 * 2 * len(CONTRACT_ARMS)
    for row in r["rows"]:
        assert {"period", "batch_size", "arm", "accuracy", "frames", "relative_time"} <= set(row)
        assert row["frames"] == 16 and row["period"] in (2, 8) and row["batch_size"] in (1, 4)
        assert sum(n for _, n in row["by_domain"].values()) == 16  # every frame counted under its domain
        assert sum(k for k, _ in row["by_domain"].values()) == round(row["accuracy"] * 16)
    assert set(r["relative_time_pooled"]) == {"1", "4"}
    rt = r["realtime"]  # the same cells under the real-time protocol, cadences from the pooled times
    assert len(rt["rows"]) == len(r["rows"]) and set(rt["every"]) == {"1", "4"}
    assert all(rt["every"][b][a] == adapt_every(rt["k"][b][a]) for b in rt["every"] for a in CONTRACT_ARMS)
    assert all(rt["k"][b]["source"] == 1.0 for b in rt["k"])
    # the machine the figures depend on: torch and the CPU's vector instructions, in the JSON and the text
    assert r["machine"] == {"torch": torch.__version__, "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpus": os.cpu_count()}
    assert r["command"].startswith("dynbn stream-bench ")
    md = (out / "stream_bench.md").read_text()
    assert f"torch {torch.__version__}, {os.cpu_count()} CPUs ({cpu_model()}) with {r['machine']['cpu_capability']} vector" in md
    assert "## Acceptance" in md and "## The same checks for dynbn_prior" in md and "## Real-time protocol" in md
    assert {p.name for p in out.glob("*.png")} == {"accuracy_vs_period_b1.png", "accuracy_vs_period_b4.png",
                                                    "around_shift_n8.png"}


def test_cli_sets_the_prior_strengths_of_the_prior_arms(tmp_path, resnet20, data_dir, monkeypatch):
    import dynbn.experiments.stream_bench as bench
    from dynbn.cli import main

    built = {}
    make = bench.make_arms

    def spy(cfg, *a):
        arms = make(cfg, *a)
        built.update({name: getattr(arm, "prior", None) for name, arm in arms.items()})
        built["unknown"] = arms["dynbn_open"].unknown_prior
        return arms
    monkeypatch.setattr(bench, "make_arms", spy)
    art = tmp_path / "art"
    _fake_artifacts(resnet20, art)
    out = tmp_path / "out"
    assert main(["stream-bench", "--periods", "4", "--batch-sizes", "2", "--frames", "8", "--arms",
                 "source,bn_prior,dynbn_prior,dynbn_open", "--arm", "dynbn_prior.prior=4", "--arm", "dynbn_open.prior=4",
                 "--arm", "dynbn_open.unknown_prior=2",
                 "--artifacts", str(art),
                 "--data-dir", str(data_dir), "--out", str(out)]) == 0
    assert built["dynbn_prior"] == built["dynbn_open"] == 4 and built["bn_prior"] == 16 and built["unknown"] == 2
    r = json.loads((out / "stream_bench.json").read_text())
    assert r["arm_kwargs"] == {"dynbn_prior": {"prior": "4.0"}, "dynbn_open": {"prior": "4.0", "unknown_prior": "2.0"}}


def test_cli_train_split_streams_the_training_images_held_out_of_fitting(tmp_path, resnet20, data_dir, monkeypatch):
    import dynbn.experiments.stream_bench as bench
    from dynbn import data
    from dynbn.cli import main
    from dynbn.fitting import split_train

    seen = []

    def recording(images, labels, schedules, domains, seed, frost_dir, purpose="test", labels_order="iid"):
        seen.append((images, purpose))
        return build_stream(images, labels, schedules, domains, seed, frost_dir, purpose, labels_order)

    monkeypatch.setattr(bench, "build_stream", recording)
    art, out = tmp_path / "art", tmp_path / "out"
    _fake_artifacts(resnet20, art)
    assert main(["stream-bench", "--periods", "4", "--batch-sizes", "4", "--frames", "8", "--arms", "source,dynbn_open",
                 "--split", "train", "--streams", "held-out", "--artifacts", str(art), "--data-dir", str(data_dir),
                 "--out", str(out)]) == 0
    pool = split_train(data.load_cifar10("train", data_dir), 0)[1].subset(None, 0)
    assert len(seen) == 1 and np.array_equal(seen[0][0], pool.images) and seen[0][1] == "tune"
    r = json.loads((out / "stream_bench.json").read_text())
    assert r["split"] == "train" and r["streams"] == "held-out"
    assert all("on_unknown" in row for row in r["rows"])
    md = (out / "stream_bench.md").read_text()
    assert "training frames" in md and "## Acceptance" not in md and "on training streams" in md


def test_cli_detector_seed_refits_only_the_detector(tmp_path, resnet20, data_dir, monkeypatch, capsys):
    """--detector-seed changes the detector's seed and nothing else of the fit; it refuses --artifacts."""
    import dynbn.cli.stream as stream_cli
    from dynbn.bn.table import BNTable
    from dynbn.cli import main

    art = tmp_path / "art"
    table = _fake_artifacts(resnet20, art)
    fits = []

    def recording_build(model, train, cfg, frost_dir, ks=None, log=print):
        fits.append((cfg.seed, cfg.detector.seed))
        return Detector.load(art / "detector.safetensors"), {cfg.table_images: table}, {}

    monkeypatch.setattr(stream_cli, "build", recording_build)
    args = ["stream-bench", "--periods", "4", "--batch-sizes", "4", "--frames", "8", "--arms", "source,dynbn_vote",
            "--seed", "3", "--data-dir", str(data_dir)]
    assert main(args + ["--detector-seed", "7", "--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert fits == [(3, 7), (3, 3)]  # the data's seed stays --seed; only the detector's follows --detector-seed
    r = json.loads((tmp_path / "a" / "stream_bench.json").read_text())
    assert r["seed"] == 3 and r["detector_seed"] == 7
    assert "seed 3, detector seed 7)" in (tmp_path / "a" / "stream_bench.md").read_text()
    assert "detector_seed" not in json.loads((tmp_path / "b" / "stream_bench.json").read_text())
    assert isinstance(BNTable.load(tmp_path / "a" / "artifacts" / "bn_table-resnet20.safetensors", resnet20), BNTable)

    capsys.readouterr()
    assert main(args + ["--detector-seed", "7", "--artifacts", str(art), "--out", str(tmp_path / "c")]) == 2
    assert "--detector-seed" in capsys.readouterr().err and not (tmp_path / "c" / "stream_bench.json").exists()
    assert main(["tune-vote", "--detector-seed", "7", "--artifacts", str(art), "--data-dir", str(data_dir),
                 "--out", str(tmp_path / "d")]) == 2
    assert "--detector-seed" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_cli_tune_vote_prints_the_arm_settings_that_a_run_then_takes(tmp_path, resnet20, data_dir, monkeypatch, capsys):
    import functools

    import dynbn.cli.stream as stream_cli
    import dynbn.experiments.stream_tune as stream_tune
    from dynbn.cli import main

    tiny = functools.partial(stream_tune.TuneConfig, periods=(2,), frames=16, cost_frames=2, windows=(1, 2),
                             margins=(0.0,), holds=(1,), momenta=(0.1,), priors=(16,), baseline_frames=4,
                             baseline_batch_sizes=(1,))
    monkeypatch.setattr(stream_cli, "TuneConfig", tiny)
    art, out = tmp_path / "art", tmp_path / "out"
    _fake_artifacts(resnet20, art)
    assert main(["tune-vote", "--artifacts", str(art), "--data-dir", str(data_dir), "--out", str(tmp_path / "t")]) == 0
    tuned = json.loads((tmp_path / "t" / "vote_tuning.json").read_text())
    said = capsys.readouterr().out
    settings = [w for line in said.splitlines() for w in line.split() if w.startswith(("dynbn_vote.rule=", "bn_ema.momentum="))]
    assert len(settings) == 2
    args = [a for s in settings for a in ("--arm", s)]
    assert main(["stream-bench", "--periods", "2", "--batch-sizes", "4", "--frames", "8", "--arms", "source,dynbn_vote,bn_ema",
                 *args, "--artifacts", str(art), "--data-dir", str(data_dir), "--out", str(out)]) == 0
    r = json.loads((out / "stream_bench.json").read_text())
    assert r["vote_rule"] == tuned["best_rule"] and r["arm_kwargs"]["bn_ema"]["momentum"] == "0.1"


def test_cli_arms_config_file_and_arm_options_give_the_same_run(tmp_path, resnet20, data_dir):
    from dynbn.cli import main

    art = tmp_path / "art"
    _fake_artifacts(resnet20, art)
    common = ["stream-bench", "--periods", "4", "--batch-sizes", "2", "--frames", "8", "--arms", "source,bn_prior,dynbn_vote",
              "--artifacts", str(art), "--data-dir", str(data_dir)]
    config = tmp_path / "arms.yaml"
    config.write_text("bn_prior: {prior: 2}\ndynbn_vote: {rule: {window: 1, margin: 0.2, hold: 1}, severity: false}\n")
    assert main(common + ["--arms-config", str(config), "--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--arm", "bn_prior.prior=2", "--arm", "dynbn_vote.rule=1,0.2,1", "--arm", "dynbn_vote.severity=false",
                          "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "stream_bench.json").read_text()) for d in "ab")
    assert a["arm_kwargs"] == b["arm_kwargs"] == {"bn_prior": {"prior": "2.0"}, "dynbn_vote": {
        "rule": "VoteRule(window=1, margin=0.2, hold=1, clean_discount=0.0)", "severity": "False"}}
    assert [row["accuracy"] for row in a["rows"]] == [row["accuracy"] for row in b["rows"]]
    assert a["vote_rule"] == {"window": 1, "margin": 0.2, "hold": 1, "clean_discount": 0.0}
    # an --arm wins over the file
    assert main(common + ["--arms-config", str(config), "--arm", "bn_prior.prior=8", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "stream_bench.json").read_text())["arm_kwargs"]["bn_prior"] == {"prior": "8.0"}


@pytest.mark.parametrize("setting, message", [
    ("bn_prior.strength=2", "arm 'bn_prior' has no setting 'strength'; its settings: prior"),
    ("bn_prior.prior=many", "arm 'bn_prior', setting 'prior': expected a number"),
    ("dynbn_vote.rule=1,0.2", "WINDOW,MARGIN,HOLD"),
    ("tent.lr=0.1", "settings given for arms ['tent'] that this run does not include"),
])
def test_cli_refuses_a_bad_arm_setting_naming_the_arm_and_the_key(tmp_path, data_dir, capsys, setting, message):
    from dynbn.cli import main

    code = main(["stream-bench", "--arms", "source,bn_prior,dynbn_vote", "--arm", setting, "--data-dir", str(data_dir),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_arm_option_needs_a_name_a_key_and_a_value(tmp_path):
    from dynbn.cli import main

    for bad in ("bn_prior=2", "bn_prior.prior", ".prior=2"):
        with pytest.raises(SystemExit):
            main(["stream-bench", "--arm", bad, "--out", str(tmp_path / "o")])


def test_stream_bench_help_lists_at_most_twenty_four_options():
    """Protocol choices only, no experiment knobs (21 since --labels, the label order, joined the protocol; 22
    since --realtime, the real-time protocol; 23 since --device; 24 since --precision)."""
    from dynbn.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["stream-bench"]
    assert len(sub._actions) <= 24, [a.option_strings for a in sub._actions]


def test_committed_reports_are_their_json_rendered():
    """Every committed stream-bench report is what ``stream_markdown`` makes of its JSON (no hand edits, no
    report written by older report code)."""
    from pathlib import Path

    from dynbn.experiments.stream_report import stream_markdown

    reports = sorted((Path(__file__).parent.parent / "docs").glob("results/stream_bench_*/stream_bench.json"))
    assert len(reports) == 15
    for path in reports:
        assert stream_markdown(json.loads(path.read_text())) == path.with_suffix(".md").read_text(), path.parent.name


def test_artifacts_take_a_bundle_checked_against_the_model(bundle, resnet20, tmp_path):
    """--artifacts reads a `dynbn fit` bundle (manifest, checksums, the model it was fitted for) as well as an
    earlier run's artifacts/ folder; a bundle for other weights is refused by name."""
    import argparse

    from dynbn.bundle import BundleError, load_bundle
    from dynbn.cli.stream import artifacts

    args = argparse.Namespace(artifacts=str(bundle), model="resnet20")
    detector, table, info = artifacts(args, resnet20, tmp_path)
    ref = load_bundle(bundle)
    assert detector.domains == ref.detector.domains and table.domains == ref.table.domains
    assert info["artifacts"] == str(bundle)
    from dynbn.models import build_model

    other = build_model("resnet32")
    with pytest.raises(BundleError, match="resnet"):
        artifacts(args, other, tmp_path)
