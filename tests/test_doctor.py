"""`bilevel doctor`: each check says what it found, against a real endpoint protocol."""
from __future__ import annotations

from core.cli import main
from tests.support import ScriptedOpenAI


def _config(tmp_path, base_url: str, model: str, key_env: str = "") -> str:
    p = tmp_path / "d.toml"
    p.write_text(f'[endpoint]\nprovider = "openai"\nbase_url = "{base_url}"\nmodel = "{model}"\n'
                 f'api_key_env = "{key_env}"\n[data]\nsource = "none"\n')
    return str(p)


def test_doctor_finds_the_endpoint_and_the_model(tmp_path, capsys):
    with ScriptedOpenAI(models=("deepseek-flash", "deepseek-v4-pro")) as server:
        code = main(["doctor", _config(tmp_path, server.base_url, "deepseek-flash")])
    out = capsys.readouterr().out
    assert "[ok  ] python" in out and "[ok  ] model: deepseek-flash" in out
    assert "answers (2 models)" in out
    assert code == 0


def test_an_unlisted_model_the_server_answers_to_is_a_warning_naming_the_listed_ones(tmp_path, capsys):
    with ScriptedOpenAI(models=("deepseek-flash",)) as server:  # like llama.cpp: any name gets an answer
        code = main(["doctor", _config(tmp_path, server.base_url, "deepseek-chat")])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "model:" in x)
    assert "'deepseek-chat' is not listed" in line and "deepseek-flash" in line and "answers to it" in line
    assert "FAIL" not in line and "[ok  ] chat" in out


def test_doctor_makes_a_chat_call_and_shows_the_response_format_in_force(tmp_path, capsys):
    with ScriptedOpenAI(models=("m",), refuse_json_schema=True) as server:
        main(["doctor", _config(tmp_path, server.base_url, "m")])
    out = capsys.readouterr().out
    assert "structured: response_format in force: json_object (the endpoint refused json_schema" in out
    assert any(r.get("messages") for r in server.requests)


def test_doctor_fails_a_wrong_key_and_a_context_too_small(tmp_path, capsys, monkeypatch):
    from tests.support import Reply

    monkeypatch.setenv("DOCTOR_KEY", "sk-wrong")
    with ScriptedOpenAI(models=("m",)) as server:
        server.enqueue_probe(Reply(status=401, error_body={"error": {"message": "invalid api key"}}))
        code = main(["doctor", _config(tmp_path, server.base_url, "m", "DOCTOR_KEY")])
    out = capsys.readouterr().out
    assert "[FAIL] chat" in out and "401" in out and code == 1
    with ScriptedOpenAI(models=("m",), context_tokens=1000) as server:
        code = main(["doctor", _config(tmp_path, server.base_url, "m")])
    out = capsys.readouterr().out
    assert "[FAIL] chat: a prompt of about" in out and "context" in out and code == 1


def test_doctor_reports_an_unset_key_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    code = main(["doctor", _config(tmp_path, "http://127.0.0.1:9/v1", "m", "NO_SUCH_KEY_VAR")])
    assert "NO_SUCH_KEY_VAR is not set" in capsys.readouterr().out and code == 1


def test_doctor_reports_an_unreachable_endpoint(tmp_path, capsys):
    code = main(["doctor", _config(tmp_path, "http://127.0.0.1:9/v1", "m")])
    assert "[FAIL] endpoint" in capsys.readouterr().out and code == 1


def test_doctor_reports_the_isolation_level_in_force(tmp_path, capsys):
    with ScriptedOpenAI(models=("m",)) as server:
        main(["doctor", _config(tmp_path, server.base_url, "m")])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "isolation" in x)
    from mechanisms.sandbox.isolation import availability

    if availability().level == "strict":
        assert line.startswith("[ok  ] isolation: in force: strict (Landlock ABI") and "seccomp" in line
    else:  # generated mechanisms are refused here, and doctor says what is missing
        assert "missing" in line and 'level2.isolation = "process"' in line


def test_doctor_says_whether_code_scope_can_run_here(tmp_path, capsys):
    with ScriptedOpenAI(models=("m",)) as server:
        main(["doctor", _config(tmp_path, server.base_url, "m")])
    line = next(x for x in capsys.readouterr().out.splitlines() if "code scope" in x)
    from core.services.code_run import wall_refusal

    if wall_refusal() is None:
        assert line.startswith("[ok  ] code scope: the training wall stands here")
    else:  # the default scope does not need it: a warning naming what is missing
        assert "is refused" in line and "user namespaces" in line


def test_doctor_shows_the_schema_each_level_sends_compactly(tmp_path, capsys):
    p = tmp_path / "s.toml"
    with ScriptedOpenAI(models=("m",)) as server:
        p.write_text(f'[endpoint]\nprovider = "openai"\nbase_url = "{server.base_url}"\nmodel = "m"\n'
                     '[data]\nsource = "none"\n[search]\ngroup = "C"\n')
        main(["doctor", str(p)])
    out = capsys.readouterr().out.splitlines()
    level1 = next(x for x in out if "schema: Level 1:" in x)
    assert "[1..3 ×" in level1 and '{"MATRIX_LR"}' in level1 and "hypothesis: string ≤300" in level1
    assert '{"DEPTH"}' not in level1  # locked by default: never offered
    assert any("schema: Level 1.5:" in x for x in out) and any("schema: Level 2 critique:" in x for x in out)
    assert any(x.startswith("[warn] schema: float bounds") and "llama.cpp does not enforce" in x for x in out)
