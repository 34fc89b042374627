"""Progress bars show on a terminal only: logs, CI output and reports stay clean."""

from dynbn.progress import progress


def test_progress_is_silent_off_a_terminal(capsys):
    assert list(progress(range(5), desc="fit")) == list(range(5))
    bar = progress(desc="publish", total=3)
    bar.update(3)
    bar.close()
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""


def test_progress_draws_on_a_terminal(monkeypatch, capsys):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    list(progress(range(3), desc="detector", unit="epoch"))
    assert "detector" in capsys.readouterr().err
