"""Block-bootstrap intervals and paired comparisons (dynbn.uncertainty) and their place in stream-bench."""

import numpy as np
import pytest
from test_stream_bench import DOMAINS, cheap_domains, parts  # noqa: F401 (fixtures)

from dynbn.experiments.stream_bench import BenchConfig, run_bench
from dynbn.experiments.stream_report import stream_markdown
from dynbn.uncertainty import block_bootstrap, block_ids, paired, resampled_accuracies


def _blocks(n_blocks: int, size: int) -> np.ndarray:
    return np.repeat(np.arange(n_blocks), size)


def _width(ci) -> float:
    return ci[1] - ci[0]


def _correlated(n_blocks: int, size: int = 10, share: float = 0.6) -> np.ndarray:
    """Every frame of a block alike: the first ``share`` of the blocks right, the rest wrong."""
    return np.repeat(np.arange(n_blocks) < share * n_blocks, size)


def test_block_ids_number_camera_segment_pairs():
    ids = block_ids(np.array([0, 1, 0, 1, 0]), np.array([0, 0, 0, 1, 1]))
    assert ids[0] == ids[2] and len(set(ids.tolist())) == 4 and ids.max() == 3


def test_block_interval_holds_the_estimate_and_is_wider_than_a_frame_bootstrap_when_blocks_are_alike():
    correct = {"a": _correlated(20)}
    blocks = block_bootstrap(correct, _blocks(20, 10), 1000, np.random.default_rng(0))["a"]
    frames = block_bootstrap(correct, np.arange(200), 1000, np.random.default_rng(0))["a"]
    assert blocks["accuracy"] == frames["accuracy"] == pytest.approx(0.6)
    assert blocks["ci95"][0] < 0.6 < blocks["ci95"][1]
    # 20 independent units, not 200: about sqrt(10) times wider
    assert _width(blocks["ci95"]) > 2 * _width(frames["ci95"])


def test_block_interval_shrinks_with_more_blocks():
    widths = [_width(block_bootstrap({"a": _correlated(k)}, _blocks(k, 10), 1000, np.random.default_rng(1))["a"]["ci95"])
              for k in (20, 80, 320)]
    assert widths[0] > 1.5 * widths[1] > 2.25 * widths[2]


def test_block_interval_weighs_blocks_by_their_frames():
    """Accuracy on a resample is right frames over frames, not a mean of block accuracies."""
    blocks = np.array([0] * 9 + [1])
    res = resampled_accuracies({"a": np.array([True] * 9 + [False])}, blocks, 500, np.random.default_rng(0))["a"]
    assert set(np.round(res, 6)) <= {1.0, 0.9, 0.0}  # {0,0}, {0,1}, {1,1}: 18/18, 9/10, 0/2


def _arms_differing_in_one_block(n_blocks=100, size=10, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.random(n_blocks * size) < 0.6
    b = a.copy()
    a[3 * size:4 * size], b[3 * size:4 * size] = True, False  # block 3: a right everywhere, b wrong everywhere
    return a, b, _blocks(n_blocks, size)


def test_paired_difference_of_arms_that_differ_in_one_block_is_its_share_and_tighter_than_unpaired():
    a, b, blocks = _arms_differing_in_one_block()
    out = paired([({"a": a, "b": b}, blocks)], "a", 1000, np.random.default_rng(0))
    assert set(out) == {"b"}
    assert out["b"]["diff"] == pytest.approx(10 / 1000)
    low, high = out["b"]["ci95"]
    assert 0 <= low <= 0.01 <= high  # b is never right where a is wrong
    # unpaired: each arm on its own block draws
    ra = resampled_accuracies({"a": a}, blocks, 1000, np.random.default_rng(1))["a"]
    rb = resampled_accuracies({"b": b}, blocks, 1000, np.random.default_rng(2))["b"]
    unpaired = np.percentile(ra - rb, [2.5, 97.5])
    assert high - low < 0.6 * (unpaired[1] - unpaired[0])


def test_paired_difference_with_itself_is_exactly_zero():
    a, _, blocks = _arms_differing_in_one_block()
    out = paired([({"rec": a, "twin": a.copy()}, blocks)], "rec", 500, np.random.default_rng(0))
    assert out["twin"] == {"diff": 0.0, "ci95": [0.0, 0.0]}


def test_paired_averages_the_differences_over_streams():
    a, b, blocks = _arms_differing_in_one_block()
    same = {"a": a, "b": a.copy()}
    out = paired([({"a": a, "b": b}, blocks), (same, blocks)], "a", 1000, np.random.default_rng(0))
    assert out["b"]["diff"] == pytest.approx(0.005)
    assert 0 <= out["b"]["ci95"][0] <= 0.005 <= out["b"]["ci95"][1]


def test_tiny_stream_bench_carries_intervals_and_paired_comparisons(cheap_domains, parts, test_split):  # noqa: F811
    model, table, det = parts
    arms = ("source", "bn_adapt", "dynbn_vote")
    cfg = BenchConfig(periods=(2, 4), batch_sizes=(1, 4), frames=16, cameras=2, domains=DOMAINS, arms=arms,
                      resamples=200)
    r = run_bench(cfg, model, table, det, test_split, None, log=lambda m: None)
    assert r["recommended"] == "dynbn_vote" and r["resamples"] == 200
    for row in r["rows"]:
        low, high = row["ci95"]
        assert 0 <= low <= high <= 1
    assert [(c["batch_size"], c["arm"]) for c in r["comparisons"]] == [(b, a) for b in (1, 4) for a in arms[:2]]
    acc = {(x["period"], x["batch_size"], x["arm"]): x["accuracy"] for x in r["rows"]}
    for c in r["comparisons"]:
        b, arm = c["batch_size"], c["arm"]
        assert c["diff"] == pytest.approx(np.mean([acc[(n, b, "dynbn_vote")] - acc[(n, b, arm)] for n in (2, 4)]))
        assert -1 <= c["ci95"][0] <= c["ci95"][1] <= 1
    md = stream_markdown(r)
    assert "## Paired comparisons: dynbn_vote against every other arm" in md
    assert "| B | arm | diff | 95 % interval | above 0 |" in md
    c = r["comparisons"][0]
    assert (f"| {c['batch_size']} | {c['arm']} | {100 * c['diff']:+.1f} | [{100 * c['ci95'][0]:+.1f}, "
            f"{100 * c['ci95'][1]:+.1f}] |") in md
    x = r["rows"][0]
    assert f"{100 * x['accuracy']:.1f} [{100 * x['ci95'][0]:.1f}, {100 * x['ci95'][1]:.1f}]" in md
    # a report without the new keys renders without them
    old = {**r, "rows": [{k: v for k, v in x.items() if k != "ci95"} for x in r["rows"]]}
    del old["comparisons"]
    plain = stream_markdown(old)
    assert "Paired comparisons" not in plain and " [" not in plain.split("## Accuracy (%)")[1].split("## ")[0]
