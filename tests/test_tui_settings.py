"""The theme is remembered in the user's settings file; a file the app cannot rewrite is left as it is."""
from __future__ import annotations

import tomllib
from pathlib import Path

from tui.app import BilevelApp
from tui.sources import ReplaySource
from tests.support.scripted_engine import Plan, record_session
from tests.test_tui_app import until


def app_with(session: Path, settings: Path) -> BilevelApp:
    return BilevelApp(ReplaySource(session, follow=False), deterministic=True, settings_file=settings)


async def test_a_chosen_theme_is_remembered_and_restored_next_time(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=2, progress_per_run=2))
    settings = tmp_path / "config" / "bilevel" / "settings.toml"
    async with app_with(tmp_path / "s", settings).run_test(size=(120, 40)) as pilot:
        pilot.app.theme = "nord"  # what the palette's theme picker sets
        await pilot.pause()
    assert tomllib.loads(settings.read_text()) == {"theme": "nord"}
    app = app_with(tmp_path / "s", settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.theme == "nord", what="the remembered theme")


async def test_a_settings_file_that_does_not_parse_is_left_untouched_and_said_so(tmp_path: Path):
    await record_session(tmp_path / "s", Plan(iterations=2, progress_per_run=2))
    settings = tmp_path / "settings.toml"
    settings.write_text("theme = [unterminated\n")
    app = app_with(tmp_path / "s", settings)
    async with app.run_test(size=(120, 40)) as pilot:
        app.theme = "nord"
        await until(pilot, lambda: any("theme not remembered" in str(n.message) for n in app._notifications),
                    what="the warning")
    assert settings.read_text() == "theme = [unterminated\n"
