"""Training under faults: non-finite steps, signals, a full disk, an unwritable run folder."""

import errno
import json
import os
import signal
import threading

import pytest
import torch
from helpers import make_tokenizer, tiny_config

from fluid import checkpoint as ckpt
from fluid.cli import main
from fluid.train.stop import StopSignals
from fluid.train.trainer import NonFiniteError, Trainer


def read_metrics(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (a finite loss with exploding gradients)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def poison(trainer: Trainer, nan_loss: set[int], inf_grad: set[int] = frozenset()) -> None:
    """Make the loss NaN, or its gradient infinite, at the given (0-based) steps."""
    real = trainer.train_model

    def model(*args):
        loss = real(*args)
        if trainer.step in nan_loss:
            return loss * float("nan")
        return _InfGrad.apply(loss) if trainer.step in inf_grad else loss

    trainer.train_model = model


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, minilm):
    trainer = Trainer(
        tiny_config(steps=8, batch_size=2, ckpt_every=100), tmp_path, make_tokenizer("kl"), minilm, show_progress=False
    )
    poison(trainer, nan_loss={2}, inf_grad={3})
    trainer.fit(steps=2)
    before, ema_before = params(trainer.model), params(trainer.ema.model)
    opt_before = [s["exp_avg"].clone() for s in trainer.opt.state.values()]
    trainer.fit(steps=4)  # both poisoned steps: nothing moves
    assert all(torch.equal(before[k], v) for k, v in params(trainer.model).items())
    assert all(torch.equal(ema_before[k], v) for k, v in params(trainer.ema.model).items())
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(opt_before, trainer.opt.state.values()))
    trainer.fit()  # and training goes on
    assert not all(torch.equal(before[k], v) for k, v in params(trainer.model).items())
    records = read_metrics(tmp_path)
    skipped = [r for r in records if "skipped" in r]
    assert [r["step"] for r in skipped] == [3, 4]
    assert skipped[0]["skipped"] == "loss nan" and skipped[1]["skipped"].startswith("gradient norm")
    logged = {r["step"]: r for r in records if "lr" in r}  # log_every=1: every step
    assert logged[8]["skipped_nonfinite"] == 2 and logged[3]["loss"] is None and logged[4]["loss"] is None
    assert all(torch.isfinite(torch.tensor(r["loss"])) for s, r in logged.items() if s not in (3, 4))
    assert trainer.sched.last_epoch == 8  # the learning rate follows the step count


def test_too_many_nonfinite_steps_stop_with_a_loadable_checkpoint(tmp_path, minilm, capsys):
    tok = make_tokenizer("kl")
    cfg = tiny_config(steps=20, batch_size=2, ckpt_every=100, max_nonfinite=3)
    trainer = Trainer(cfg, tmp_path, tok, minilm, show_progress=False)
    poison(trainer, nan_loss=set(range(1, 20)))
    with pytest.raises(NonFiniteError, match="3 steps in a row") as e:
        trainer.fit()
    assert "step-0000004" in str(e.value) and trainer.step == 4
    good = params(trainer.model)  # after the one good step
    folder = ckpt.resolve(tmp_path)
    assert folder.name == "step-0000004"
    resumed = Trainer(
        tiny_config(steps=20, batch_size=2, ckpt_every=100, max_nonfinite=3),
        tmp_path,
        tok,
        minilm,
        resume=True,
        show_progress=False,
    )
    assert resumed.step == 4 and all(torch.equal(good[k], v) for k, v in params(resumed.model).items())
    assert all(torch.isfinite(v).all() for v in params(resumed.ema.model).values())


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signal handlers need the main thread"
)
def test_sigterm_saves_a_checkpoint_and_returns(tmp_path, minilm):
    trainer = Trainer(
        tiny_config(steps=50, batch_size=2, ckpt_every=100), tmp_path, make_tokenizer("kl"), minilm, show_progress=False
    )
    real = trainer.train_model

    def model(*args):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would, in the middle of a step
        return real(*args)

    trainer.train_model = model
    trainer.fit()
    assert trainer.stopped_by == "SIGTERM" and trainer.step == 3
    assert ckpt.resolve(tmp_path).name == "step-0000003"
    assert ckpt.load_training_state(tmp_path)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signal handlers need the main thread"
)
def test_a_second_signal_exits_at_once():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.requested and signals.signal_name == "SIGINT"
        with pytest.raises(SystemExit) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path, minilm, monkeypatch):
    trainer = Trainer(
        tiny_config(steps=4, batch_size=2, ckpt_every=2), tmp_path, make_tokenizer("kl"), minilm, show_progress=False
    )
    trainer.fit(steps=2)
    real = ckpt.save_safetensors

    def full_disk(tensors, path, metadata=None):
        real(tensors, path, metadata)
        with open(path, "r+b") as f:  # half a file, as a write that ran out of space leaves it
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt, "save_safetensors", full_disk)
    with pytest.raises(ckpt.RunWriteError, match="No space left on device") as e:
        trainer.fit()
    assert "step-0000002" in str(e.value) and "untouched" in str(e.value)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000002"]  # no partial step-0000004
    monkeypatch.undo()
    assert ckpt.resolve(tmp_path).name == "step-0000002"
    resumed = Trainer(
        tiny_config(steps=4, batch_size=2, ckpt_every=2),
        tmp_path,
        make_tokenizer("kl"),
        minilm,
        resume=True,
        show_progress=False,
    )
    assert resumed.step == 2


def test_an_unwritable_run_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "run"
    assert main(["train", "--preset", "debug", "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot write in the run folder" in err and "Not a directory" in err and "Traceback" not in err


def test_a_read_only_run_folder_is_a_clear_error(tmp_path, minilm):
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    try:
        (probe / "x").write_text("")
        pytest.skip("this user writes into read-only folders (root with CAP_DAC_OVERRIDE)")
    except PermissionError:
        pass
    run = tmp_path / "run"
    trainer = Trainer(
        tiny_config(steps=4, batch_size=2, ckpt_every=2), run, make_tokenizer("kl"), minilm, show_progress=False
    )
    trainer.fit(steps=2)
    run.chmod(0o555)
    try:
        with pytest.raises(ckpt.RunWriteError, match="Permission denied"):
            trainer.fit()
        assert ckpt.resolve(run).name == "step-0000002"
    finally:
        run.chmod(0o755)
