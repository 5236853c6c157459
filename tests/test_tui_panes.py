"""The shell's building blocks without a guest: scrolling panes and the console's terminal emulator."""

from __future__ import annotations

from prompt_toolkit.data_structures import Point
from prompt_toolkit.formatted_text import fragment_list_to_text
from prompt_toolkit.mouse_events import MouseButton, MouseEvent, MouseEventType

from xenwb import tui
from xenwb.consoletail import ConsoleTail
from xenwb.tui import GuestConsole, LineLog, Pane, wrap


def _shown(rows) -> list[str]:
    return [fragment_list_to_text(r) for r in rows]


def _log(n: int, maxlen: int = 1000) -> LineLog:
    log = LineLog(maxlen)
    for i in range(n):
        log.append(f"line {i}")
    return log


def _wheel(pane: Pane, kind: MouseEventType) -> None:
    pane.mouse_handler(MouseEvent(Point(0, 0), kind, MouseButton.NONE, frozenset()))


def test_a_following_pane_shows_the_end_and_scrolled_back_stays_put() -> None:
    log = _log(100)
    pane = Pane("output", log.view)
    assert _shown(pane.render(40, 10)) == [f"line {i}" for i in range(90, 100)]
    pane.page(-1)                                   # a page is the window less one row
    assert _shown(pane.render(40, 10))[0] == "line 81"
    _wheel(pane, MouseEventType.SCROLL_UP)
    assert _shown(pane.render(40, 10))[0] == f"line {81 - tui.WHEEL_ROWS}"
    for i in range(100, 150):                       # new lines do not move a scrolled-back view
        log.append(f"line {i}")
    assert _shown(pane.render(40, 10))[0] == f"line {81 - tui.WHEEL_ROWS}"
    pane.to_top()
    assert _shown(pane.render(40, 10))[0] == "line 0"
    for _ in range(60):                             # scrolling down to the end follows again
        _wheel(pane, MouseEventType.SCROLL_DOWN)
    pane.render(40, 10)
    assert pane.top is None
    log.append("line 150")
    assert _shown(pane.render(40, 10))[-1] == "line 150"


def test_lines_that_drop_off_a_bounded_log_leave_the_view_on_the_oldest_kept() -> None:
    log = _log(50, maxlen=50)
    pane = Pane("output", log.view)
    pane.render(40, 5)
    pane.to_top()
    for i in range(50, 80):
        log.append(f"line {i}")
    assert len(log.lines) == 50 and log.view()[0] == 30
    assert _shown(pane.render(40, 5))[0] == "line 30"


def test_long_lines_wrap_with_an_indent_and_scroll_by_rows() -> None:
    line = [("class:a", "x" * 30), ("class:b", "y" * 30)]
    rows = wrap(line, 25, indent=2)
    assert [fragment_list_to_text(r) for r in rows] == ["x" * 25, "  " + "x" * 5 + "y" * 18, "  " + "y" * 12]
    assert ("class:b", "y" * 18) in rows[1]
    log = LineLog(10)
    log.append("a" * 100)                            # 5 rows at width 24 (4 after the first)
    log.append("end")
    pane = Pane("output", log.view, wrap=True, indent=4)
    assert len(pane.render(24, 10)) == 6
    assert _shown(pane.render(24, 3)) == ["    " + "a" * 20, "    " + "a" * 16, "end"]
    pane.scroll(-1)                                  # one row up: inside the wrapped line
    assert _shown(pane.render(24, 3))[-1] == "    " + "a" * 16


def test_a_command_result_is_shown_from_its_first_line() -> None:
    log = _log(5)
    pane = Pane("output", log.view)
    start = log.append("xenwb> help")
    for i in range(40):
        log.append(f"help {i}")
    pane.show_from(start)
    assert _shown(pane.render(40, 10))[0] == "xenwb> help"
    short = log.append("xenwb> stepi")               # a short result: the end is in view, the window full
    log.append("vcpu0 pc ...")
    pane.show_from(short)
    assert _shown(pane.render(40, 10))[-2:] == ["xenwb> stepi", "vcpu0 pc ..."]
    assert len(pane.render(40, 10)) == 10


def test_a_pane_with_a_home_line_shows_it_near_the_top_and_clicks_activate() -> None:
    lines = [f"insn {i}" for i in range(64)]
    pane = Pane("disassembly", lambda: (0, lines), follow=False, home=lambda: 16, width=lambda: 50)
    assert _shown(pane.render(40, 20))[20 // 4] == "insn 16"
    assert pane.preferred_width(200) == 50 and pane.preferred_width(30) == 30
    pane.page(1)
    assert _shown(pane.render(40, 20))[0] == "insn 30"
    for _ in range(10):
        pane.page(1)                                 # a pane that does not follow stops at its end
    assert _shown(pane.render(40, 20))[-1] == "insn 63" and pane.top is not None
    pane.go_home()
    assert _shown(pane.render(40, 20))[5] == "insn 16"
    clicked = []
    pane.on_click = clicked.append
    pane.mouse_handler(MouseEvent(Point(3, 3), MouseEventType.MOUSE_UP, MouseButton.LEFT, frozenset()))
    assert clicked == [pane]


def _console(data: bytes, **kw) -> GuestConsole:
    out = ConsoleTail()
    out += data
    con = GuestConsole(out, **kw)
    while con.update():
        pass
    return con


def test_the_console_applies_colours_cursor_movement_and_erases() -> None:
    # GRUB's kind of output: colours, absolute cursor moves, clear screen, LF CR line ends
    con = _console(b"\x1b[30m\x1b[47mWelcome to GRUB!\x1b[0m\n\r"
                   b"\x1b[H\x1b[J\x1b[2;24H\x1b[1;31mGNU GRUB\x1b[0m\n\r\n\rgrub> \x1b[3;1Hover")
    text = con.text()
    assert "\x1b" not in text and "[30m" not in text and "Welcome" not in text     # cleared
    assert text.splitlines() == ["", " " * 23 + "GNU GRUB", "over", "grub>"]
    first, lines = con.lines()
    row = lines[1]
    assert ("fg:ansired bold", "GNU GRUB") in row
    cursor_row = lines[con.screen.cursor.y]
    assert cursor_row[-1] == ("reverse", " ")       # the cursor, after "over"


def test_a_bare_newline_starts_a_line_and_the_scrollback_is_bounded() -> None:
    con = _console(b"".join(b"line %d\n" % i for i in range(5000)), rows=24, scrollback=100)
    sc = con.screen
    assert len(sc.scrollback) == 100 and sc.scrolled == 5000 - 23
    first, lines = con.lines()
    assert first == sc.scrolled - 100 and len(lines) == 100 + 24
    assert fragment_list_to_text(lines[0]) == f"line {first}"
    assert fragment_list_to_text(lines[-2]) == "line 4999"      # the cursor's row is the last
    pane = Pane("guest console", con.lines)
    assert _shown(pane.render(80, 3))[:2] == ["line 4998", "line 4999"]


def test_a_flood_of_console_output_is_drawn_in_bounded_steps(monkeypatch) -> None:
    monkeypatch.setattr(tui, "CONSOLE_BACKLOG", 16 * 1024)
    monkeypatch.setattr(tui, "CONSOLE_CHUNK", 4 * 1024)
    out = ConsoleTail()
    out += (b"x" * 79 + b"\n") * (2 * tui.CONSOLE_BACKLOG // 80)
    con = GuestConsole(out)
    calls = 1
    while con.update():
        calls += 1
    assert calls == tui.CONSOLE_BACKLOG // tui.CONSOLE_CHUNK      # the older half was skipped
    out += b"\x1b[32mmore\x1b[0m\n"
    assert not con.update() and con.text().splitlines()[-1] == "more"


def test_the_console_is_as_wide_as_its_pane_but_never_narrower_than_80_columns() -> None:
    out = ConsoleTail()
    out += b"a" * 100 + b"\n"
    con = GuestConsole(out)
    con.update()
    assert con.text().splitlines()[:2] == ["a" * 80, "a" * 20]        # written at 80 columns
    con.resize(120)
    out += b"b" * 100 + b"\n"
    con.update()
    assert "b" * 100 in con.text().splitlines()
    con.resize(40)
    assert con.screen.columns == 80
