"""The one progress look (``bft_ray.progress``): live bars on terminals, lines in logs."""

from __future__ import annotations

import io

from rich.console import Console

from bft_ray.progress import progress_bar, track


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=100), out


def test_a_log_gets_a_line_per_tenth_and_one_at_the_end():
    console, out = _console(terminal=False)
    with progress_bar("runs", total=50, console=console) as bar:
        for i in range(50):
            bar.advance(status=f"ok {i + 1}")
    lines = out.getvalue().splitlines()
    # 10%, 20%, ... 100%: ten lines; the end adds nothing new.
    assert [line.split(":")[1].split()[0] for line in lines] == [
        f"{5 * k}/50" for k in range(1, 11)
    ]
    assert lines[-1].startswith("runs: 50/50 (") and lines[-1].endswith("ok 50")


def test_a_log_shows_how_far_failed_work_got():
    console, out = _console(terminal=False)
    try:
        with progress_bar("calls", total=10, console=console) as bar:
            for _ in range(3):
                bar.advance()
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert out.getvalue().splitlines()[-1].startswith("calls: 3/10")


def test_a_terminal_gets_a_live_bar():
    console, out = _console(terminal=True)
    with progress_bar("squares", total=4, console=console) as bar:
        for _ in range(4):
            bar.advance(status="fine")
    text = out.getvalue()
    assert "squares" in text and "4/4" in text and "fine" in text


def test_disabled_draws_nothing_but_counts():
    console, out = _console(terminal=False)
    with progress_bar("quiet", total=3, enabled=False, console=console) as bar:
        bar.advance(2)
    assert bar.completed == 2 and out.getvalue() == ""


def test_track_yields_every_item_and_counts_unknown_lengths():
    console, out = _console(terminal=False)
    assert list(track(iter(range(5)), "gen", console=console)) == [0, 1, 2, 3, 4]
    assert out.getvalue().strip().startswith("gen: 5 (")
    console, out = _console(terminal=False)
    assert sum(track([1, 2, 3], "list", console=console)) == 6
    assert "list: 3/3" in out.getvalue()


def test_a_bar_without_its_refresh_thread_still_draws_every_advance(monkeypatch):
    import threading

    from rich.live import _RefreshThread

    def refreshers() -> set:
        # Rich's refresh threads only: other threads (and a closed bar's refresher, which
        # ends on its next wake-up) come and go meanwhile.
        return {t for t in threading.enumerate() if isinstance(t, _RefreshThread)}

    console, out = _console(terminal=True)
    before = refreshers()
    with progress_bar("quiet", total=3, console=console, auto_refresh=False) as bar:
        assert refreshers() <= before  # this bar started no refresh thread
        for _ in range(3):
            bar.advance(status="step")
    assert "3/3" in out.getvalue() and "step" in out.getvalue()


def test_prints_stay_on_a_redirected_stdout_while_a_live_bar_is_up(capsys):
    console, out = _console(terminal=True)
    with progress_bar("work", total=1, console=console) as bar:
        print("a result line")
        bar.advance()
    assert "a result line" in capsys.readouterr().out
    assert "a result line" not in out.getvalue()
