"""Compact BN tables: float16 and low-rank round trips, bytes per domain, the CLI's --ranks check."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynbn.bn import table as bn_table
from dynbn.bn.compact import KINDS, bytes_per_domain, from_compact, reconstruction_error, to_compact
from dynbn.bn.per_sample import DomainSwitch

# six synthetic corruptions of real frames: each moves the BN statistics its own way
SHIFTS = {
    "noise_lo": lambda x: x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)),
    "noise_hi": lambda x: x + 0.15 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2)),
    "bright": lambda x: x + 0.2,
    "contrast": lambda x: 0.5 + 0.4 * (x - 0.5),
    "blur": lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
    "dark": lambda x: 0.6 * x,
}
D = len(SHIFTS)


@pytest.fixture(scope="module")
def model(resnet20_module):
    return resnet20_module


@pytest.fixture(scope="module")
def table(model, frames):
    """'clean' (the checkpoint's statistics) plus six corrupted domains from 64 frames each."""
    x = frames[:64]
    table = bn_table.calibrate(model, {d: f(x).clamp(0, 1) for d, f in SHIFTS.items()}, batch_size=64)
    table.stats = {"clean": bn_table.current_stats(model), **table.stats}
    return table


def test_float16_round_trip_is_bounded_and_usable(model, table, frames):
    compact = to_compact(table, "float16")
    assert all(t.dtype == torch.float16 for e in compact.per_domain.values() for t in e.values())
    approx = from_compact(compact)
    approx.check(model)
    assert approx.domains == table.domains
    for key, value in table.flat().items():
        # round to nearest: half a spacing, 2^-11 relative (normal range) or 2^-25 absolute (subnormal)
        bound = 2.0**-11 * value.abs() + 2.0**-25
        assert ((approx.flat()[key] - value).abs() <= bound).all(), key
    assert all(torch.equal(approx.stats["clean"][k], v) for k, v in table.stats["clean"].items())  # kept exactly
    x, index = frames[:32], torch.full((32,), table.domains.index("noise_hi"))
    reference = DomainSwitch(model, table).forward(x, index)
    logits = DomainSwitch(model, approx).forward(x, index)
    assert (logits - reference).abs().max() < 1e-2 * reference.abs().max()  # round-off, measured 0.1 %


def test_float16_refuses_values_it_cannot_hold(table):
    layer = next(iter(table.layers))
    tiny = bn_table.BNTable(table.layers, {d: dict(e) for d, e in table.stats.items()})
    tiny.stats["dark"][f"{layer}.running_var"] = torch.full((table.layers[layer],), 1e-9)
    with pytest.raises(ValueError, match="rounds to 0 in float16"):
        to_compact(tiny, "float16")
    huge = bn_table.BNTable(table.layers, {d: dict(e) for d, e in table.stats.items()})
    huge.stats["dark"][f"{layer}.running_mean"] = torch.full((table.layers[layer],), 1e6)
    with pytest.raises(ValueError, match="beyond float16's range"):
        to_compact(huge, "float16")


def test_full_rank_reconstructs_exactly(model, table):
    approx = from_compact(to_compact(table, "lowrank", D - 1))
    approx.check(model)
    corrupted = list(SHIFTS)
    for layer in table.layers:
        mean, var = table.stacked(layer, corrupted)
        mean2, var2 = approx.stacked(layer, corrupted)
        assert torch.allclose(mean2, mean, atol=1e-5, rtol=0), layer
        assert torch.allclose(var2.log(), var.log(), atol=1e-5, rtol=0), layer  # the stored quantity
    assert all(torch.equal(approx.stats["clean"][k], v) for k, v in table.stats["clean"].items())


def test_reconstruction_error_does_not_grow_with_rank(table):
    errors = [reconstruction_error(table, from_compact(to_compact(table, "lowrank", r)), list(SHIFTS))
              for r in range(1, D)]
    for key in ("mean_rms", "log_var_rms"):  # what the truncated SVD minimises
        series = [e[key] for e in errors]
        assert all(b <= a + 1e-7 for a, b in zip(series, series[1:])), (key, series)
        assert series[0] > 10 * series[-1] and series[-1] < 1e-5, (key, series)


@pytest.mark.parametrize("kind,rank", [("lowrank", 0), ("lowrank", D), ("lowrank", None), ("float16", 2), ("int8", None)])
def test_bad_kind_or_rank_is_rejected(table, kind, rank):
    with pytest.raises(ValueError):
        to_compact(table, kind, rank)


def test_bytes_per_domain_match_a_hand_count(model, table):
    channels = [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert sum(channels) == 16 + 6 * 16 + 6 * 32 + 6 * 64 == 688 and len(channels) == 19
    layers = bn_table.fingerprint(model)
    assert bytes_per_domain(layers, "float32", domains=15) == {"marginal": 688 * 2 * 4, "shared": 0,
                                                              "amortised": 5504.0, "total": 15 * 5504}
    assert bytes_per_domain(layers, "float16")["marginal"] == 688 * 2 * 2
    low = bytes_per_domain(layers, "lowrank", 4, domains=15)
    assert low["marginal"] == 19 * 2 * 4 * 4  # four coefficients per layer and statistic
    assert low["shared"] == 2 * 4 * (688 + 4 * 688)  # a centre and a 4 x C basis per layer and statistic
    assert low["amortised"] == pytest.approx(low["shared"] / 15 + low["marginal"])
    assert bytes_per_domain(layers, "lowrank-fp16", 4)["marginal"] == low["marginal"] // 2
    for kind, rank in [("float32", None), ("float16", None), ("lowrank", 2), ("lowrank-fp16", 3)]:
        assert kind in KINDS
        compact, count = to_compact(table, kind, rank), bytes_per_domain(layers, kind, rank, domains=D)
        assert compact.shared_bytes == count["shared"], kind  # the formula is what the arrays really take
        assert {compact.domain_bytes(d) for d in SHIFTS} == {count["marginal"]}, kind


@pytest.mark.parametrize("ranks", ["0", "1,x", "15", ""])
def test_cli_rejects_bad_ranks(capsys, ranks):
    from dynbn.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["compact-tables", "--ranks", ranks, "--out", "unused"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --ranks" in err and ("1 .. 14" in err or "comma-separated integers" in err), err


def test_cli_parses_good_ranks():
    from dynbn.cli import build_parser

    args = build_parser().parse_args(["compact-tables", "--ranks", "8,2,2,14", "--out", "unused"])
    assert args.ranks == (2, 8, 14)
