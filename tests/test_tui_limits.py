"""The app and the run's limits: warnings and a cap's pause shown with the reason, and a raised cap in the config
file resuming the run."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.record import events as ev
from core.record.session import SessionReader
from tests.conftest import fast_config
from tests.test_tui_app import on_screen, press, real_engine_app, until
from tests.support.patience import patience
from tui.screens.confirm import ConfirmScreen


@pytest.mark.slow  # the product's engine, training the stand-in script in subprocesses
async def test_a_cap_pause_shows_its_reason_and_a_raised_cap_in_the_config_file_resumes_the_run(tmp_path: Path):
    config = tmp_path / "exp.toml"
    budget = "[budget]\niterations = 2\ntime_s = 1\nstuck_after = 0\n"
    config.write_text(budget + "max_gpu_hours = 1e-9\n")  # the file the run started from
    cfg = fast_config(tmp_path, **{"budget.iterations": 2, "budget.max_gpu_hours": 1e-9, "audit.enabled": False})
    async with real_engine_app(cfg, config_path=config) as (app, pilot, engine, task):
        await until(pilot, lambda: app.model.status == "paused: cap", timeout=60, what="the cap's pause")
        await until(pilot, lambda: any(n.title == "Paused by a spend cap" and "budget.max_gpu_hours reached"
                                       in str(n.message) for n in app._notifications), what="the pause's toast")
        assert "paused: cap" in app.screen_text().splitlines()[0]
        budget_toasts = [str(n.message) for n in app._notifications if n.title == "Budget"]
        assert [t.split(" spent")[0] for t in budget_toasts] == ["budget: 50% of budget.max_gpu_hours",
                                                                 "budget: 80% of budget.max_gpu_hours"]
        await press(app, "space")  # a plain resume: refused while the cap is reached, and the toast says why
        await until(pilot, lambda: any("raise or unset the cap" in str(n.message) for n in app._notifications),
                    what="the refusal")
        config.write_text(budget + "max_gpu_hours = 10\n")
        await until(pilot, lambda: app.config_change is not None, timeout=10, what="the config watcher")
        assert app.config_change == {"limits": {"max_gpu_hours": 10.0, "stuck_after": 0}}
        await press(app, "r")
        await until(pilot, on_screen(app, ConfirmScreen))
        assert "budget.max_gpu_hours = 10" in app.screen_text()
        await press(app, "enter")
        await asyncio.wait_for(task, patience(60))
    events = list(SessionReader(engine.dir).events())
    changed = [e for e in events if isinstance(e, ev.LimitsChanged)]
    assert changed and changed[-1].limits == {"max_gpu_hours": 10.0, "stuck_after": 0} and changed[-1].source == "tui"
    assert engine.state.finished is not None and engine.state.finished.status == "completed"
