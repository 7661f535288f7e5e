"""`attribution top`: the board (latest figures per channel and window) and the pure table renderer."""

from __future__ import annotations

import io
import re

from rich.console import Console

from streams.commands.top import Board, View, WindowView, choose_columns, render, render_text, total_row
from streams.core.kpis import Figures, metrics_message

W = 10_000
T0 = 1_763_800_000_000


def message(channel: str, start: int, figures: Figures, final: bool = False, romi: bool = True) -> dict:
    msg = metrics_message(channel, None, start, W, final, figures)
    if not romi:
        msg.pop("romi")
        msg.pop("gross_profit")
    return msg


GOOGLE = Figures(1000, 42, 5.0, 2.0, 1.0, 240.0, 50.0, 96.0)
TIKTOK = Figures(3000, 30, 1.0, 0.5, 0.0, 20.0, 25.0, 7.0)


def board_with(*messages: dict, signals: dict[str, str] | None = None) -> Board:
    board = Board()
    for offset, msg in enumerate(messages):
        board.add_metric(msg, (0, offset))
    for offset, (key, action) in enumerate((signals or {}).items()):
        channel, _, campaign = key.partition("/")
        board.add_signal(key.encode(), {"channel": channel, "campaign": campaign or None, "action": action},
                         (0, offset))
    return board


def row_of(text: str, channel: str) -> list[str]:
    for text_line in text.splitlines():
        cells = text_line.split()
        if cells and cells[0] == channel:
            return cells
    raise AssertionError(f"no row for {channel} in:\n{text}")


def test_the_latest_message_per_channel_and_window_wins() -> None:
    board = board_with(message("google_ads", T0, Figures(10)), message("google_ads", T0, Figures(20)))
    assert board.view().current.rows[0]["impressions"] == 20
    # an older offset of the same partition (a re-read) does not replace a newer one
    assert not board.add_metric(message("google_ads", T0, Figures(5)), (0, 0))
    assert board.view().current.rows[0]["impressions"] == 20


def test_the_current_window_is_the_newest_and_the_last_is_the_one_before() -> None:
    board = board_with(message("google_ads", T0, GOOGLE, final=True), message("tiktok", T0, TIKTOK, final=True),
                       message("google_ads", T0 + W, Figures(7)))
    view = board.view()
    assert (view.current.start, view.current.end, view.current.final) == (T0 + W, T0 + 2 * W, False)
    assert [r["channel"] for r in view.current.rows] == ["google_ads"]
    assert (view.previous.start, view.previous.final) == (T0, True)
    assert [r["channel"] for r in view.previous.rows] == ["google_ads", "tiktok"]


def test_old_windows_are_forgotten() -> None:
    board = board_with(*(message("email", T0 + i * W, Figures(i)) for i in range(10)))
    assert len(board._windows) == board.keep_windows
    assert not board.add_metric(message("email", T0, Figures(99)), (0, 99))
    assert board.view().current.start == T0 + 9 * W


def test_messages_that_are_not_channel_metrics_are_ignored() -> None:
    board = Board()
    assert not board.add_metric({"channel": "x"})
    assert not board.add_metric(None)
    assert not board.add_metric({**message("google_ads", T0, GOOGLE), "campaign": "brand"})
    assert board.view() == View(None, None, {})
    assert board.ignored == 3


def test_rows_show_the_figures_and_kpis_of_each_channel() -> None:
    text = render_text(board_with(message("google_ads", T0, GOOGLE)).view(), width=250)
    cells = row_of(text, "google_ads")
    # Channel Signal Impr Clicks Leads Orders Revenue Spend Profit CTR CPC CPM CPL CPA CAC Conv AOV ROAS ROI ROMI
    assert cells == ["google_ads", "—", "1,000", "42", "5", "2", "240.00", "50.00", "96.00", "4.20%", "1.19",
                     "50.00", "10.00", "25.00", "50.00", "4.76%", "120.00", "4.80x", "+380%", "+92%"]
    header = next(text_line for text_line in text.splitlines() if "Channel" in text_line)
    assert header.split() == ["Channel", "Signal", "Impr", "Clicks", "Leads", "Orders", "Revenue", "Spend", "Profit",
                              "CTR", "CPC", "CPM", "CPL", "CPA", "CAC", "Conv", "AOV", "ROAS", "ROI", "ROMI"]


def test_a_ratio_without_denominator_shows_a_dash() -> None:
    direct = message("(direct)", T0, Figures(0, 0, 0.0, 1.0, 1.0, 90.0, 0.0, 40.0))
    cells = row_of(render_text(board_with(direct).view(), width=250), "(direct)")
    assert cells[9:] == ["—", "—", "—", "—", "0.00", "0.00", "—", "90.00", "—", "—", "—"]


def test_null_values_in_a_message_show_a_dash() -> None:
    msg = {**message("google_ads", T0, GOOGLE), "ctr": None, "roas": None, "romi": None}
    cells = row_of(render_text(board_with(msg).view(), width=250), "google_ads")
    assert cells[9] == "—" and cells[17] == "—" and cells[19] == "—"


def test_credited_fractions_show_one_decimal() -> None:
    cells = row_of(render_text(board_with(message("tiktok", T0, TIKTOK)).view(), width=250), "tiktok")
    assert cells[4:6] == ["1", "0.5"]


def test_romi_and_gross_profit_appear_only_when_the_messages_carry_them() -> None:
    text = render_text(board_with(message("google_ads", T0, GOOGLE, romi=False)).view(), width=250)
    assert "ROMI" not in text and "Profit" not in text and "ROI" in text


def test_both_windows_are_shown_with_a_total_row() -> None:
    board = board_with(message("google_ads", T0, GOOGLE, final=True), message("tiktok", T0, TIKTOK, final=True),
                       message("google_ads", T0 + W, Figures(7, 1, spend=2.0)))
    text = render_text(board.view(), width=250)
    assert re.search(r"current window \S+–\S+ \(open\)", text)
    assert re.search(r"last window \S+–\S+ \(final\)", text)
    totals = [text_line.split() for text_line in text.splitlines() if text_line.split()[:1] == ["total"]]
    assert len(totals) == 2
    assert totals[0][1:3] == ["7", "1"]
    assert totals[1][1:8] == ["4,000", "72", "6", "2.5", "260.00", "75.00", "103.00"]
    assert totals[1][-3:] == ["3.47x", "+247%", "+37%"]


def test_total_row_sums_figures_and_recomputes_ratios() -> None:
    total = total_row([message("google_ads", T0, GOOGLE), message("tiktok", T0, TIKTOK)])
    assert total["impressions"] == 4000 and total["spend"] == 75.0
    assert total["ctr"] == 72 / 4000 and total["cac"] == 75.0


def test_each_row_is_marked_with_its_channels_latest_action() -> None:
    board = board_with(message("google_ads", T0, GOOGLE), message("tiktok", T0, TIKTOK), message("email", T0, GOOGLE),
                       signals={"tiktok": "keep", "google_ads": "scale", "tiktok/ugc": "scale"})
    board.add_signal(b"tiktok", {"channel": "tiktok", "campaign": None, "action": "pause"}, (0, 10))
    text = render_text(board.view(), width=250)
    assert row_of(text, "tiktok")[1] == "pause"  # the latest; the campaign's own signal does not mark the row
    assert row_of(text, "google_ads")[1] == "scale"
    assert row_of(text, "email")[1] == "—"


def test_actions_are_coloured_pause_red_and_scale_green() -> None:
    board = board_with(message("google_ads", T0, GOOGLE), message("tiktok", T0, TIKTOK),
                       signals={"tiktok": "pause", "google_ads": "scale"})
    buffer = io.StringIO()
    Console(file=buffer, width=250, force_terminal=True, color_system="standard").print(render(board.view(), 250))
    coloured = buffer.getvalue()
    assert "\x1b[1;31mpause" in coloured
    assert "\x1b[1;32mscale" in coloured


def test_a_tombstone_clears_a_channels_action() -> None:
    board = board_with(message("tiktok", T0, TIKTOK), signals={"tiktok": "pause"})
    board.add_signal(b"tiktok", None, (0, 5))
    assert row_of(render_text(board.view(), width=250), "tiktok")[1] == "—"


def test_a_narrow_screen_keeps_the_most_important_columns() -> None:
    view = board_with(message("google_ads", T0, GOOGLE), message("tiktok", T0, TIKTOK)).view()
    keys = [c.key for c in choose_columns(view, 100)]
    assert {"impressions", "clicks", "orders", "revenue", "spend", "roas"} <= set(keys)
    assert "cpm" not in keys and "aov" not in keys
    text = render_text(view, width=100)
    assert max(len(text_line.rstrip()) for text_line in text.splitlines()) <= 100
    assert row_of(text, "google_ads")[:3] == ["google_ads", "—", "1,000"]


def test_direct_comes_last() -> None:
    board = board_with(message("(direct)", T0, Figures(orders=1.0)), message("affiliate", T0, GOOGLE),
                       message("tiktok", T0, TIKTOK))
    assert [r["channel"] for r in board.view().current.rows] == ["affiliate", "tiktok", "(direct)"]


def test_without_figures_it_says_it_is_waiting() -> None:
    assert "waiting for figures on metrics.channel" in render_text(Board().view())


def test_render_accepts_a_view_built_by_hand() -> None:
    window = WindowView(T0, T0 + W, False, (message("email", T0, GOOGLE),))
    assert "email" in render_text(View(window, None, {"email": "scale"}), width=250)


# --- the data-driven share next to last click (CONTRACT.md section 8) ------------------------------------


def markov_message(channel: str, share: float, last_click: float, computed_at: int = T0) -> dict:
    return {"channel": channel, "removal_effect": share / 2, "share": share, "conversions": 100 * share,
            "revenue": 1000 * share, "paths": 900, "converting_paths": 100, "null_paths": 800,
            "computed_at": computed_at, "last_click_share": last_click}


def markov_rows(text: str) -> dict[str, list[str]]:
    after = text.split("data-driven vs last click", 1)[1]
    return {line.split()[0]: line.split()[1:] for line in after.splitlines() if line.split()
            and line.split()[0] in ("email", "search", "video")}


def test_each_channel_shows_its_data_driven_share_next_to_its_last_click_share() -> None:
    board = board_with(message("email", T0, GOOGLE))
    for m in (markov_message("search", 0.25, 0.6), markov_message("email", 0.75, 0.4)):
        assert board.add_markov(m)
    text = render_text(board.view(), width=250)
    assert "900 paths, 100 converting" in text
    rows = markov_rows(text)
    assert rows["email"][:2] == ["75.00%", "40.00%"] and rows["search"][:2] == ["25.00%", "60.00%"]
    assert list(rows) == ["email", "search"]  # largest share first


def test_only_the_newest_computation_is_shown() -> None:
    board = board_with(message("email", T0, GOOGLE))
    board.add_markov(markov_message("video", 0.5, 0.5, computed_at=T0))
    board.add_markov(markov_message("email", 1.0, 1.0, computed_at=T0 + 10_000))
    board.add_markov(markov_message("email", 0.1, 0.1, computed_at=T0))  # an older one read late
    assert [m["channel"] for m in board.view().markov] == ["email"]
    assert board.view().markov[0]["share"] == 1.0


def test_a_message_that_is_not_a_model_message_is_ignored() -> None:
    board = Board()
    assert not board.add_markov({"channel": "email"})
    assert not board.add_markov([1, 2])
    assert board.view().markov == () and board.ignored == 2


def test_without_a_model_there_is_no_markov_table() -> None:
    assert "data-driven" not in render_text(board_with(message("email", T0, GOOGLE)).view(), width=250)
