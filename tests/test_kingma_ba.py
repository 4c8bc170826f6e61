"""The Kingma & Ba reproduction (``adamx.experiments.kingma_ba``) runs, learns and reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from adamx.experiments import kingma_ba  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    # 2 epochs (so that the cost can be seen to decrease), 1 seed, 2 optimizers, all three
    # experiments: 6 small compiles.
    return kingma_ba.run(
        experiments=["logreg", "mlp", "cnn"],
        optimizers=["adam", "sgd_nesterov"],
        epochs=2,
        seeds=1,
        progress=False,
    )


def test_run_learns(tiny):
    assert set(tiny.costs) == {"logreg", "mlp", "cnn"}
    for exp, per_opt in tiny.costs.items():
        assert set(per_opt) == {"adam", "sgd_nesterov"}
        for opt, costs in per_opt.items():
            assert costs.shape == (1, 2), (exp, opt)
            assert np.all(np.isfinite(costs)), (exp, opt)
            assert costs[0, 1] < costs[0, 0], (exp, opt, costs)
            accuracy = tiny.test_accuracy[exp][opt]
            assert accuracy.shape == (1,) and 0.0 <= accuracy[0] <= 1.0


def test_table_and_json(tiny):
    text = kingma_ba.table(tiny)
    for label in ("Adam", "SGDNesterov", "MLP", "CNN", "Logistic regression"):
        assert label in text
    assert "±" in text
    blob = json.loads(json.dumps(tiny.to_json()))
    assert set(blob["experiments"]["mlp"]) == {"adam", "sgd_nesterov"}


def test_plot_writes_png(tiny, tmp_path):
    path = kingma_ba.plot(tiny, tmp_path / "curves.png")
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adam_from_blocks_is_adam():
    import jax.numpy as jnp

    import adamx

    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    grads = {"w": jnp.array([0.3, -0.1, 2.0])}
    ours, theirs = kingma_ba.adam_from_blocks(1e-2), adamx.adam(1e-2)
    s1, s2 = ours.init(params), theirs.init(params)
    for _ in range(3):
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = theirs.update(grads, s2, params)
        np.testing.assert_array_equal(np.asarray(u1["w"]), np.asarray(u2["w"]))


def test_ablation_tiny_grid(tmp_path):
    ablation = kingma_ba.run_ablation(
        "logreg",
        epochs=1,
        seeds=1,
        b1s=(0.0, 0.9),
        b2s=(0.999,),
        log10_lrs=(-3, -1),
        progress=False,
    )
    assert ablation.final_cost.shape == (2, 2, 1, 2)
    assert np.all(np.isfinite(ablation.final_cost))
    assert "without" in kingma_ba.ablation_table(ablation)
    path = kingma_ba.plot_ablation(ablation, tmp_path / "ablation.png")
    assert path.stat().st_size > 1000
    json.dumps(ablation.to_json())


def test_cli_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="Unknown optimizers"):
        kingma_ba.run(optimizers="adam,lbfgs", epochs=1, seeds=1, progress=False)
