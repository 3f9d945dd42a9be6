"""silver.exposures and silver.dim_experiment: the configured experiments' variants with
what was seen of them (a person switching variant, an anonymous exposure merged into a
person, a late exposure, an experiment without exposures)."""

from __future__ import annotations

import datetime as dt

from headwater.config import Home
from headwater.models.run import build
from tests.models.bronze import T0, identify, rows, write
from tests.models.test_conversions import CONFIG, exposure

D, M = dt.timedelta(days=1), dt.timedelta(minutes=1)


def dim(home: Home) -> dict[tuple[str, str], dict]:
    return {(r["experiment_id"], r["variant"]): r for r in rows(home, "SELECT * FROM silver.dim_experiment")}


def test_config_and_exposures_seen(tmp_path):
    home = Home(tmp_path)
    (home.root / "models.toml").write_text(CONFIG.replace('variants = ["x", "y"]', 'variants = ["x", "y"]\ncontrol = "y"\nweights = [1, 3]'))
    write(home, [
        exposure("x1", T0, "exp_a", "control", user=None, anon="a1"),  # anonymous, then merged into u1
        identify("i1", T0 + M, "a1", "u1"),
        exposure("x2", T0 + D, "exp_a", "treatment", user="u1"),  # u1 switches: counted in both
        exposure("x3", T0 + D, "exp_a", "control", user="u2", anon="a2"),
        exposure("x4", T0, "exp_a", "mystery", user="u3", anon="a3"),  # not configured: ignored
        exposure("x5", T0, "other", "control", user="u3", anon="a3"),
    ])
    build(home)
    exposures = {r["event_id"]: r for r in rows(home, "SELECT * FROM silver.exposures")}
    assert set(exposures) == {"x1", "x2", "x3"}  # an unknown variant or experiment is no exposure
    assert exposures["x1"]["person_id"] == exposures["x2"]["person_id"]  # the anonymous one is u1's
    d = dim(home)
    assert set(d) == {("exp_a", "control"), ("exp_a", "treatment"), ("exp_b", "x"), ("exp_b", "y")}
    c, t = d["exp_a", "control"], d["exp_a", "treatment"]
    assert (c["is_control"], c["weight"], c["control"], c["conversion_event"], c["exposure_event"]) == (
        True, 0.5, "control", "purchase", "Experiment Viewed")
    assert (c["exposed"], c["first_exposure_at"], c["last_exposure_at"]) == (2, T0, T0 + D)
    assert (t["is_control"], t["exposed"], t["first_exposure_at"], t["last_exposure_at"]) == (False, 1, T0 + D, T0 + D)
    assert all((r["experiment_first_exposure_at"], r["experiment_last_exposure_at"]) == (T0, T0 + D) for r in (c, t))
    x, y = d["exp_b", "x"], d["exp_b", "y"]
    assert (x["weight"], y["weight"], x["is_control"], y["is_control"]) == (0.25, 0.75, False, True)
    assert (y["exposed"], y["first_exposure_at"], y["experiment_last_exposure_at"]) == (0, None, None)

    # a late exposure (received later, event time before everything) moves the first one
    write(home, [exposure("x6", T0 - D, "exp_b", "x", user="u4", anon="a4", received=T0 + 3 * D)], batch_id=1)
    build(home)
    x, y = dim(home)["exp_b", "x"], dim(home)["exp_b", "y"]
    assert (x["exposed"], x["first_exposure_at"], y["experiment_first_exposure_at"]) == (1, T0 - D, T0 - D)
