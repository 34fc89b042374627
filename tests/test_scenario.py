"""Scenario files: the shipped ones load, bad values are all reported, schedules follow the spec."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from hypothesis import given, settings
from streaming import artifacts_root, tiny, write_scenario

from dynbn.cli import main
from dynbn.schedule import explicit
from simulator.embedded import run_scenario
from simulator.sources import write_demo_video
from simulator.strategies import schedule_specs
from streamer.scenario import SCENARIO_DIR, ScenarioError, cut, load, parse, resolve, shipped


def _within(written, loaded) -> bool:
    """Every value the file wrote is the loaded one (mappings compared key by key, so defaults may fill the rest)."""
    if isinstance(written, dict):
        return isinstance(loaded, dict) and all(k in loaded and _within(v, loaded[k]) for k, v in written.items())
    return written == loaded


@pytest.mark.parametrize("name", ["default", "frequent-shifts", "many-cameras", "video", "acceptance"])
def test_shipped_scenarios_load_as_written(name):
    """A shipped scenario loads with the values its file holds (not silently the defaults), and each camera's
    schedule covers its frames with the scenario's corruptions and severities only."""
    assert name in shipped()
    path = resolve(name)
    scn = load(path)
    written, loaded = yaml.safe_load(path.read_text()), scn.model_dump(mode="json")
    assert written.keys() <= loaded.keys() and all(_within(v, loaded[k]) for k, v in written.items()), name
    for c in range(min(scn.cameras, 4)):
        frames = scn.schedule_for(c).per_frame()
        assert len(frames) == scn.frames_per_camera
        assert {d for d, _ in frames} <= set(scn.corruptions) | {"clean"}
        if scn.schedule.kind != "explicit":  # explicit segments carry their own severities
            assert {s for d, s in frames if d != "clean"} <= set(scn.severities)


def test_default_resolves_without_a_name():
    assert resolve(None) == SCENARIO_DIR / "default.yaml"


def test_every_bad_value_is_listed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cameras: 0\ncorruptions: [fgo]\nseverities: [9]\narms: [nope]\nbatch: {size: 0}\nextra: 1\n")
    with pytest.raises(ScenarioError) as err:
        load(path)
    text = str(err.value)
    for needle in ("cameras", "fgo", "severities", "nope", "batch.size", "extra", "6 problem"):
        assert needle in text


def test_json_and_bad_files(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"name": "j", "cameras": 2, "frames_per_camera": 5}))
    assert load(tmp_path / "s.json").cameras == 2
    (tmp_path / "broken.yaml").write_text("cameras: [1\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load(tmp_path / "broken.yaml")
    with pytest.raises(ScenarioError, match="not found"):
        load(tmp_path / "missing.yaml")
    with pytest.raises(ScenarioError, match="explicit segment domain"):
        parse({"corruptions": ["fog"], "schedule": {"kind": "explicit", "segments": [["snow", 4]]}})
    with pytest.raises(ScenarioError, match="min_len"):
        parse({"schedule": {"kind": "random", "min_len": 9, "max_len": 3}})


def test_an_empty_file_is_an_error_not_the_defaults(tmp_path):
    """A file with nothing in it (blank, only comments, only a document marker) would otherwise load as every
    default, quietly running a scenario nobody wrote: it is refused, naming the file."""
    for name, text in [("a.yaml", ""), ("b.yaml", "# only a comment\n\n# and another\n"), ("c.yml", "  \n\n"),
                       ("d.yaml", "---\n"), ("e.json", ""), ("f.json", " \n")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ScenarioError, match=f"{name}: empty scenario file"):
            load(tmp_path / name)


def test_arm_settings_are_validated_when_loaded():
    arms = ["source", "dynbn_vote", "bn_prior"]
    scn = parse({"arms": arms, "arm_settings": {"dynbn_vote": {"rule": "2,0.1,1"}, "bn_prior": {"prior": 2}}})
    assert scn.arm_settings == {"dynbn_vote": {"rule": "2,0.1,1"}, "bn_prior": {"prior": 2}}
    assert parse({"arms": arms, "arm_settings": {"dynbn_vote": {"rule": {"window": 3, "margin": 0.2, "hold": 2}}}})
    bad = [({"dynbn_open": {}}, "'dynbn_open' has settings but is not one of the scenario's arms"),
           ({"dynbn_vote": {"windw": 2}}, "arm 'dynbn_vote' has no setting 'windw'"),
           ({"dynbn_vote": {"rule": "1,2"}}, "arm 'dynbn_vote', setting 'rule'"),
           ({"bn_prior": {"prior": "strong"}}, "arm 'bn_prior', setting 'prior'"),
           ({"bn_prior": 2}, "arm_settings.bn_prior")]
    for given_settings, needle in bad:
        with pytest.raises(ScenarioError) as err:
            parse({"arms": arms, "arm_settings": given_settings})
        assert needle in str(err.value), str(err.value)


def test_an_oracle_without_the_streamed_corruptions_entry_is_refused_when_checked():
    # spatter is not a benchmark domain: a fit of `all` has no entry the oracle could use
    spec = {"arms": ["source", "dynbn_oracle"], "corruptions": ["clean", "fog", "spatter"], "fit": {"domains": "all"}}
    with pytest.raises(ScenarioError) as err:
        parse(spec)
    assert "'dynbn_oracle' needs a table entry" in str(err.value) and "['spatter']" in str(err.value)
    assert parse({**spec, "fit": {"domains": "scenario"}}).domains() == ["clean", "fog", "spatter"]
    assert parse({**spec, "arms": ["source", "dynbn_vote"]})  # the detector's arms treat it as unseen


def test_the_old_vote_key_says_what_replaced_it(tmp_path):
    (tmp_path / "old.yaml").write_text("arms: [dynbn_vote]\nvote: {window: 2, margin: 0.1, hold: 1}\ncameras: 0\n")
    with pytest.raises(ScenarioError) as err:
        load(tmp_path / "old.yaml")
    text = str(err.value)
    assert "2 problem(s)" in text and "cameras" in text
    assert "vote: replaced by arm_settings; write arm_settings: {dynbn_vote: {rule: ...}}" in text


def test_periodic_schedule_shifts_every_period_and_cameras_differ():
    scn = parse({"cameras": 3, "frames_per_camera": 64, "schedule": {"kind": "periodic", "period": 16},
                 "corruptions": ["clean", "fog", "contrast"]})
    per_cam = [scn.schedule_for(c) for c in range(3)]
    assert all(s.boundaries() == [16, 32, 48] for s in per_cam)
    assert len({tuple(seg.domain for seg in s.segments) for s in per_cam}) > 1


def test_cut_repeats_and_truncates():
    s = cut(explicit([("fog", 3), ("clean", 2)]), 9)
    assert [(x.domain, x.length) for x in s.segments] == [("fog", 3), ("clean", 2), ("fog", 3), ("clean", 1)]


@settings(max_examples=40, deadline=None)
@given(spec=schedule_specs())
def test_generated_schedule_specs_are_followed_and_cover_exactly_the_frames(spec):
    """Each camera's schedule has exactly frames_per_camera frames and follows its spec: periodic shifts every
    period frames to another domain, random lengths stay in [min_len, max_len], explicit segments repeat in order."""
    frames, domains = 37, ["clean", "gaussian_noise", "contrast"]
    scn = parse({"cameras": 2, "frames_per_camera": frames, "schedule": spec, "corruptions": domains})
    for c in range(2):
        segs = scn.schedule_for(c).segments
        lengths = [s.length for s in segs]
        assert sum(lengths) == frames and {s.domain for s in segs} <= set(domains)
        if spec["kind"] == "periodic":
            assert lengths[:-1] == [spec["period"]] * (len(segs) - 1) and lengths[-1] <= spec["period"]
            assert all(a.domain != b.domain for a, b in zip(segs, segs[1:]))
        elif spec["kind"] == "random":
            assert all(spec["min_len"] <= n <= spec["max_len"] for n in lengths[:-1]) and lengths[-1] <= spec["max_len"]
            assert all(a.domain != b.domain for a, b in zip(segs, segs[1:]))
        else:
            written = [(d, sev) for d, n, sev in spec["segments"] for _ in range(n)]
            expected = (written * frames)[:frames]  # repeated, the last repetition cut
            assert scn.schedule_for(c).per_frame() == expected


def test_embedded_run_writes_the_report_contract(tmp_path, tmp_path_factory, data_dir, capsys):
    """`dynbn scenario run FILE --out DIR` with no Redis: in-memory transport, report files, table printed."""
    threads = torch.get_num_threads()
    path = write_scenario(tmp_path, frames_per_camera=16)
    out = tmp_path / "out"
    try:
        code = main(["scenario", "run", str(path), "--out", str(out), "--threads", "1",
                     "--artifacts", str(artifacts_root(tmp_path_factory)), "--data-dir", str(data_dir)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["transport"] == "memory" and rep["frames_published"] == 48 and rep["dead_letters"] == 0
    assert set(rep["results"]) == {"source", "dynbn_vote"}
    assert all(r["frames"] == 48 and 0 <= r["accuracy"] <= 1 for r in rep["results"].values())
    assert rep["latency_ms"]["p99"] >= rep["latency_ms"]["p50"] > 0 and rep["throughput_fps"] > 0
    for name in ("report.md", "accuracy_over_time.png", "accuracy_per_arm.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| dynbn_vote | 48 |" in printed and "report.md" in printed


def test_video_scenario_scores_agreement_with_clean_predictions(tmp_path, tmp_path_factory, data_dir):
    video = write_demo_video(tmp_path / "clip.mp4", frames=30, root=data_dir)
    scn = tiny(cameras=2, frames_per_camera=12, source={"kind": "video", "path": str(video)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep = run_scenario(scn, tmp_path / "out", artifacts=artifacts_root(tmp_path_factory), data_dir=data_dir,
                           log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    assert rep["label_kind"] == "model" and rep["results"]["source"]["frames"] == 24
    clean = rep["results"]["source"]["per_domain"].get("clean")
    assert clean is None or clean == 1.0   # source on an uncorrupted frame agrees with itself
    assert "agreement with the model's prediction" in (tmp_path / "out" / "report.md").read_text()
