"""The failover bench's arithmetic: turns lost per kill, the per-kill table, and the summary
(series in ms, maxima, resumed x/N, whether the targets are met)."""

from __future__ import annotations

import json
from pathlib import Path

from switchboard.bench.failover import KillFigures, failover_report, kill_table


def resumed_kill(kill: int, node: str, detection_s: float = 2.0) -> KillFigures:
    return KillFigures(kill=kill, user=str(8999 + kill), node=node, detection_s=detection_s,
                       answered_s=2.1, heard_s=2.7, turns_before=5, turns_carried=5,
                       slots_restored=True, resumed=True)


def test_turns_lost_are_the_stored_turns_the_resumed_state_did_not_carry() -> None:
    assert KillFigures(kill=1, turns_before=5, turns_carried=3).turns_lost == 2
    assert KillFigures(kill=1, turns_before=5, turns_carried=6).turns_lost == 0
    assert KillFigures(kill=1, turns_before=5).turns_lost is None


def test_notes_of_a_kill_add_up() -> None:
    figures = KillFigures(kill=1)
    figures.add_note("the bot did not get the order number")
    figures.add_note("the redial was not heard")
    assert figures.note == "the bot did not get the order number; the redial was not heard"


def test_the_summary_gives_series_in_ms_maxima_and_resumed_out_of_all_kills() -> None:
    failed = KillFigures(kill=3, user="9002", node="node-a", detection_s=2.5,
                         note="the redial was not answered")
    report = failover_report(
        [resumed_kill(1, "node-a", 1.8), resumed_kill(2, "node-b", 2.2), failed], wall_s=300.0)

    assert report.series["detection"] == [1800.0, 2200.0, 2500.0]
    assert report.series["redial_answered"] == [2100.0, 2100.0]
    assert report.figures["detection_ms_max"] == 2500.0
    assert report.figures["resumed"] == "2/3"
    assert report.figures["slots_restored"] == "2/3"
    assert report.figures["turns_lost"] == 0
    assert report.figures["turns_lost_unknown"] == 1
    assert report.figures["kills_per_node"] == "node-a: 2, node-b: 1"
    assert report.figures["targets_met"] is False


def test_targets_are_met_when_every_kill_resumed_in_time_without_losing_turns() -> None:
    kills = [resumed_kill(1, "node-a"), resumed_kill(2, "node-b")]
    assert failover_report(kills, wall_s=100.0).figures["targets_met"] is True

    slow = [resumed_kill(1, "node-a"), resumed_kill(2, "node-b", detection_s=3.2)]
    assert failover_report(slow, wall_s=100.0).figures["targets_met"] is False

    lossy = [resumed_kill(1, "node-a"), resumed_kill(2, "node-b")]
    lossy[1].turns_carried = 4
    assert failover_report(lossy, wall_s=100.0).figures["targets_met"] is False


def test_the_table_has_a_row_per_kill_and_the_json_every_kill(tmp_path: Path) -> None:
    failed = KillFigures(kill=2, user="9001", note="caller 9001: call 1 not answered")
    report = failover_report([resumed_kill(1, "node-a"), failed], wall_s=60.0)

    header, first, second = kill_table(report.kills)
    assert header.split()[:3] == ["kill", "user", "node"]
    assert first.split() == ["1", "9000", "node-a", "2.00", "2.10", "2.70", "5", "5", "0",
                             "yes", "yes"]
    assert second.split()[:11] == ["2", "9001", "-", "-", "-", "-", "-", "-", "-", "no", "no"]
    assert second.endswith("caller 9001: call 1 not answered")
    assert first in report.table()

    report.write_json(tmp_path / "failover.json")
    written = json.loads((tmp_path / "failover.json").read_text())
    assert [k["turns_lost"] for k in written["kills"]] == [0, None]
    assert written["figures"]["resumed"] == "1/2"
    assert written["series_ms"]["detection"]["n"] == 1
