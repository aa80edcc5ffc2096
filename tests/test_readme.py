"""The README is the newcomer's entry point: its commands and settings table stay true."""

from pathlib import Path

from switchboard.base.settings import settings_table

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    commands = [line.split("#")[0].strip() for line in README.split("```")[1].splitlines()[1:]]
    assert [c for c in commands if c] == ["make run", "make test"]


def test_readme_settings_table_matches_the_settings() -> None:
    assert settings_table() in README, "run `switchboard settings --markdown` into README.md"
