"""examples/tiny-lm: a real fine-tuning model, trained and then used for predictions with its weights."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from cogtrain.cli import main
from cogtrain.local import LocalRunError, missing_packages, run_prediction, run_training
from support.paths import EXAMPLES

MODEL = EXAMPLES / "tiny-lm"


@pytest.mark.integration
def test_train_then_predict_with_the_weights_and_fine_tune_further(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    log = io.StringIO()
    weights = tmp_path / "weights"
    output = run_training(MODEL, {"train_data": str(corpus), "steps": 250, "seed": 1}, weights,
                          log=log, err=io.StringIO())
    assert output == str(weights)
    lines = log.getvalue().splitlines()
    assert lines[0] == "training on cpu (no GPU)" if not torch.cuda.is_available() else lines[0].startswith("training on cuda")
    losses = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("step ")]
    assert losses[-1] < losses[0] / 10, f"the loss falls: {losses}"
    state = torch.load(weights, weights_only=True)
    assert state["embed.weight"].shape == (256, 32), "a real PyTorch state dict"

    text = run_prediction(MODEL, {"prompt": "the quick brown ", "length": 20}, weights, tmp_path / "o")
    assert text.startswith("fox jumps"), f"the trained weights are loaded through COG_WEIGHTS: {text!r}"
    untrained = run_prediction(MODEL, {"prompt": "the quick brown ", "length": 20}, None, tmp_path / "o")
    assert not untrained.startswith("fox"), "without COG_WEIGHTS the model is untrained"

    # Fine-tune those weights further on another text: training starts from where the first ended.
    other = tmp_path / "other.txt"
    other.write_text("pack my box with five dozen liquor jugs. " * 40)
    run_training(MODEL, {"train_data": str(other), "base_weights": str(weights), "steps": 1, "learning_rate": 1e-5},
                 tmp_path / "again", log=io.StringIO(), err=io.StringIO())
    again = torch.load(tmp_path / "again", weights_only=True)
    assert all((again[k] - state[k]).abs().max() < 1e-3 for k in state), "one tiny step away from base_weights"
    run_training(MODEL, {"train_data": str(other), "steps": 1, "seed": 2}, tmp_path / "fresh",
                 log=io.StringIO(), err=io.StringIO())
    fresh = torch.load(tmp_path / "fresh", weights_only=True)
    assert (fresh["embed.weight"] - state["embed.weight"]).abs().max() > 0.1, "without it, a fresh start"


@pytest.mark.integration
def test_the_model_s_own_input_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(MODEL), "-i", "steps=0", "-o", str(tmp_path / "w")]) == 1
    assert "input.steps: 0 is less than the minimum of 1" in capsys.readouterr().err
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("short")
    assert main(["run", str(MODEL), "-i", f"train_data=@{tiny}", "-o", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert "cogtrain run: TrainingFailed: the model's training failed: " in err
    assert "ValueError: train_data has 5 bytes; it needs more than 16" in err


@pytest.mark.unit
def test_missing_python_packages_are_named_before_anything_starts(tmp_path: Path) -> None:
    assert missing_packages({"build": {"python_packages": ["torch==2.13.0", "no-such-package-xyz>=1"]}}) == [
        "no-such-package-xyz>=1"]
    model = tmp_path / "m"
    model.mkdir()
    (model / "cog.yaml").write_text('build:\n  python_packages: ["no-such-package-xyz==1.0"]\ntrain: "t.py:train"\n')
    with pytest.raises(LocalRunError) as caught:
        run_training(model, {}, tmp_path / "w")
    assert "needs no-such-package-xyz==1.0 (build.python_packages)" in str(caught.value)
    assert "-m pip install no-such-package-xyz==1.0" in str(caught.value)
