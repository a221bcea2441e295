"""`cogtrain validate` and `cogtrain crd`, and the README's quick start."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cogtrain.cli import main
from cogtrain.commands.common import load_schema, local_inputs
from cogtrain.commands.crd import render_crd
from support.paths import EXAMPLES, ROOT, SEED_MODELS, TEST_MODELS, schema_file
from support.registries import USERS, Registries

ALL_INPUTS = schema_file(SEED_MODELS["all-inputs"])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, "the quick start has a sh code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.unit
def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_second() -> None:
    main_job, tests = quick_start_commands()
    assert tests == "./run-tests"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert tests in ci, ".ci/run must call exactly the README's test command"
    assert main_job.startswith("./cogtrain ")


@pytest.mark.integration
def test_readme_main_job_runs() -> None:
    """The quick start's first command, as written, then the README's predict with its weights."""
    main_job, _ = quick_start_commands()
    weights = ROOT / "weights"
    weights.unlink(missing_ok=True)
    done = subprocess.run(["bash", "-c", main_job], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "step 300/300 loss" in done.stdout, "the training's logs are shown"
    assert "weights written to weights" in done.stderr
    assert weights.stat().st_size > 100_000, "a real weights file"
    readme = (ROOT / "README.md").read_text()
    predict = re.search(r"^\$ (\./cogtrain predict .*)$", readme, re.MULTILINE)
    assert predict, "the README shows how to predict with the weights"
    done = subprocess.run(["bash", "-c", predict.group(1)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "the weights" in done.stdout, "the trained model continues the prompt with its training text"
    weights.unlink()


@pytest.mark.unit
@pytest.mark.parametrize("example", sorted(p.parent for p in EXAMPLES.glob("*/training.yaml")), ids=lambda p: p.name)
def test_every_example_training_is_valid_for_its_model(capsys: pytest.CaptureFixture[str], example: Path) -> None:
    code, out, err = run(capsys, "validate", "--schema", str(example), "--training", str(example / "training.yaml"))
    assert code == 0, out + err
    assert isinstance(json.loads(out), dict)


# The seed's models as Cog's own generator made their schemas (copied into the repository from the
# shared fixtures): pinned, so an edit by hand to a schema or its train.py shows up here.
COG_GENERATED = {
    "examples/hello-train/.cog/openapi_schema.json": "3fc6e7e382954db1b86c260722e2462ba208a6ebc5735de770840161f9e4fec3",
    "examples/hello-train/train.py": "3cb0f8683bdd0706c6b2ac8941540d1d35eb4b6677d63760363e9aaaf7e2f2b0",
    "examples/training-output/.cog/openapi_schema.json": "b0d45e36f81b06a632d04b54d81f876570f4429c133ee009c7594b88a2873181",
    "examples/training-output/train.py": "0da5f437e305298452cca3dbd1baca2093bb57b7a1576525d43b179ced44e52e",
    "tests/models/all-inputs/.cog/openapi_schema.json": "285750155fa5830484b45eb70a4655d7dbbc9d22e7f6fd785c349aea1a2fcf8a",
    "tests/models/all-inputs/train.py": "9a9dac26d5bbf0465d36cfb7b4140213e55dddfd28ae17947cb69b76e01cb28b",
}


@pytest.mark.unit
def test_examples_schemas_are_cog_generated_copies() -> None:
    assert {path: hashlib.sha256((ROOT / path).read_bytes()).hexdigest() for path in COG_GENERATED} == COG_GENERATED


@pytest.mark.unit
def test_cogtrain_run_takes_secret_inputs_with_i(capsys: pytest.CaptureFixture[str]) -> None:
    """On a laptop there is no Kubernetes Secret to reference: `-i hf_token=...` works, as `cog train -i` does."""
    schema = load_schema(TEST_MODELS / "all-inputs")
    given = local_inputs(schema, ["train_data=https://example.com/d.zip", "caption_prefix=a photo of",
                                  "hf_token=hf_secret_value"])
    assert given is not None and given["hf_token"] == "hf_secret_value"
    assert local_inputs(schema, ["train_data=https://example.com/d.zip", "caption_prefix=x", "hf_tokn=v"]) is None
    assert "secretInputs" not in capsys.readouterr().err, "no advice about Kubernetes objects on a laptop"


@pytest.mark.unit
def test_validate_input_file_ok(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    inputs = write(tmp_path, "in.yaml", "train_data: https://x/y.zip\ncaption_prefix: tok\nsteps: 5.0\ntags: null\n")
    code, out, err = run(capsys, "validate", "--schema", str(ALL_INPUTS), "--input", str(inputs))
    assert code == 0
    assert json.loads(out) == {"train_data": "https://x/y.zip", "caption_prefix": "tok", "steps": 5}
    assert err == ""


@pytest.mark.unit
def test_validate_problems_one_line_each(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    inputs = write(tmp_path, "in.json", json.dumps({"steps": 0, "optimizer": "AdamW", "hf_token": "hunter2"}))
    code, out, _ = run(capsys, "validate", "--schema", str(ALL_INPUTS), "--input", str(inputs))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "input.steps: 0 is less than the minimum of 1 (allowed: 1..10000)"
    assert [line.split(":")[0] for line in lines] == [
        "input.steps", "input.optimizer", "input.hf_token", "input.train_data", "input.caption_prefix"]
    assert "hunter2" not in out


@pytest.mark.unit
def test_validate_secret_input_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    inputs = write(tmp_path, "in.yaml", "train_data: x\ncaption_prefix: y\n")
    code, out, _ = run(capsys, "validate", "--schema", str(ALL_INPUTS), "--input", str(inputs),
                       "--secret-input", "hf_token")
    assert code == 0 and "hf_token" not in out
    code, out, _ = run(capsys, "validate", "--schema", str(ALL_INPUTS), "--input", str(inputs),
                       "--secret-input", "seed")
    assert code == 1 and out.startswith("secretInputs.seed: is not a Secret input")


@pytest.mark.unit
def test_validate_training_manifest_with_other_objects(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    manifest = write(tmp_path, "t.yaml", """\
apiVersion: v1
kind: Secret
metadata: {name: hf}
stringData: {token: abc}
---
apiVersion: cog.run/v1alpha1
kind: Training
metadata: {name: t}
spec:
  model: r.example.com/m:1
  input: {train_data: "https://x/y.zip", caption_prefix: tok, notes: 2024-01-01}
  secretInputs:
    hf_token: {name: hf, key: token}
""")
    code, out, _ = run(capsys, "validate", "--schema", str(ALL_INPUTS), "--training", str(manifest))
    assert code == 0
    assert json.loads(out)["notes"] == "2024-01-01", "an unquoted date stays a string, as with kubectl"


@pytest.mark.unit
def test_validate_training_with_structural_problems(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    manifest = write(tmp_path, "t.yaml", """\
apiVersion: cog.run/v1alpha1
kind: Training
metadata: {name: t}
spec:
  model: r.example.com/m:1
  input: [1, 2]
  resources: {gpus: two}
  gpuCount: 1
""")
    code, out, _ = run(capsys, "validate", "--schema", str(ALL_INPUTS), "--training", str(manifest))
    assert code == 1
    fields = sorted(line.split(":")[0] for line in out.splitlines())
    assert fields == ["spec.gpuCount", "spec.input", "spec.resources.gpus"]


@pytest.mark.unit
def test_deprecated_input_warns_on_stderr(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    inputs = write(tmp_path, "in.yaml", "old: y\n")
    code, out, err = run(capsys, "validate", "--schema", str(TEST_MODELS / "edge-cases"), "--input", str(inputs))
    assert code == 0 and json.loads(out) == {"old": "y"}
    assert err.startswith("warning: input.old: is deprecated")


@pytest.mark.unit
def test_nan_in_json_input_is_a_problem_not_a_crash(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    inputs = write(tmp_path, "in.json", '{"train_data": "x", "caption_prefix": "y", "learning_rate": NaN}')
    code, out, _ = run(capsys, "validate", "--schema", str(ALL_INPUTS), "--input", str(inputs))
    assert code == 1 and out == "input.learning_rate: NaN is not a finite number; this takes a number\n"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({}, ["--input", "{tmp}/missing.yaml"], "missing.yaml: no such file"),
        ({"in.yaml": b"steps: 5\nnotes: \xff\xfe\n"}, ["--input", "{tmp}/in.yaml"],
         "in.yaml: not valid UTF-8 (byte 0xff at line 2); save the file as UTF-8"),
        ({"in.yaml": "steps: [1, 2\n"}, ["--input", "{tmp}/in.yaml"], "in.yaml: not valid YAML or JSON"),
        ({"in.json": "[" * 100_000 + "]" * 100_000}, ["--input", "{tmp}/in.json"], "in.json: nested too deeply to read"),
        ({"in.json": '{"seed": ' + "9" * 10_000 + "}"}, ["--input", "{tmp}/in.json"], "in.json: unreadable value"),
        ({"in.yaml": "a: 1\n---\nb: 2\n"}, ["--input", "{tmp}/in.yaml"], "holds 2 documents; expected one"),
        ({"t.yaml": "kind: Secret\n"}, ["--training", "{tmp}/t.yaml"], "t.yaml: holds no object of kind Training"),
        ({"t.yaml": "kind: Training\n---\nkind: Training\n"}, ["--training", "{tmp}/t.yaml"], "holds 2 Trainings"),
        ({"in.yaml": "a: 1\n"}, [], "give exactly one of --input FILE or --training FILE"),
        ({"in.yaml": "a: 1\n", "t.yaml": "kind: Training\n"}, ["--input", "{tmp}/in.yaml", "--training", "{tmp}/t.yaml"],
         "give exactly one of --input FILE or --training FILE"),
    ],
)
def test_unusable_arguments_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                   files: dict[str, str | bytes], args: list[str], message: str) -> None:
    for name, content in files.items():
        write(tmp_path, name, content)
    code, out, err = run(capsys, "validate", "--schema", str(ALL_INPUTS), *[a.format(tmp=tmp_path) for a in args])
    assert code == 2
    assert out == ""
    assert err.startswith("cogtrain validate: ") and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.unit
@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ("not json at all {", "schema.json: schema: not valid JSON"),
        ('{"components": {"schemas": {"TrainingInput": {"properties": {"a": {"type": "int"}}}}}}',
         "schema: components.schemas.TrainingInput.properties.a.type is 'int', not a JSON type"),
        ('{"components": {"schemas": {"Input": {}}}, "paths": {"/predictions": {}}}',
         "this model's cog.yaml has no `train:`"),
    ],
)
def test_broken_schema_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, schema: str, message: str) -> None:
    schema_path = write(tmp_path, "schema.json", schema)
    inputs = write(tmp_path, "in.yaml", "a: 1\n")
    code, _, err = run(capsys, "validate", "--schema", str(schema_path), "--input", str(inputs))
    assert code == 2 and message in err


@pytest.mark.unit
def test_schema_folder_without_cog_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    inputs = write(tmp_path, "in.yaml", "a: 1\n")
    code, _, err = run(capsys, "validate", "--schema", str(tmp_path), "--input", str(inputs))
    assert code == 2 and "a folder without .cog/openapi_schema.json" in err


@pytest.mark.integration
def test_argparse_usage_error_exits_2() -> None:
    done = subprocess.run([sys.executable, "-m", "cogtrain.cli", "validate", "--bogus"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "unrecognized arguments: --bogus" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.unit
def test_crd_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "crd")
    assert code == 0 and out == render_crd()
    target = tmp_path / "crd.yaml"
    assert run(capsys, "crd", "-o", str(target))[0] == 0
    assert target.read_text() == render_crd()


@pytest.mark.integration
def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "cogtrain"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("cogtrain ")


# --- reading the schema from a registry ------------------------------------------------------


@pytest.mark.integration
def test_schema_table(capsys: pytest.CaptureFixture[str], registries: Registries) -> None:
    host = registries.anonymous.host
    code, out, err = run(capsys, "schema", f"{host}/acme/all-inputs:1.0")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{host}/acme/all-inputs@{registries.digests['all-inputs']}"
    header = lines[3]
    assert header.split() == ["NAME", "TYPE", "DEFAULT", "CONSTRAINTS", "DESCRIPTION"]
    rows = {line.split()[0]: line for line in lines[4:] if line and not line.startswith("output:")}
    assert list(rows) == ["train_data", "steps", "learning_rate", "optimizer", "batch_size", "run_name",
                          "use_lora", "tags", "hf_token", "caption_prefix", "seed", "notes"]
    assert rows["train_data"].split()[1:3] == ["uri", "required"]
    assert rows["steps"].split()[1:4] == ["integer", "100", "1..10000"] and rows["steps"].endswith("Optimizer steps")
    assert 'one of: "adamw", "sgd", "lion"' in rows["optimizer"]
    assert "1..32 characters; matches ^[a-z0-9-]+$" in rows["run_name"]
    assert rows["tags"].split()[1:3] == ["list[string]", "null"]
    assert rows["hf_token"].split()[1] == "secret" and "give it in secretInputs" in rows["hf_token"]
    assert rows["caption_prefix"].split()[2] == "required"
    assert lines[-1] == "output: file"
    column = header.index("DESCRIPTION")
    assert all(row[column:].strip() for row in rows.values() if row.split()[0] != "seed" and row.split()[0] != "notes")


@pytest.mark.integration
def test_schema_output_object_and_deprecated(capsys: pytest.CaptureFixture[str], registries: Registries) -> None:
    code, out, _ = run(capsys, "schema", f"{registries.anonymous.host}/acme/training-output:1.0")
    assert code == 0 and out.splitlines()[-1] == "output: object {weights: file}"
    code, out, _ = run(capsys, "schema", f"{registries.anonymous.host}/acme/edge-cases:1.0")
    assert code == 0 and "deprecated" in [line for line in out.splitlines() if line.startswith("old ")][0]


@pytest.mark.integration
def test_schema_json(capsys: pytest.CaptureFixture[str], registries: Registries) -> None:
    code, out, _ = run(capsys, "schema", "--json", f"{registries.anonymous.host}/acme/all-inputs:1.0")
    assert code == 0
    assert json.loads(out) == json.loads(schema_file(SEED_MODELS["all-inputs"]).read_text())


@pytest.mark.integration
@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("acme/nothing:1.0", "ImageNotFound"),
        ("acme/all-inputs:2.0", "TagNotFound"),
        ("acme/plain:1.0", "NotACogImage"),
        ("acme/predict-only:1.0", "NoTrainingInterface"),
        ("acme/broken:1.0", "MalformedSchema"),
    ],
)
def test_schema_failures_exit_1_with_one_line(capsys: pytest.CaptureFixture[str], registries: Registries,
                                              image: str, reason: str) -> None:
    code, out, err = run(capsys, "schema", f"{registries.anonymous.host}/{image}")
    assert code == 1 and out == ""
    assert err.startswith(f"cogtrain schema: {reason}: ") and err.count("\n") == 1


@pytest.mark.integration
def test_schema_unreachable_registry(capsys: pytest.CaptureFixture[str]) -> None:
    from support.cogserver import free_port

    code, _, err = run(capsys, "schema", "--timeout", "2", f"127.0.0.1:{free_port()}/acme/m:1")
    assert code == 1 and err.startswith("cogtrain schema: RegistryUnavailable: ")


@pytest.mark.integration
def test_schema_private_registry_with_registry_config(capsys: pytest.CaptureFixture[str], registries: Registries,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nowhere"))
    host = registries.token.host
    image = f"{host}/acme/private:1.0"
    code, _, err = run(capsys, "schema", image)
    assert code == 1 and "cogtrain schema: Unauthorized: " in err
    config = write(tmp_path, "config.json", json.dumps({"auths": {host: {"username": "reader", "password": USERS["reader"]}}}))
    code, out, _ = run(capsys, "schema", "--registry-config", str(config), image)
    assert code == 0 and "train_data" in out
    bad = write(tmp_path, "bad.json", json.dumps({"auths": {host: {"username": "reader", "password": "nope"}}}))
    code, _, err = run(capsys, "schema", "--registry-config", str(bad), image)
    assert code == 1 and f"with the credentials of {bad}" in err and "nope" not in err
    docker_dir = tmp_path / "docker"
    docker_dir.mkdir()
    (docker_dir / "config.json").write_text(config.read_text())
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_dir))
    assert run(capsys, "schema", image)[0] == 0, "Docker's own config file is read by default"


@pytest.mark.unit
def test_insecure_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from cogtrain.cli import build_parser
    from cogtrain.commands.common import registry_client
    from cogtrain.reference import parse_reference

    image = "registry.ml.svc:5000/acme/m:1"
    reference = parse_reference(image)
    monkeypatch.delenv("COGTRAIN_INSECURE_REGISTRIES", raising=False)
    assert registry_client(build_parser().parse_args(["schema", image])).scheme_for(reference) == "https"
    assert registry_client(build_parser().parse_args(["schema", "--insecure", image])).scheme_for(reference) == "http"
    monkeypatch.setenv("COGTRAIN_INSECURE_REGISTRIES", "other.svc, registry.ml.svc:5000")
    assert registry_client(build_parser().parse_args(["schema", image])).scheme_for(reference) == "http"


@pytest.mark.integration
def test_validate_with_model_image(capsys: pytest.CaptureFixture[str], registries: Registries, tmp_path: Path) -> None:
    image = f"{registries.anonymous.host}/acme/all-inputs:1.0"
    good = write(tmp_path, "good.yaml", "train_data: https://x/y.zip\ncaption_prefix: tok\n")
    code, out, _ = run(capsys, "validate", "--model", image, "--input", str(good))
    assert code == 0 and json.loads(out)["caption_prefix"] == "tok"
    bad = write(tmp_path, "bad.yaml", "steps: 0\n")
    code, out, _ = run(capsys, "validate", "--model", image, "--input", str(bad))
    assert code == 1 and out.splitlines()[0] == "input.steps: 0 is less than the minimum of 1 (allowed: 1..10000)"
    code, _, err = run(capsys, "validate", "--model", image, "--schema", str(ALL_INPUTS), "--input", str(good))
    assert code == 2 and "give exactly one of --schema FILE or --model IMAGE" in err
    code, _, err = run(capsys, "validate", "--model", f"{registries.anonymous.host}/acme/nothing:1", "--input", str(good))
    assert code == 2 and "not found" in err
