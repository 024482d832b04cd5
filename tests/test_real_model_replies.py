"""What small real models answered (issue "Real models at every level"), replayed against the scripted
server through the real engine: every reply a decoder could not stop is checked by us and re-asked."""
from __future__ import annotations

import json
import re

import pytest

from core.levels.budget import messages_tokens
from core.record import events as ev
from tests.conftest import QUADRATIC, llm_config, run_engine
from tests.support import Reply, ScriptedOpenAI
from tests.test_research import GOOD_TABU, Scripted, module_reply, research_config


def proposal(changes: dict | list, hypothesis: str = "a lower LR converges better here") -> str:
    return json.dumps({"changes": changes, "hypothesis": hypothesis})


def inner_requests(server: ScriptedOpenAI) -> list[dict]:
    return [r for r in server.requests if "ML research assistant" in r["messages"][0]["content"]]


def with_betas(tmp_path):
    """The quadratic script with an Adam-style tuple constant."""
    script = tmp_path / "train.py"
    script.write_text(QUADRATIC.read_text().replace('PATTERN = "SSSL"\n', 'PATTERN = "SSSL"\nADAM_BETAS = (0.8, 0.95)\n'))
    return str(script)


async def test_a_proposal_with_more_changes_than_allowed_is_reasked(tmp_path, scripted_openai):
    four = {"LR": 0.03, "WARMDOWN_RATIO": 0.4, "BATCH_SIZE": 2**11, "PATTERN": "SSL"}
    scripted_openai.enqueue(proposal(four), proposal({"LR": 0.03}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 1}))
    rejected = rec.of(ev.ProposalRejected)
    assert [r.kind for r in rejected] == ["invalid"] and "4 changes" in rejected[0].reason
    assert "at most 3" in inner_requests(scripted_openai)[1]["messages"][-1]["content"]
    assert rec.of(ev.IterationFinished)[-1].changes.params == {"LR": 0.03}


async def test_max_changes_is_configurable_and_sent_as_max_items(tmp_path, scripted_openai):
    scripted_openai.enqueue(proposal({"LR": 0.03, "WARMDOWN_RATIO": 0.4}), proposal({"LR": 0.03}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "budget.iterations": 1, "search.max_changes": 1}))
    schema = inner_requests(scripted_openai)[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["changes"]["maxItems"] == 1
    assert "2 changes" in rec.of(ev.ProposalRejected)[0].reason


async def test_a_hypothesis_echoing_the_prompt_is_reasked(tmp_path, scripted_openai):
    def respond(req: dict) -> str:
        asks = len(inner_requests(scripted_openai))
        prompt = req["messages"][1]["content"]
        if asks == 1:  # copies the prompt's example reply word for word
            return re.search(r'^\{"changes".*\}$', prompt, re.MULTILINE).group(0)
        if asks == 2:  # copies the system prompt's instruction
            return proposal({"LR": 0.03}, "a sentence of your own about this experiment")
        return proposal({"LR": 0.03})
    scripted_openai.responder = respond
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{  # json_object: the example is shown
        "budget.iterations": 1, "endpoint.structured": "json_object"}))
    rejected = rec.of(ev.ProposalRejected)
    assert [r.kind for r in rejected] == ["invalid", "invalid"]
    assert all("repeats the prompt's own" in r.reason for r in rejected)
    assert rec.of(ev.IterationFinished)[-1].hypothesis == "a lower LR converges better here"


async def test_the_level1_prompt_has_no_placeholder_and_an_example_of_this_run(tmp_path, scripted_openai):
    scripted_openai.enqueue(proposal({"LR": 0.03}))
    await run_engine(llm_config(tmp_path, scripted_openai, **{
        "budget.iterations": 1, "endpoint.structured": "json_object"}))
    system, user = (m["content"] for m in inner_requests(scripted_openai)[0]["messages"])
    assert "PARAM_NAME" not in system and "what you expect and why" not in system
    example = json.loads(re.search(r'^\{"changes".*\}$', user, re.MULTILINE).group(0))
    assert example["changes"][0]["name"] == "LR" and example["changes"][0]["value"] != 0.04


async def test_where_json_schema_holds_the_shape_the_level1_prompt_has_no_example_to_copy(tmp_path, scripted_openai):
    # Gemma 3 270M copied the example reply word for word (hypothesis and all) on llama-server
    scripted_openai.enqueue(proposal({"LR": 0.03}))
    await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 1}))
    assert inner_requests(scripted_openai)[0]["response_format"]["type"] == "json_schema"
    user = inner_requests(scripted_openai)[0]["messages"][1]["content"]
    assert not re.search(r'^\{"changes"', user, re.MULTILINE) and "in your own words" in user


async def test_tuple_elements_out_of_their_range_are_reasked_and_the_schema_bounds_them(tmp_path, scripted_openai):
    scripted_openai.enqueue(proposal({"ADAM_BETAS": [-0.436, 0.00054]}), proposal({"ADAM_BETAS": [0.9, 0.99]}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "budget.iterations": 1, "script.path": with_betas(tmp_path)}))
    rejected = rec.of(ev.ProposalRejected)
    assert len(rejected) == 1 and "element 0: -0.436 is out of bounds; allowed [0, 1)" in rejected[0].reason
    assert rec.of(ev.IterationFinished)[-1].changes.params == {"ADAM_BETAS": (0.9, 0.99)}
    items = inner_requests(scripted_openai)[0]["response_format"]["json_schema"]["schema"]["properties"]["changes"]
    betas = next(i for i in items["items"]["anyOf"] if i["properties"]["name"]["enum"] == ["ADAM_BETAS"])
    assert betas["properties"]["value"]["prefixItems"][0] == {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0}


async def test_float_grid_offers_each_float_as_an_enum_without_its_current_value(tmp_path, scripted_openai):
    scripted_openai.enqueue(proposal({"LR": 0.0283}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "budget.iterations": 1, "endpoint.float_grid": True}))
    items = inner_requests(scripted_openai)[0]["response_format"]["json_schema"]["schema"]["properties"]["changes"]
    lr = next(i for i in items["items"]["anyOf"] if i["properties"]["name"]["enum"] == ["LR"])["properties"]["value"]
    assert 0.04 not in lr["enum"] and 0.0283 in lr["enum"] and 0.0566 in lr["enum"]  # steps of sqrt(2)
    assert rec.of(ev.IterationFinished)[-1].decision in ("keep", "discard")


async def test_level1_sees_the_scripts_digest_or_all_of_it_or_nothing(tmp_path, scripted_openai):
    for mode in ("digest", "full", "off"):
        scripted_openai.requests.clear()
        scripted_openai.enqueue(proposal({"LR": 0.03}))
        await run_engine(llm_config(tmp_path / mode, scripted_openai, **{
            "budget.iterations": 1, "search.script_context": mode}))
        user = inner_requests(scripted_openai)[0]["messages"][1]["content"]
        assert ("LR = 0.04  # learning rate" in user) == (mode != "off")
        assert ("Where each is used" in user) == (mode == "digest")
        assert ("print(\"---\")" in user) == (mode == "full")


async def test_prompts_fit_a_small_context_with_the_history_trimmed(tmp_path):
    hypothesis = "a long hypothesis " * 15
    with ScriptedOpenAI(context_tokens=3000) as server:
        lr = iter(range(1, 1000))
        server.responder = lambda req: proposal({"LR": round(0.01 + 0.001 * next(lr), 4)}, hypothesis[:290])
        engine, rec = await run_engine(llm_config(tmp_path, server, **{
            "budget.iterations": 14, "endpoint.context_tokens": 3000, "search.script_context": "full"}))
    assert engine.state.status == "completed"  # no request overflowed the server's context
    last = inner_requests(server)[-1]
    assert "summarised" in last["messages"][1]["content"]  # the oldest iterations folded to fit
    assert last["max_tokens"] == 750  # a quarter of the context for the reply


async def test_a_level15_reply_echoing_the_new_prompt_is_reasked(tmp_path, scripted_openai):
    echo = {"diagnosis": "your reading of the trace", "freeze": [], "unfreeze": [], "keep": {},
            "guidance": "your advice to the proposer", "reasoning": "LR dominates"}
    answer = {**echo, "diagnosis": "LR moves the score", "guidance": "try a shorter warmdown next"}
    replies = iter([json.dumps(echo), json.dumps(answer)])
    scripted_openai.responder = lambda req: (next(replies) if "search strategy" in req["messages"][0]["content"]
                                             else proposal({"LR": 0.03}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "search.group": "B", "search.outer_period": 1, "budget.iterations": 1}))
    assert "repeats the prompt's own" in rec.of(ev.ReplyRejected)[0].reason
    assert engine.state.guidance == "try a shorter warmdown next"


class CutOffOnce(Scripted):
    """Its first generate reply runs into the length limit, mid-module."""

    def __init__(self, generate: list[str], cut: int = 1, long_explore: int = 0) -> None:
        super().__init__(generate)
        self.cut = cut
        self.long_explore = long_explore

    def __call__(self, req: dict) -> Reply | str:
        last = req["messages"][-1]["content"]
        if "Write the mechanism" in last and self.cut > 0:
            self.cut -= 1
            return Reply(content=module_reply(GOOD_TABU)[:120] + " tabu " * 400, finish_reason="length")
        if "candidate mechanisms, each named" in last and self.long_explore:
            return "Tabu search vetoes repeats. " * self.long_explore + "\nCandidates: tabu; bandit"
        return super().__call__(req)


async def test_a_level2_round_cut_off_at_the_length_limit_is_reasked(tmp_path):
    with ScriptedOpenAI(responder=CutOffOnce([GOOD_TABU])) as server:
        _, rec = await run_engine(research_config(tmp_path, server))
    rejected = [r for r in rec.of(ev.ReplyRejected) if r.level == "research"]
    assert [(r.purpose, r.kind) for r in rejected][:1] == [("generate", "truncated")]
    generate = [r for r in server.requests if "Write the mechanism" in r["messages"][-1]["content"]]
    assert "cut off at the length limit" in generate[1]["messages"][-1]["content"]
    assert all(" tabu  tabu " not in m["content"] for m in generate[1]["messages"])  # the cut reply is not kept
    assert rec.of(ev.MechanismActivated)


async def test_a_level2_round_always_cut_off_fails_the_research_after_its_reasks(tmp_path):
    with ScriptedOpenAI(responder=CutOffOnce([GOOD_TABU], cut=100)) as server:
        engine, rec = await run_engine(research_config(tmp_path, server, **{"search.max_reasks": 1}))
    failed = [f for f in rec.of(ev.ResearchFinished) if f.outcome == "failed"]
    assert failed and "generate round got no usable reply after 2 attempt(s)" in failed[0].reason
    assert not rec.of(ev.MechanismActivated) and engine.state.status == "completed"


async def test_level2_rounds_fit_an_8k_context(tmp_path):
    with ScriptedOpenAI(responder=CutOffOnce([GOOD_TABU], cut=0, long_explore=1200), context_tokens=8192) as server:
        engine, rec = await run_engine(research_config(tmp_path, server, **{"endpoint.context_tokens": 8192}))
    research = [r for r in server.requests if "research engineer" in r["messages"][0]["content"]]
    assert research and all(len(json.dumps(r["messages"])) // 4 <= 8192 for r in research)
    assert all(messages_tokens(r["messages"]) + r["max_tokens"] <= 8192 for r in research)
    assert rec.of(ev.MechanismActivated)


async def test_the_detail_view_says_what_level1_saw_of_the_script(tmp_path, scripted_openai):
    from tests.test_tui_detail import detail

    scripted_openai.enqueue(proposal({"LR": 0.03}))
    engine, _ = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "budget.iterations": 1, "search.script_context": "full"}))
    assert "train.py      the whole best script (cut to its token budget)" in detail(engine.dir, 1)


def test_float_grid_offers_a_tuple_of_bounded_floats_as_the_tuples_one_element_away():
    from core.levels.reply_schemas import value_schema
    from core.services.script import ElementRange, ParamSpec

    betas = ParamSpec(name="ADAM_BETAS", kind="tuple", value=(0.8, 0.95),
                      elements=(ElementRange(0.0, 1.0, below=True), ElementRange(0.0, 1.0, below=True)))
    options = value_schema(betas, float_grid=True)["enum"]
    assert [0.8, 0.95] not in options  # the current tuple is no change (a small model copied it)
    assert [0.85, 0.95] in options and [0.8, 0.9] in options and [0.85, 0.9] not in options  # one element moves
    assert all(0 <= a < 1 and 0 <= b < 1 for a, b in options) and not any(b >= 1.0 for _, b in options)
    assert value_schema(betas)["prefixItems"][0] == {"type": "number", "minimum": 0.0, "exclusiveMaximum": 1.0}


def test_the_same_change_repeated_in_one_reply_is_one_change_and_two_values_are_refused():
    from core.levels.reply_schemas import changes_of

    same = [{"name": "TOTAL_BATCH_SIZE", "value": 1048576}] * 3  # what Gemma 3 270M wrote
    assert changes_of(same) == {"TOTAL_BATCH_SIZE": 1048576}
    with pytest.raises(ValueError, match="changed twice"):
        changes_of([{"name": "LR", "value": 0.03}, {"name": "LR", "value": 0.05}])


def test_a_level15_guidance_without_a_word_is_refused_and_an_empty_one_is_not():
    from core.levels.strategy import strategy_reply_problem

    base = {"diagnosis": "the rates move the score", "freeze": [], "unfreeze": [], "keep": {}, "reasoning": "trace"}
    assert "has no words in it" in strategy_reply_problem({**base, "guidance": ","})  # SmolLM2-135M's
    assert "has no words in it" in strategy_reply_problem({**base, "guidance": "1e-3 ;;"})
    assert strategy_reply_problem({**base, "guidance": "try a shorter warmdown next"}) == ""
    assert strategy_reply_problem({**base, "guidance": ""}) == ""  # no new guidance: the one in force stays
