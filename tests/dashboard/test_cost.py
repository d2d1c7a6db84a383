"""The cost model against examples worked out by hand from the default cost table (contracts/defaults/cost.yaml).

Hand arithmetic (defaults: local $1,200 / month, 730 h / month, 1 instance, 50 slots):
  month = 730 h x 3600 = 2,628,000 s
  slot-second = 1200 / (2,628,000 x 50) = 1200 / 131,400,000 = 9.1324e-6 $
  a 2.0 s turn = 1.82648e-5 $;  a day = 1200 x 24 / 730 = 39.4521 $
  on-demand day = 450 x 24 / 730 = 14.7945 $;  reserved day = 300 x 24 / 730 = 9.8630 $
"""
from __future__ import annotations

import pytest

from contracts.config import ConfigError
from contracts.cost import CostModel, Volume


@pytest.fixture(scope="module")
def model() -> CostModel:
    return CostModel.load()


def test_defaults_are_the_seed_table(model):
    assert model.deployment == "local"
    assert {k: m.monthly_usd for k, m in model.modes.items()} == {"local": 1200, "on_demand": 450, "reserved": 300}
    assert {k: m.latency_ms for k, m in model.modes.items()} == {"local": 80, "on_demand": 120, "reserved": 80}
    assert model.gpu_count == 2 and model.instances == 1


def test_turn_cost_slot_seconds(model):
    assert model.slot_second_usd == pytest.approx(1200 / 131_400_000)
    assert model.turn_cost_usd(input_tokens=100, output_tokens=200, latency_s=2.0) == pytest.approx(1.82648e-5, rel=1e-5)
    assert model.turn_cost_usd(input_tokens=5, output_tokens=0, latency_s=0.0) == 0.0
    # A full month of 50 busy slots adds up to exactly the monthly cost.
    assert model.turn_cost_usd(input_tokens=0, output_tokens=0, latency_s=2_628_000 * 50) == pytest.approx(1200)


def test_turn_cost_tokens_method():
    m = CostModel.from_dict({"deployment": "reserved", "modes": {"reserved": {"monthly_usd": 300}},
                             "allocation": {"method": "tokens", "reference_tokens_per_s": 1000, "input_token_weight": 0.25}})
    # 300 / (2,628,000 x 1000) = 1.14155e-7 $ per token; 200 out + 0.25 x 400 in = 300 tokens.
    assert m.turn_cost_usd(input_tokens=400, output_tokens=200, latency_s=9.9) == pytest.approx(300 * 300 / 2.628e9)


def test_per_day_per_mode(model):
    assert model.cost_per_day_usd() == pytest.approx(39.4521, abs=1e-4)
    assert model.cost_per_day_usd("on_demand") == pytest.approx(14.7945, abs=1e-4)
    assert model.cost_per_day_usd("reserved") == pytest.approx(9.8630, abs=1e-4)
    assert model.gpu_hour_usd() == pytest.approx(1200 / (2 * 730))  # 0.8219 $ per T4-hour


def test_summary_of_one_day(model):
    # One day: 1,000 turns in 200 sessions (150 completed dialogues), 600k input + 400k output tokens.
    v = Volume(seconds=86400, turns=1000, sessions=200, completed_dialogues=150,
               input_tokens=600_000, output_tokens=400_000, allocated_usd=3.0)
    s = model.summarize(v)
    assert s["period_cost_usd"] == pytest.approx(39.4521, abs=1e-4)
    assert s["cost_per_1k_tokens_usd"] == pytest.approx(0.0394521, abs=1e-7)   # 39.4521 / 1000
    assert s["cost_per_session_usd"] == pytest.approx(0.197260, abs=1e-6)      # 39.4521 / 200
    assert s["cost_per_completed_dialogue_usd"] == pytest.approx(0.263014, abs=1e-6)  # / 150
    assert s["cost_per_turn_usd"] == pytest.approx(0.0394521, abs=1e-7)
    assert s["monthly_projection_usd"] == 1200
    assert s["monthly_tokens_projection"] == pytest.approx(1_000_000 * 730 / 24)  # 30.4167 M
    assert s["capacity_used_ratio"] == pytest.approx(3.0 / 39.4521, rel=1e-4)


def test_mode_and_api_comparison(model):
    v = Volume(seconds=86400, turns=1000, input_tokens=600_000, output_tokens=400_000)
    rows = {r["mode"]: r for r in model.mode_comparison(v)}
    # 30,416,667 tokens a month: local 1200 / 30,416.667 k = 0.039452 $/1k; reserved 0.009863.
    assert rows["local"]["cost_per_1k_tokens_usd"] == pytest.approx(0.039452, abs=1e-6)
    assert rows["on_demand"]["cost_per_1k_tokens_usd"] == pytest.approx(0.014795, abs=1e-6)
    assert rows["reserved"]["cost_per_1k_tokens_usd"] == pytest.approx(0.009863, abs=1e-6)
    assert rows["reserved"]["delta_vs_current_usd"] == -900 and rows["local"]["current"]
    api = {r["api"]: r for r in model.api_comparison(v)}
    # deepseek-chat: 18.25 M in x 0.27 + 12.1667 M out x 1.10 = 4.9275 + 13.3833 = 18.3108 $ / month
    assert api["deepseek-chat"]["monthly_usd"] == pytest.approx(18.3108, abs=1e-3)
    # gpt-4o-mini: 18.25 x 0.15 + 12.1667 x 0.60 = 2.7375 + 7.3 = 10.0375 $
    assert api["gpt-4o-mini"]["monthly_usd"] == pytest.approx(10.0375, abs=1e-3)
    # break-even with deepseek-chat at a 50/50 mix: 1200 / 0.685e-6 = 1.7518e9 tokens a month
    assert model.break_even_monthly_tokens("deepseek-chat") == pytest.approx(1.75182e9, rel=1e-4)


@pytest.mark.parametrize("load,delta,target", [(0.85, 2, 3), (0.8, 0, 1), (0.5, 0, 1), (0.3, 0, 1), (0.29, -1, 1), (None, 0, 1)])
def test_scaling_rule(model, load, delta, target):
    assert model.scaling_delta(load) == delta
    assert model.recommended_instances(load) == target  # never below min_instances (1)
    assert model.recommended_instances(0.1, instances=4) == 3


def test_load_from_busy_seconds(model):
    # 1 h with 40 streams busy on average: 40 x 3600 busy seconds over 50 slots -> 0.8
    assert model.load_from_busy_seconds(40 * 3600, 3600) == pytest.approx(0.8)


def test_bad_configs_one_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("deployment: cloud\nmodes: {local: {monthly_usd: 1200}}\n")
    with pytest.raises(ConfigError, match="deployment: 'cloud' is not one of the modes"):
        CostModel.load(str(bad))
    bad.write_text("deployment: local\nmodes: {local: {monthly_usd: -1}}\n")
    with pytest.raises(ConfigError, match=r"modes\.local\.monthly_usd"):
        CostModel.load(str(bad))
    with pytest.raises(ConfigError, match="no such file"):
        CostModel.load(str(tmp_path / "missing.yaml"))
