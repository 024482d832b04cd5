"""The two identities of a mechanism: its source with the cosmetics left out, and its behaviour on the probes."""
from __future__ import annotations

import inspect
import itertools
import textwrap

import pytest

import mechanisms
from mechanisms.bandit import Bandit
from mechanisms.sandbox.fingerprint import Identity, duplicate_of, probe_builtin, source_key
from mechanisms.orthogonal import Orthogonal
from mechanisms.tabu import Tabu
from mechanisms.sandbox.validator import validate
from tests.test_builtin_mechanisms import SCHEMA

EXACT_TABU = textwrap.dedent('''
    from mechanisms.base import Mechanism, Veto


    class ExactTabu(Mechanism):
        """Vetoes a proposal whose changes repeat an iteration already tried."""

        def review_proposal(self, state, proposal):
            for r in state.records:
                if r["changes"] and r["changes"] == proposal["changes"]:
                    return Veto(f"iteration #{r['iteration']} already tried {proposal['changes']}")
            return None
''')

# The same class, reworded and reformatted: other comments and docstrings, other line breaks.
EXACT_TABU_RECOMMENTED = textwrap.dedent('''
    # A tabu list, written again.
    from mechanisms.base import Mechanism, Veto
    class ExactTabu(Mechanism):
        """Remembers every tried change and refuses to try it twice."""
        def review_proposal(self, state, proposal):
            "No docstring survives the comparison."
            for r in state.records:   # oldest first
                if r["changes"] and (r["changes"]
                                     == proposal["changes"]):
                    return Veto(f"iteration #{r['iteration']} already tried {proposal['changes']}")
            return None
''')

# The same behaviour, written differently: a helper, other names, the search from the newest record.
EXACT_TABU_REFACTORED = textwrap.dedent('''
    from mechanisms.base import Mechanism, Veto


    def _first_with(records, changes):
        hits = [rec for rec in records if rec["changes"] and rec["changes"] == changes]
        return hits[0] if hits else None


    class RepeatGuard(Mechanism):
        name = "repeat_guard"

        def review_proposal(self, state, proposal):
            wanted = proposal["changes"]
            hit = _first_with(list(state.records), wanted)
            if hit is None:
                return None
            return Veto("iteration #%s already tried %s" % (hit["iteration"], wanted))
''')

# Close, but not the same: it forgets everything older than its last three records.
RECENT_TABU = EXACT_TABU.replace("for r in state.records:", "for r in state.records[-3:]:")


def report_of(source: str, tmp_path):
    report = validate(source, records=[], schema=SCHEMA, workdir=tmp_path, isolation="process",
                      import_timeout_s=20.0)
    assert report.ok, report.failure()
    assert report.behaviour is not None, report.behaviour_note
    return report


def test_comments_docstrings_and_formatting_do_not_change_the_source_key() -> None:
    assert source_key(EXACT_TABU) == source_key(EXACT_TABU_RECOMMENTED)


def test_a_changed_expression_or_name_changes_the_source_key() -> None:
    assert source_key(EXACT_TABU) != source_key(RECENT_TABU)
    assert source_key(EXACT_TABU) != source_key(EXACT_TABU.replace("ExactTabu", "OtherTabu"))
    assert source_key(EXACT_TABU) != source_key(EXACT_TABU_REFACTORED)


def test_a_module_that_does_not_parse_has_no_source_key() -> None:
    assert source_key("class Broken(:\n") is None


def test_no_two_builtin_mechanisms_behave_alike_on_the_probes() -> None:
    behaviours = {}
    for name, cls in mechanisms.BUILTINS.items():
        try:
            behaviours[name] = probe_builtin(cls, SCHEMA)
        except ImportError:  # cmaes_hint needs the [classical] extras
            continue
    assert len(behaviours) >= 3
    for (a, fa), (b, fb) in itertools.combinations(behaviours.items(), 2):
        assert fa.probe_set == fb.probe_set
        assert fa.digests != fb.digests, f"{a} and {b} are called identical"
        # and no single probe carries the distinction alone for the paper's three
        if {a, b} <= {"tabu", "bandit", "orthogonal"}:
            assert sum(x != y for x, y in zip(fa.digests, fb.digests)) >= 2, (a, b)


@pytest.mark.parametrize("make, other", [
    (lambda: Tabu(tenure=8), lambda: Tabu(tenure=3)),
    (lambda: Bandit(), lambda: Bandit(c=0.5)),
    (lambda: Orthogonal(window=4), lambda: Orthogonal(window=2)),
])
def test_one_builtin_with_other_settings_is_a_different_mechanism(make, other) -> None:
    assert probe_builtin(make, SCHEMA).digests != probe_builtin(other, SCHEMA).digests


def test_the_probes_give_the_same_fingerprint_every_time() -> None:
    assert probe_builtin(Tabu, SCHEMA) == probe_builtin(Tabu, SCHEMA)


def test_a_copy_of_a_builtin_probed_in_the_worker_matches_the_builtin_probed_here(tmp_path) -> None:
    copy = inspect.getsource(mechanisms.tabu).replace("class Tabu(", "class CopiedTabu(")
    report = report_of(copy, tmp_path)
    assert report.behaviour == probe_builtin(Tabu, SCHEMA)
    assert "Behaviour fingerprint: 6 probes" in report.to_markdown()


def test_a_refactor_behaves_the_same_and_a_near_variant_does_not(tmp_path) -> None:
    exact = report_of(EXACT_TABU, tmp_path / "exact").behaviour
    assert report_of(EXACT_TABU_REFACTORED, tmp_path / "refactor").behaviour == exact
    assert report_of(RECENT_TABU, tmp_path / "recent").behaviour.digests != exact.digests
    assert exact.digests != probe_builtin(Tabu, SCHEMA).digests  # exact repeats only vs. tolerance


def test_a_hook_that_raises_is_part_of_the_fingerprint_not_a_failure(tmp_path) -> None:
    raising = EXACT_TABU.replace("for r in state.records:", "if len(state.records) > 12:\n"
                                 "            raise ValueError('long trace')\n        for r in state.records:")
    report = report_of(raising, tmp_path)
    assert report.behaviour.digests != report_of(EXACT_TABU, tmp_path / "exact").behaviour.digests


def test_duplicate_of_names_the_active_mechanism_and_how_it_is_the_same() -> None:
    tabu = Identity(source_key(inspect.getsource(mechanisms.tabu)), probe_builtin(Tabu, SCHEMA))
    bandit = Identity(source_key(inspect.getsource(mechanisms.bandit)), probe_builtin(Bandit, SCHEMA))
    assert duplicate_of(Identity(tabu.source_key, None), {"bandit": bandit, "tabu": tabu})[0] == "tabu"
    name, why = duplicate_of(Identity("another", tabu.behaviour), {"bandit": bandit, "tabu": tabu})
    assert name == "tabu" and why.startswith("identical in behaviour") and "6 probes" in why
    assert duplicate_of(Identity("another", None), {"tabu": tabu}) == ("", "")
    other_probes = probe_builtin(Tabu, {k: v for k, v in SCHEMA.items() if k != "ADAM_BETAS"})
    assert duplicate_of(Identity("another", other_probes), {"tabu": tabu}) == ("", "")  # other probes: no verdict


def test_a_mechanism_that_hangs_on_a_probe_passes_validation_without_a_fingerprint(tmp_path) -> None:
    hangs = EXACT_TABU.replace("for r in state.records:", "while len(state.records) > 20:\n"
                               "            pass\n        for r in state.records:")
    report = validate(hangs, records=[], schema=SCHEMA, workdir=tmp_path, isolation="process",
                      import_timeout_s=20.0, hook_timeout_s=0.5)
    assert report.ok and report.behaviour is None
    assert "did not finish within 0.5 s" in report.behaviour_note
    assert "Behaviour fingerprint: none (the probes could not finish" in report.to_markdown()


def test_large_answers_are_fingerprinted_like_any_other(tmp_path) -> None:
    loud = textwrap.dedent('''
        from mechanisms.base import Mechanism


        class Loud(Mechanism):
            def shape_prompt(self, state, prompt):
                return "x" * 200_000 + str(len(state.records))
    ''')
    quiet = loud.replace('"x" * 200_000 + ', "")
    assert report_of(loud, tmp_path / "loud").behaviour.digests != report_of(quiet, tmp_path / "q").behaviour.digests
