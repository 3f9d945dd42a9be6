"""gold.experiments on generated exposures with a known lift and a planted sample ratio
mismatch, checked against the textbook formulas computed here in plain Python."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from headwater.config import Home
from headwater.models.run import build
from tests.models.bronze import T0, event, rows, write

D = dt.timedelta(days=1)
M = dt.timedelta(minutes=1)
CONFIG = """
[[experiments]]
id = "checkout_v2"
variants = ["control", "treatment"]
conversion_event = "purchase"

[[experiments]]
id = "banner"
variants = ["on", "off"]
control = "off"
weights = [1, 1]
conversion_event = "purchase"

[[experiments]]
id = "three_way"
variants = ["a", "b", "c"]
conversion_event = "signup"
"""


def exposure(eid: str, ts: dt.datetime, person: str, experiment: str, variant: str) -> dict:
    props = json.dumps({"experiment_id": experiment, "variation_id": variant})
    return event(eid, ts, user=person, anon=None, event_name="Experiment Viewed", properties=props)


def convert(eid: str, ts: dt.datetime, person: str, name: str = "purchase") -> dict:
    return event(eid, ts, user=person, anon=None, event_name=name)


def generated() -> list[dict]:
    """checkout_v2: 2000 + 2000 persons, 10 % vs 13 % converting after exposure, half exposed
    on day 0 and half on day 1; banner: 1000 vs 800 exposed at 50/50 (SRM); three_way:
    320 / 300 / 280 exposed."""
    out = []
    for variant, converters in (("control", 200), ("treatment", 260)):
        for i in range(2000):
            p, ts = f"{variant[0]}{i}", T0 + (D if i % 2 else dt.timedelta(0)) + i * M / 100
            out.append(exposure(f"x-{p}", ts, p, "checkout_v2", variant))
            if i < converters:
                out.append(convert(f"c-{p}", ts + 5 * M, p))
    # converting *before* the exposure does not count; a later second exposure keeps the first variant
    out += [convert(f"early-c{i}", T0 - M, f"c{i}") for i in range(1000, 1050)]
    out += [convert(f"earlier-c{i}", T0 - D, f"c{i}") for i in range(1050, 1060)]
    out += [exposure(f"again-t{i}", T0 + 2 * D, f"t{i}", "checkout_v2", "control") for i in range(0, 100)]
    # noise: other experiments' exposures, unknown variants
    out += [exposure(f"u{i}", T0, f"c{i}", "not_configured", "control") for i in range(10)]
    out += [exposure(f"v{i}", T0, f"z{i}", "checkout_v2", "mystery") for i in range(10)]
    for variant, n in (("on", 1000), ("off", 800)):
        out += [exposure(f"b-{variant}{i}", T0, f"b{variant}{i}", "banner", variant) for i in range(n)]
        out += [convert(f"bc-{variant}{i}", T0 + M, f"b{variant}{i}") for i in range(n // 10)]
    for variant, n in (("a", 320), ("b", 300), ("c", 280)):
        out += [exposure(f"3-{variant}{i}", T0, f"3{variant}{i}", "three_way", variant) for i in range(n)]
        out += [convert(f"3c-{variant}{i}", T0 + M, f"3{variant}{i}", "signup") for i in range(n // 4)]
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    home = Home(tmp_path_factory.mktemp("experiments"))
    (home.root / "models.toml").write_text(CONFIG)
    write(home, generated())
    build(home)
    return home


def results(home: Home, ds: dt.date) -> dict[tuple[str, str], dict]:
    return {(r["experiment_id"], r["variant"]): r for r in rows(home, "SELECT * FROM gold.experiments WHERE ds = $d", {"d": ds})}


def reference(n_t: int, x_t: int, n_c: int, x_c: int) -> dict:
    """Wald CI of the difference, delta-method CI of the ratio, pooled two-proportion z-test."""
    p_t, p_c = x_t / n_t, x_c / n_c
    var_t, var_c = p_t * (1 - p_t) / n_t, p_c * (1 - p_c) / n_c
    se_abs = math.sqrt(var_t + var_c)
    rel = p_t / p_c - 1
    se_rel = math.sqrt(var_t / p_c**2 + p_t**2 * var_c / p_c**4)
    pooled = (x_t + x_c) / (n_t + n_c)
    z = (p_t - p_c) / math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    return {
        "conversion_rate": p_t, "lift_abs": p_t - p_c, "lift_abs_ci_low": p_t - p_c - 1.96 * se_abs,
        "lift_abs_ci_high": p_t - p_c + 1.96 * se_abs, "lift_rel": rel, "lift_rel_ci_low": rel - 1.96 * se_rel,
        "lift_rel_ci_high": rel + 1.96 * se_rel, "z": z, "p_value": math.erfc(abs(z) / math.sqrt(2)),
    }


def test_known_lift_is_measured_exactly(home):
    day1 = T0.date() + D
    got = results(home, day1)
    control, treatment = got[("checkout_v2", "control")], got[("checkout_v2", "treatment")]
    assert (control["exposed"], control["converters"]) == (2000, 200)  # early purchases don't count
    assert (treatment["exposed"], treatment["converters"]) == (2000, 260)  # re-exposure keeps the first variant
    assert control["is_control"] and not treatment["is_control"]
    assert control["lift_abs"] is None and control["p_value"] is None and control["conversion_rate"] == 0.1
    want = reference(2000, 260, 2000, 200)
    for key, value in want.items():
        assert treatment[key] == pytest.approx(value, rel=1e-9, abs=2e-7), key  # p-value: A&S 7.1.26, |err| < 1.5e-7
    assert treatment["lift_abs_ci_low"] < 0.03 < treatment["lift_abs_ci_high"]  # the planted lift
    assert treatment["p_value"] < 0.01 and treatment["lift_abs_ci_low"] > 0
    assert not control["srm"] and control["srm_chi2"] == 0 and control["srm_p_value"] == pytest.approx(1, abs=2e-7)
    assert ("checkout_v2", "mystery") not in got and not any(k[0] == "not_configured" for k in got)


def test_results_are_cumulative_by_day(home):
    day0 = results(home, T0.date())
    assert day0[("checkout_v2", "control")]["exposed"] == 1000  # the even persons, exposed on day 0
    assert day0[("checkout_v2", "control")]["converters"] == 100
    assert day0[("checkout_v2", "treatment")]["converters"] == 130
    days = rows(home, "SELECT DISTINCT ds FROM gold.experiments ORDER BY ds")
    assert [r["ds"] for r in days] == [T0.date() - D, T0.date(), T0.date() + D, T0.date() + 2 * D]
    before = results(home, T0.date() - D)  # only early purchases that day: nobody exposed yet
    assert before[("checkout_v2", "control")]["exposed"] == 0 and before[("checkout_v2", "control")]["srm_chi2"] is None


def test_sample_ratio_mismatch_is_flagged(home):
    got = results(home, T0.date())
    on, off = got[("banner", "on")], got[("banner", "off")]
    assert (on["exposed"], off["exposed"], off["is_control"]) == (1000, 800, True)
    chi2 = 2 * 100**2 / 900  # expected 900 each
    assert on["srm_chi2"] == pytest.approx(chi2) and on["srm_p_value"] == pytest.approx(math.erfc(math.sqrt(chi2 / 2)), abs=2e-7)
    assert on["srm"] and off["srm"] and on["srm_p_value"] < 0.001
    assert on["lift_abs"] == pytest.approx(0.0) and on["p_value"] == pytest.approx(1, abs=2e-7)


def test_three_variants_use_two_degrees_of_freedom(home):
    got = results(home, T0.date())
    chi2 = (20**2 + 0 + 20**2) / 300
    assert got[("three_way", "a")]["expected_share"] == pytest.approx(1 / 3)
    assert got[("three_way", "b")]["srm_chi2"] == pytest.approx(chi2)
    assert got[("three_way", "b")]["srm_p_value"] == pytest.approx(math.exp(-chi2 / 2))  # chi-square, 2 dof
    assert not got[("three_way", "c")]["srm"]
    assert got[("three_way", "c")]["converters"] == 70 and got[("three_way", "a")]["is_control"]


def test_no_experiments_configured_gives_no_rows(tmp_path):
    home = Home(tmp_path)
    write(home, generated()[:50])
    build(home)
    assert rows(home, "SELECT count(*) AS n FROM gold.experiments")[0]["n"] == 0
