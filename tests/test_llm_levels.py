"""Every level against the scripted OpenAI-protocol server: schemas sent, refusals, truncation,
the endpoint check before the baseline, Level 1.5's checked replies and its authoritative freeze rule."""
from __future__ import annotations

import json

from core.record import events as ev
from core.services.llm import PROBE_SYSTEM
from tests.conftest import llm_config, run_engine
from tests.support import Reply, ScriptedOpenAI


def proposal(changes: dict, hypothesis: str = "test") -> str:
    return json.dumps({"changes": changes, "hypothesis": hypothesis})


def inner_requests(server: ScriptedOpenAI) -> list[dict]:
    return [r for r in server.requests if "ML research assistant" in r["messages"][0]["content"]]


def strategy_requests(server: ScriptedOpenAI) -> list[dict]:
    return [r for r in server.requests if "search strategy" in r["messages"][0]["content"]]


STRATEGY_ANSWER = {"diagnosis": "LR moves the score", "freeze": [], "unfreeze": [], "keep": {},
                   "guidance": "try a shorter warmdown next", "reasoning": "the trace"}


async def test_level1_sends_its_schema_of_the_active_parameters_as_json_schema(tmp_path, scripted_openai):
    scripted_openai.enqueue(proposal({"LR": 0.03}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 1}))
    fmt = inner_requests(scripted_openai)[0]["response_format"]
    assert fmt["type"] == "json_schema"
    changes = fmt["json_schema"]["schema"]["properties"]["changes"]
    offered = {item["properties"]["name"]["enum"][0]: item["properties"]["value"] for item in changes["items"]["anyOf"]}
    assert "LR" in offered and "DEPTH" not in offered  # locked: not offered
    assert changes["maxItems"] == 3  # at most three changes, in a form llama.cpp's grammar enforces
    assert 2**10 not in offered["BATCH_SIZE"]["enum"]  # powers of two as an enum, without the current value
    assert fmt["json_schema"]["schema"]["properties"]["hypothesis"]["maxLength"] > 0
    assert [e.mode for e in rec.of(ev.StructuredOutput)] == ["json_schema"]  # once per session
    assert engine.state.status == "completed"


async def test_a_refused_json_schema_falls_back_to_json_object_and_the_mode_is_recorded(tmp_path):
    with ScriptedOpenAI(refuse_json_schema=True) as server:
        server.enqueue(proposal({"LR": 0.03}), proposal({"LR": 0.02}))
        engine, rec = await run_engine(llm_config(tmp_path, server, **{"budget.iterations": 2}))
    kinds = [r.get("response_format", {}).get("type") for r in server.requests]
    assert kinds[:2] == ["json_schema", "json_object"]  # the endpoint check learns it, before the baseline
    assert all(k == "json_object" for k in kinds[2:])
    modes = rec.of(ev.StructuredOutput)
    assert [m.mode for m in modes] == ["json_object"] and "refused json_schema" in modes[0].reason
    assert [f.decision for f in rec.of(ev.IterationFinished)][1:] != ["rejected", "rejected"]


async def test_plain_text_when_every_response_format_is_refused(tmp_path):
    with ScriptedOpenAI(refuse_response_format=True) as server:
        server.enqueue(proposal({"LR": 0.03}))
        engine, rec = await run_engine(llm_config(tmp_path, server, **{"budget.iterations": 1}))
    assert "response_format" not in inner_requests(server)[0]
    assert [m.mode for m in rec.of(ev.StructuredOutput)] == ["off"]
    assert rec.of(ev.IterationFinished)[-1].changes == {"LR": 0.03}  # our own parsing still reads it


async def test_structured_off_sends_no_response_format(tmp_path, scripted_openai):
    scripted_openai.enqueue(proposal({"LR": 0.03}))
    await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 1, "endpoint.structured": "off"}))
    assert all("response_format" not in r for r in scripted_openai.requests)


async def test_a_reply_cut_off_at_length_is_recorded_and_reasked_in_the_models_terms(tmp_path, scripted_openai):
    scripted_openai.enqueue(Reply(content='{"changes": {"LR": 0.03, "LR_2": ', finish_reason="length"),
                            proposal({"LR": 0.03}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 1}))
    responses = [r for r in rec.of(ev.LLMResponse) if r.level == "inner"]
    assert [r.finish_reason for r in responses] == ["stop", "length", "stop"]  # the check, the cut-off, the re-ask
    assert responses[1].max_tokens == 2048  # Level 1's default limit was sent
    rejected = rec.of(ev.ProposalRejected)
    assert [r.kind for r in rejected] == ["truncated"] and "consider a larger max_tokens" in rejected[0].reason
    reask = inner_requests(scripted_openai)[1]["messages"][-1]["content"]
    assert "cut off" in reask and "max_tokens" not in reask  # the user's hint is not the model's
    assert rec.of(ev.IterationFinished)[-1].changes == {"LR": 0.03}


async def test_a_retried_call_leaves_an_event_per_failed_attempt(tmp_path, scripted_openai):
    scripted_openai.enqueue(Reply(status=503, error_body={"error": {"message": "overloaded"}}), proposal({"LR": 0.03}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 1}))
    retries = rec.of(ev.LLMRetry)
    assert len(retries) == 1 and retries[0].kind == "server" and "overloaded" in retries[0].error
    assert rec.of(ev.LLMResponse)[-1].attempts == 2


async def test_a_wrong_key_stops_the_run_before_the_baseline_trains(tmp_path, scripted_openai):
    scripted_openai.enqueue_probe(Reply(status=401, error_body={"error": {"message": "invalid api key"}}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai))
    assert engine.state.status == "failed" and "401" in engine.state.finished.reason
    assert not rec.of(ev.TrainingStarted) and not rec.of(ev.IterationStarted)


async def test_a_context_too_small_for_our_prompts_stops_the_run_before_the_baseline(tmp_path):
    with ScriptedOpenAI(context_tokens=2000) as server:
        engine, rec = await run_engine(llm_config(tmp_path, server))
    assert engine.state.status == "failed" and "context window is too small" in engine.state.finished.reason
    assert not rec.of(ev.TrainingStarted)
    assert len(server.requests) == 1  # one call, seconds: no baseline, no retries


async def test_the_endpoint_check_is_not_streamed_while_the_levels_stream(tmp_path, scripted_openai):
    # a server may report a context overflow as a 200 with an empty stream; unstreamed it is a 400
    scripted_openai.enqueue(proposal({"LR": 0.03}))
    await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 1}))
    check, *calls = scripted_openai.requests
    assert check["messages"][0]["content"] == PROBE_SYSTEM and check["stream"] is False
    assert calls and all(r["stream"] is True for r in calls)


async def test_a_level1_proposal_as_a_level15_answer_is_rejected_and_reasked(tmp_path, scripted_openai):
    def respond(req: dict) -> str:
        if "search strategy" in req["messages"][0]["content"]:
            asked_again = "could not be used" in req["messages"][-1]["content"]
            return json.dumps(STRATEGY_ANSWER) if asked_again else proposal({"LR": 0.05})
        return proposal({"LR": 0.03})
    scripted_openai.responder = respond
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "search.group": "B", "search.outer_period": 1, "budget.iterations": 1}))
    rejected = rec.of(ev.ReplyRejected)
    assert len(rejected) == 1 and "Level 1 proposal" in rejected[0].reason
    assert "Level 1 proposal" in strategy_requests(scripted_openai)[1]["messages"][-1]["content"]
    decision = rec.of(ev.StrategyDecision)[-1]
    assert decision.attempts == 2 and decision.guidance == STRATEGY_ANSWER["guidance"] and not decision.error
    schema = strategy_requests(scripted_openai)[0]["response_format"]["json_schema"]["schema"]
    assert set(schema["required"]) >= {"freeze", "unfreeze", "keep", "guidance"}


async def test_an_echo_of_the_prompts_placeholders_is_rejected(tmp_path, scripted_openai):
    echo = {"diagnosis": "what the trace shows", "freeze": [], "unfreeze": [], "keep": {},
            "guidance": "one to three sentences for the proposer", "reasoning": "why"}
    replies = iter([json.dumps(echo), json.dumps(STRATEGY_ANSWER)])
    scripted_openai.responder = lambda req: (next(replies) if "search strategy" in req["messages"][0]["content"]
                                             else proposal({"LR": 0.03}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "search.group": "B", "search.outer_period": 1, "budget.iterations": 1}))
    assert "placeholder" in rec.of(ev.ReplyRejected)[0].reason
    assert engine.state.guidance == STRATEGY_ANSWER["guidance"]  # the echo never became guidance


async def test_the_freeze_rule_freezes_its_candidate_when_the_reply_names_nothing(tmp_path, scripted_openai):
    scripted_openai.responder = lambda req: (json.dumps(STRATEGY_ANSWER) if "search strategy" in
                                             req["messages"][0]["content"] else proposal({"WARMDOWN_RATIO": 0.9}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "search.group": "B", "search.outer_period": 1, "strategy.freeze_after": 1, "budget.iterations": 1}))
    decision = rec.of(ev.StrategyDecision)[-1]
    assert decision.candidates == ["WARMDOWN_RATIO"] and decision.freeze == ["WARMDOWN_RATIO"]
    assert "WARMDOWN_RATIO" in engine.state.frozen


async def test_a_candidate_kept_with_a_reason_stays_active_and_the_reason_is_recorded(tmp_path, scripted_openai):
    keep = {**STRATEGY_ANSWER, "keep": {"WARMDOWN_RATIO": "only one value tried so far"}}
    scripted_openai.responder = lambda req: (json.dumps(keep) if "search strategy" in req["messages"][0]["content"]
                                             else proposal({"WARMDOWN_RATIO": 0.9}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "search.group": "B", "search.outer_period": 1, "strategy.freeze_after": 1, "budget.iterations": 1}))
    decision = rec.of(ev.StrategyDecision)[-1]
    assert decision.freeze == [] and decision.kept == {"WARMDOWN_RATIO": "only one value tried so far"}
    assert "WARMDOWN_RATIO" not in engine.state.frozen


async def test_an_exact_repeat_of_a_discarded_experiment_is_rejected_and_reasked(tmp_path, scripted_openai):
    scripted_openai.enqueue(proposal({"WARMDOWN_RATIO": 0.9}), proposal({"WARMDOWN_RATIO": 0.9}),
                            proposal({"LR": 0.03}))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{"budget.iterations": 2}))
    assert rec.of(ev.IterationFinished)[1].decision == "discard"
    repeat = [r for r in rec.of(ev.ProposalRejected) if r.kind == "repeat"]
    assert len(repeat) == 1 and repeat[0].iteration == 2 and "repeat of iteration 1" in repeat[0].reason
    assert "repeat of iteration 1" in inner_requests(scripted_openai)[2]["messages"][-1]["content"]
    assert rec.of(ev.IterationFinished)[-1].changes == {"LR": 0.03}


async def test_level15_sees_the_current_best_values_and_counts_rejected_proposals(tmp_path, scripted_openai):
    level1 = iter([proposal({"LR": "fast"}), proposal({"LR": 0.02}, "closer to the optimum")])
    scripted_openai.responder = lambda req: (json.dumps(STRATEGY_ANSWER) if "search strategy" in
                                             req["messages"][0]["content"] else next(level1))
    engine, rec = await run_engine(llm_config(tmp_path, scripted_openai, **{
        "search.group": "B", "search.outer_period": 1, "budget.iterations": 1}))
    assert rec.of(ev.IterationFinished)[-1].decision == "keep"
    prompt = strategy_requests(scripted_openai)[0]["messages"][-1]["content"]
    lr_line = next(line for line in prompt.splitlines() if line.startswith("- [active] LR:"))
    assert "= 0.02" in lr_line  # the best so far, not the baseline's 0.04
    assert "proposed 2× in all (1× trained)" in lr_line  # the rejected "fast" counts
