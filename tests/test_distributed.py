"""Two training processes on CPU with the gloo backend, as torchrun would start them."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import WordHashEncoder, make_tokenizer, tiny_config
from safetensors.torch import load_file


def _worker(rank: int, world: int, run_dir: str, init_file: str) -> None:
    from fluid.train.distributed import DistInfo
    from fluid.train.trainer import Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = tiny_config(steps=4, batch_size=4, ckpt_every=4)
        trainer = Trainer(
            cfg,
            run_dir,
            make_tokenizer("kl"),
            WordHashEncoder(),
            dist=DistInfo(rank, world, 0, "cpu"),
            show_progress=False,
        )
        trainer.fit()
        # DDP keeps the replicas identical: compare every rank's weights with rank 0's.
        for p in trainer.model.parameters():
            ref = p.detach().clone()
            dist.broadcast(ref, 0)
            assert torch.equal(ref, p.detach()), "replicas diverged"
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_training(tmp_path):
    run = tmp_path / "run"
    mp.spawn(_worker, args=(2, str(run), str(tmp_path / "init")), nprocs=2, join=True)
    state = load_file(str(run / "latest" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in state.values())
    meta = run / "latest" / "training_state.pt"
    saved = torch.load(meta, weights_only=True)
    # train.batch_size is the global batch: 2 processes x 2 images; no random state to save
    # (each micro-batch's draws follow from the seed, the step and its slot).
    assert saved["world"] == 2 and saved["global_batch"] == 4 and saved["micro_batch"] == 2 and saved["step"] == 4
    assert "generators" not in saved


def test_setup_reads_the_process_group_that_torchrun_describes(monkeypatch):
    """``torchrun`` passes the job through RANK, WORLD_SIZE and LOCAL_RANK: the global rank
    names the process, the local rank its GPU; gloo on CPU, NCCL on GPUs; no group alone."""
    from fluid.train import distributed

    joined = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, timeout=None: joined.append(backend))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.setup("cpu") == distributed.DistInfo(0, 1, 0, "cpu") and joined == []  # plain `fluid train`

    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.setup("cpu")
    assert info == distributed.DistInfo(rank=5, world=8, local_rank=1, device="cpu") and joined == ["gloo"]
    assert not info.is_main
    devices = []
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    info = distributed.setup("cuda")
    assert info.device == "cuda:1" and devices == [1] and joined == ["gloo", "nccl"]
