"""Model folders: FluidPipeline.save_pretrained / from_pretrained, the model card, hub ids."""

import json
import shutil

import pytest
import torch

from fluid.assets import generator_path
from fluid.checkpoint import CheckpointError
from fluid.checkpoint.folder import Checkpoint, is_pipeline_folder
from fluid.files import file_digest
from fluid.model.counts import count_params
from fluid.sample import folder as pf
from fluid.sample.pipeline import FluidPipeline

PROMPTS = ["a red square"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Sampling these small models is many tiny matmuls: one thread is as fast as two, and
    far faster when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shipped(minilm):
    """The shipped discrete-raster model: the fastest to sample (~0.01 s an image)."""
    return FluidPipeline.from_pretrained(variant="discrete-raster", device="cpu", text_encoder=minilm)


def _eval_record(digest: str) -> dict:
    """The parts of `fluid eval`'s metrics.json the card reads, for weights ``digest``."""
    families = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    return {
        "format": "fluid-eval/1",
        "time": "2025-01-01T00:00:00+00:00",
        "checkpoint": {"weights_sha256": digest},
        "eval": {"sample": {"cfg": 3.0, "cfg_schedule": "linear", "temperature": 0.6, "steps": 64}, "head_steps": 100},
        "metrics": {
            "shapes_eval": {"overall": 0.7031, "per_family": {f: 0.5 for f in families}, "images": 384},
            "shapes_fd": {"value": 85.6},
            "val_loss": {"value": 3.0566, "pairs": 512, "loss": "nats per token"},
        },
    }


def test_a_checkpoint_opens_once_from_a_pipeline_a_run_or_its_own_folder(shipped, tmp_path):
    out = shipped.save_pretrained(tmp_path / "dr")
    from_pipeline = Checkpoint.open(out)
    assert from_pipeline.folder == out / "generator"
    assert from_pipeline.tokenizer_path == out / "tokenizer"  # the one bundled beside it
    run = tmp_path / "run"
    shutil.copytree(out / "generator", run / "step-0000007")
    (run / "latest").symlink_to("step-0000007")
    from_run = Checkpoint.open(run)
    assert from_run.folder == (run / "step-0000007").resolve()
    assert from_run.tokenizer_path != out / "tokenizer"  # no pipeline folder: the config's tokenizer
    assert (
        from_run.config.to_dict()
        == from_pipeline.config.to_dict()
        == Checkpoint.open(out / "generator").config.to_dict()
    )
    model = from_run.generator()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shipped.model.state_dict().values()))
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.open(tmp_path / "missing")


def test_round_trip_gives_the_same_images(shipped, minilm, tmp_path):
    out = shipped.save_pretrained(tmp_path / "dr")
    assert is_pipeline_folder(out)
    assert {p.name for p in out.iterdir()} == {"model_index.json", "generator", "tokenizer", "README.md"}
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "FluidPipeline" and index["variant"] == "discrete-raster"
    assert index["text_encoder"]["encoder"] == "minilm" and index["text_encoder"]["identity"] == minilm.identity()
    # The shipped fp16 weights are written back in fp16, byte for byte.
    assert file_digest(out / "generator" / "ema.safetensors") == file_digest(
        generator_path("discrete-raster") / "ema.safetensors"
    )
    loaded = FluidPipeline.from_pretrained(out, device="cpu", text_encoder=minilm)
    assert loaded.source == out / "generator"
    assert loaded.tokenizer.identity() == shipped.tokenizer.identity()
    a = shipped(PROMPTS, seed=5, output_type="tensor")
    b = loaded(PROMPTS, seed=5, output_type="tensor")
    assert torch.equal(a, b)
    # Saving a loaded folder again (in place) keeps it loadable.
    loaded.save_pretrained(out)
    assert torch.equal(
        FluidPipeline.from_pretrained(str(out), device="cpu", text_encoder=minilm)(
            PROMPTS, seed=5, output_type="tensor"
        ),
        a,
    )


def test_model_card_is_written_from_the_config_and_records(shipped, tmp_path):
    out = shipped.save_pretrained(tmp_path / "dr", dtype="fp32")
    card = (out / "README.md").read_text()
    cfg = shipped.cfg
    assert card.startswith("---\nlibrary_name: fluid\n") and "pipeline_tag: text-to-image" in card
    assert "# Fluid discrete-raster (shapes-small)" in card
    assert f"{count_params(cfg.model, cfg.text)['total'] / 1e6:.2f}M" in card
    assert f"{cfg.train.steps:,} x {cfg.train.batch_size} = {cfg.train.steps * cfg.train.batch_size:,} images" in card
    assert "validation loss, EMA weights | 3.057" in card  # from the shipped summary.json
    assert shipped.tokenizer.identity() in card and "reconstruction PSNR" in card
    assert "No evaluation record" in card
    assert json.loads((out / "generator" / "meta.json").read_text())["dtype"] == "fp32"
    assert "/tmp" not in card and "fluid-work" not in card  # no paths of the training machine


def test_evaluation_record_is_found_only_for_the_same_weights(minilm, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(generator_path("discrete-raster"), src)
    digest = file_digest(src / "ema.safetensors", 12)
    (src / "metrics.json").write_text(json.dumps(_eval_record(digest)))
    pipe = FluidPipeline.from_pretrained(src, device="cpu", text_encoder=minilm)
    out = pipe.save_pretrained(tmp_path / "with-metrics")
    card = (out / "README.md").read_text()
    assert "| **0.703** |" in card and "85.6" in card and "512 held-out pairs" in card
    assert json.loads((out / "metrics.json").read_text())["checkpoint"]["weights_sha256"] == digest

    (src / "metrics.json").write_text(json.dumps(_eval_record("0123456789ab")))  # another checkpoint's
    out = pipe.save_pretrained(tmp_path / "without")
    assert not (out / "metrics.json").exists() and "No evaluation record" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="describes weights 0123456789ab"):
        pipe.save_pretrained(tmp_path / "given", metrics=src / "metrics.json")


def test_save_refuses_a_folder_with_other_contents(shipped, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a pipeline folder"):
        shipped.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_hub_id_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(pf.HubUnavailableError, match="hub is not reachable.*Pass a local folder"):
        FluidPipeline.from_pretrained("fluid-test/not-here", device="cpu")


def test_hub_id_network_failure_says_so(monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(pf.HubUnavailableError, match="not reachable \\(ConnectionError: connection refused\\)"):
        FluidPipeline.from_pretrained("fluid-test/not-here", device="cpu")


def test_hub_id_loads_the_downloaded_snapshot(shipped, minilm, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = shipped.save_pretrained(tmp_path / "snapshot")
    asked = []

    def fake_download(repo_id, **kwargs):
        asked.append(repo_id)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    pipe = FluidPipeline.from_pretrained("owner/fluid-shapes", device="cpu", text_encoder=minilm)
    assert asked == ["owner/fluid-shapes"] and pipe.cfg.model.variant == "discrete-raster"


def test_local_paths_never_go_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("asked the hub"))
    with pytest.raises(CheckpointError, match="does not exist"):
        FluidPipeline.from_pretrained(tmp_path / "missing", device="cpu")  # a Path is always local
    with pytest.raises(CheckpointError, match="does not exist"):
        FluidPipeline.from_pretrained(str(tmp_path / "a" / "b"), device="cpu")  # not owner/name
