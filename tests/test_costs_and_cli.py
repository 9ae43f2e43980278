"""Cost builders against direct formulas; the CLI's subcommands (the peer speed comparison is
bench/compare_peers.py, tested in test_bench_peers.py, not a subcommand)."""
import pytest
import torch

from grounded_fast.cli import main
from grounded_fast.ot import cost_matrix

from conftest import assert_close


def test_cost_matrix_batched_matches_direct():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(3, 9, 5, generator=g, dtype=torch.float64)
    sq = ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
    assert_close(cost_matrix(x, y, "sqeuclidean"), sq, rtol=1e-10, atol=1e-12)
    assert_close(cost_matrix(x, y, "euclidean"), sq.sqrt(), rtol=1e-10, atol=1e-12)
    cos = torch.nn.functional.cosine_similarity(x[:, :, None, :], y[:, None, :, :], dim=-1)
    assert_close(cost_matrix(x, y, "cosine"), 1 - cos, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="metric"):
        cost_matrix(x, y, "manhattan")
    with pytest.raises(ValueError, match="batch sizes"):
        cost_matrix(x, y[:2], "cosine")


def test_cli_help_lists_its_subcommands(capsys):
    """`grounded-fast --help` works and lists the subcommands; the peer benchmark is not one of them."""
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "report", "verify", "export", "analyse", "demo-data"):
        assert cmd in out, cmd
    assert "compare-pot" not in out and "{run,report,verify,export,analyse,demo-data}" in out
    for gone in ("compare-pot", "bench"):
        with pytest.raises(SystemExit) as exc:
            main([gone])
        assert exc.value.code == 2


def test_cli_export_csv(tmp_path, capsys):
    import csv

    from grounded_fast.experiments.store import ResultStore
    with ResultStore(str(tmp_path / "results.sqlite")) as store:
        store.begin_study("grounding", {"x": 1})
        store.complete_unit("u1", "train", {}, metrics=[{"run_id": "r", "name": "acc", "value": 0.5}])
    assert main(["export", str(tmp_path)]) == 0
    files = capsys.readouterr().out.split()
    metrics = [f for f in files if f.endswith("metrics.csv")]
    assert metrics
    with open(metrics[0]) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["name"] == "acc" and float(rows[0]["value"]) == 0.5
