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


def test_claims_table_from_the_run(tiny):
    text = kingma_ba.claims_table(tiny)
    assert text.startswith("| paper | claim |")
    rows = {c.claim: c for c in kingma_ba.claims(tiny)}
    # Run: Adam and SGD-Nesterov on all three; AdaGrad, RMSProp, AdaDelta were not.
    assert rows["Adam converges like SGD-Nesterov"].final in {"agrees", "level", "departs"}
    assert rows["Adam faster than AdaGrad"].final == "not run"
    assert "run with --ablation" in text
    assert "How this run differs from the paper (data: digits)" in text
    json.dumps(tiny.to_json()["claims"])


def _results(costs_a, costs_b, exp="logreg", a="adam", b="sgd_nesterov"):
    costs = {exp: {a: np.asarray(costs_a, float), b: np.asarray(costs_b, float)}}
    acc = {exp: {a: np.ones(len(costs_a)), b: np.ones(len(costs_b))}}
    lrs = {exp: {a: 1e-3, b: 1e-3}}
    return kingma_ba.Results(costs, acc, lrs, {}, list(range(len(costs_a))), 0.0)


def test_claims_rule_uses_the_seeds_spread():
    # Adam's final cost 0.10 +- 0.01 against SGD-Nesterov's 0.20 +- 0.01: ahead beyond the spread.
    ahead = _results([[1.0, 0.09], [1.0, 0.11]], [[0.5, 0.19], [0.5, 0.21]])
    row = kingma_ba.claims(ahead)[0]
    assert (row.final, row.over_epochs) == ("agrees", "departs")  # 0.55 vs 0.35 over epochs
    # Within the spread: "Adam converges like SGD-Nesterov" asks for level-or-ahead: agrees.
    level = _results([[1.0, 0.10], [1.0, 0.14]], [[1.0, 0.11], [1.0, 0.12]])
    assert kingma_ba.claims(level)[0].final == "agrees"
    # "Adam faster than AdaGrad" asks for ahead: within the spread it is only level.
    faster = _results([[1.0, 0.10], [1.0, 0.14]], [[1.0, 0.11], [1.0, 0.12]], b="adagrad")
    assert kingma_ba.claims(faster)[1].final == "level"
    # A diverged comparator loses; a diverged Adam departs.
    diverged = _results([[1.0, np.inf]], [[1.0, 0.5]], b="adagrad")
    assert kingma_ba.claims(diverged)[1].final == "departs"


def test_ablation_claims():
    fc = np.full((2, 1, 2, 2), 0.5)  # (variant, b1, b2, lr)
    fc[1, 0, 1, 1] = np.inf  # uncorrected diverges at the larger b2 and larger lr
    ablation = kingma_ba.Ablation("mlp", 1, (0.9,), (0.99, 0.9999), (-3, -1), fc, [0], 0.0)
    rows = {c.claim: c for c in kingma_ba.ablation_claims(ablation)}
    assert rows["Without bias correction, b2 near 1 is unstable"].final == "agrees"
    assert rows["Bias correction gives the best result"].final == "agrees"
    assert rows["Bias correction is never worse"].final == "agrees"
    fc[1, 0, 0, 0] = 0.1  # uncorrected clearly lower at one setting
    rows = {c.claim: c for c in kingma_ba.ablation_claims(ablation)}
    assert rows["Bias correction is never worse"].final == "departs"
    assert "b1=0.9 b2=0.99 lr=1e-3" in rows["Bias correction is never worse"].shows
    assert rows["Bias correction gives the best result"].final == "departs"
    assert "| paper | claim |" in kingma_ba.claims_table(ablation=ablation)


# ----------------------------------------------------------------------------------------------
# --data: the paper's MNIST and CIFAR-10 from the user's files, here small generated ones


def _idx(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format: 00 00 08 ndim, big-endian dims, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _images(rng, n, *shape):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def _write_mnist(folder, n_train=40, n_test=12, gzipped=False, side=28):
    import gzip

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": _images(rng, n_train, side, side),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": _images(rng, n_test, side, side),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, array in arrays.items():
        raw = _idx(np.asarray(array, np.uint8))
        if gzipped:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return folder, arrays


def _write_cifar_bin(folder, n_per_batch=6, batches=2):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, batches + 1)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, (n_per_batch, 1), dtype=np.uint8)
        pixels = _images(rng, n_per_batch, 3 * 32 * 32)
        (folder / name).write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    return folder


def test_load_mnist_idx_plain_and_gzipped(tmp_path):
    from adamx.experiments import data

    plain, arrays = _write_mnist(tmp_path / "plain")
    gzipped, _ = _write_mnist(tmp_path / "gz", gzipped=True)
    a, b = data.load(plain), data.load(gzipped / "train-images-idx3-ubyte.gz")
    for d in (a, b):
        assert d.name == "MNIST" and d.shape == (28, 28, 1)
        assert d.x_train.shape == (40, 784) and d.x_train.dtype == np.float32
        assert d.x_test.shape == (12, 784)
        np.testing.assert_array_equal(d.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(a.x_train, b.x_train)
    # Standardised with the training set's statistics, pixel by pixel.
    np.testing.assert_allclose(a.x_train.mean(axis=0), 0.0, atol=1e-5)
    assert data.read_idx(plain / "t10k-images-idx3-ubyte").shape == (12, 28, 28)
    assert data.load(plain, train_size=10).x_train.shape == (10, 784)


def test_load_mnist_npz(tmp_path):
    from adamx.experiments import data

    rng = np.random.default_rng(2)
    x, y = _images(rng, 30, 28, 28), np.arange(30) % 10
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    d = data.load(tmp_path / "mnist.npz")
    assert (d.name, d.shape, d.x_train.shape, d.x_test.shape) == (
        "MNIST",
        (28, 28, 1),
        (30, 784),
        (5, 784),
    )
    np.savez(tmp_path / "train_only.npz", x_train=x, y_train=y)  # a fixed 20% is held out
    d = data.load(tmp_path / "train_only.npz")
    assert (d.x_train.shape[0], d.x_test.shape[0]) == (24, 6)


def test_load_cifar10_binary(tmp_path):
    from adamx.experiments import data

    folder = _write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    d = data.load(folder)
    assert (d.name, d.shape, d.x_train.shape, d.x_test.shape) == (
        "CIFAR-10",
        (32, 32, 3),
        (12, 3072),
        (6, 3072),
    )
    # Channels last: the record's first 1024 pixel bytes are the red plane.
    record = np.frombuffer((folder / "data_batch_1.bin").read_bytes(), np.uint8)[: 1 + 3072]
    raw = data._read_cifar_bin(folder / "data_batch_1.bin")[0][0]
    np.testing.assert_array_equal(raw[..., 0].reshape(-1), record[1 : 1 + 1024])
    assert d.y_train[0] == record[0]


def test_load_cifar10_python_version_with_a_restricted_unpickler(tmp_path):
    import pickle

    from adamx.experiments import data

    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch"):
        batch = {b"data": _images(rng, 4, 3072), b"labels": [1, 2, 3, 4], b"batch_label": b"x"}
        raw = pickle.dumps(batch, protocol=2)
        # The real files were pickled by numpy 1 under python 2: numpy.core, not numpy._core.
        (folder / name).write_bytes(raw.replace(b"numpy._core.", b"numpy.core."))
    d = data.load(folder)
    assert d.shape == (32, 32, 3) and d.x_train.shape == (4, 3072)
    np.testing.assert_array_equal(d.y_train, [1, 2, 3, 4])

    class Evil:
        def __reduce__(self):
            import os

            return (os.getcwd, ())

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [1]}))
    with pytest.raises(data.DataFormatError, match="refused to load posix.getcwd|refused to load"):
        data.load(folder)


@pytest.mark.parametrize(
    "case",
    ["idx_magic", "idx_truncated", "gzip_truncated", "cifar_size", "npz_keys", "npz_garbage"],
)
def test_malformed_data_gets_a_clear_error(tmp_path, case):
    from adamx.experiments import data

    if case.startswith(("idx", "gzip")):
        folder, _ = _write_mnist(tmp_path / "mnist", gzipped=case == "gzip_truncated")
        name = "train-images-idx3-ubyte" + (".gz" if case == "gzip_truncated" else "")
        target = folder / name
        raw = target.read_bytes()
        if case == "idx_magic":
            target.write_bytes(b"PK\x03\x04" + raw[4:])
        elif case == "idx_truncated":
            target.write_bytes(raw[:-100])
        else:
            target.write_bytes(raw[: len(raw) // 2])  # a gzip cut short
        expected = {
            "idx_magic": "expected an IDX file.*starts with 50 4b 03 04",
            "idx_truncated": "expected 31376 bytes.*has 31276.*fetch it again",
            "gzip_truncated": "expected a complete gzip file.*fetch it again",
        }[case]
        path = folder
    elif case == "cifar_size":
        path = _write_cifar_bin(tmp_path / "cifar")
        (path / "data_batch_2.bin").write_bytes(b"\x00" * 3000)
        expected = "expected CIFAR-10 binary records of 3073 bytes.*has 3000 bytes.*binary version"
    elif case == "npz_keys":
        path = tmp_path / "mnist.npz"
        np.savez(path, images=np.zeros((2, 28, 28)), labels=np.zeros(2))
        expected = "expected arrays x_train and y_train.*holds \\['images', 'labels'\\].*np.savez"
    else:
        path = tmp_path / "mnist.npz"
        path.write_bytes(b"not a zip at all")
        expected = "expected a numpy .npz archive.*does not start like a zip.*6e 6f 74 20"
    with pytest.raises(data.DataFormatError, match=expected):
        data.load(path)


def test_unknown_data_path(tmp_path):
    from adamx.experiments import data

    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        data.load(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(data.DataFormatError, match="data_batch_\\*.bin"):
        data.load(tmp_path)


def test_cli_runs_on_generated_mnist_and_cifar(tmp_path, capsys):
    mnist, _ = _write_mnist(tmp_path / "mnist", n_train=24, n_test=8, gzipped=True)
    common = ["--optimizers", "adam,sgd_nesterov", "--epochs", "1", "--seeds", "1"]
    common += ["--no-progress"]
    results = kingma_ba.main(
        ["--data", str(mnist), "--experiments", "logreg", "--out", str(tmp_path / "m"), *common]
    )
    out = capsys.readouterr().out
    assert "data: MNIST" in out and "28x28x1" in out
    assert "The paper's section 6 against this run" in out
    assert results.data == "MNIST" and results.costs["logreg"]["adam"].shape == (1, 1)
    blob = json.loads((tmp_path / "m" / "kingma_ba.json").read_text())
    assert blob["data"] == "MNIST"

    cifar = _write_cifar_bin(tmp_path / "cifar", n_per_batch=8, batches=1)
    results = kingma_ba.main(
        ["--data", str(cifar), "--experiments", "cnn", "--out", str(tmp_path / "c"), *common]
    )
    assert "32x32x3" in capsys.readouterr().out
    assert np.all(np.isfinite(results.costs["cnn"]["adam"]))


def test_cli_malformed_data_exits_with_the_sentence(tmp_path):
    folder = _write_cifar_bin(tmp_path / "cifar")
    (folder / "test_batch.bin").write_bytes(b"\x01" * 10)
    with pytest.raises(SystemExit, match="error: .*expected CIFAR-10 binary records"):
        kingma_ba.main(["--data", str(folder), "--out", str(tmp_path / "out"), "--no-progress"])
