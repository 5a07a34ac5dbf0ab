"""`fluid serve`: request checking, the queue, the HTTP API on a loopback server, and a load
test of 50 concurrent requests. Tiny random-initialised models keep it fast; the browser
test (test_serve_browser.py) uses the shipped ones."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest
import torch
from helpers import make_tokenizer

from fluid.config import get_preset
from fluid.model import Generator
from fluid.sample.pipeline import FluidPipeline
from fluid.serve.app import create_app, is_loopback, running_server
from fluid.serve.load import load_test, run_one
from fluid.serve.requests import ALL, Limits, RequestError, parse_request
from fluid.serve.worker import Job, ModelSet, QueueFull, Scheduler

NAMES = {"tiny-cr": None, "tiny-dr": None}  # parse_request only looks at the names


# ----------------------------------------------------------------------------- checking requests


def test_a_plain_request_takes_the_model_defaults():
    r = parse_request({"prompt": "  a red\nsquare "}, NAMES)
    assert r.prompt == "a red square" and r.models == ("tiny-cr",) and r.seed == 0
    assert r.sample == {}
    # Form fields arrive as strings; empty ones mean "the default".
    r = parse_request(
        {
            "prompt": "x",
            "model": ALL,
            "cfg": "4.5",
            "temperature": "0.8",
            "steps": "8",
            "head_steps": "",
            "seed": "12",
            "cfg_schedule": "constant",
        },
        NAMES,
    )
    assert r.models == ("tiny-cr", "tiny-dr") and r.seed == 12
    assert r.sample == {"cfg": 4.5, "temperature": 0.8, "steps": 8, "cfg_schedule": "constant"}


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"prompt": ""}, "prompt", "empty prompt"),
        ({"prompt": " \n\t "}, "prompt", "empty prompt"),
        ({"prompt": None}, "prompt", "Type a prompt"),
        ({"prompt": "x" * 201}, "prompt", "201 characters long; the limit is 200"),
        ({"prompt": "a", "model": "gpt"}, "model", "model must be one of tiny-cr, tiny-dr, all"),
        ({"prompt": "a", "cfg": 0.5}, "cfg", "from 1 to 20; 0.5 is out of range"),
        ({"prompt": "a", "cfg": "abc"}, "cfg", "must be a number from 1 to 20, not 'abc'"),
        ({"prompt": "a", "cfg": "nan"}, "cfg", "must be a number"),
        ({"prompt": "a", "temperature": True}, "temperature", "must be a number"),
        ({"prompt": "a", "steps": 2.5}, "steps", "whole number from 1 to 64"),
        ({"prompt": "a", "steps": 65}, "steps", "out of range"),
        ({"prompt": "a", "head_steps": 0}, "head_steps", "from 1 to 250"),
        ({"prompt": "a", "seed": -1}, "seed", "out of range"),
        ({"prompt": "a", "cfg_schedule": "cubic"}, "cfg_schedule", "one of constant, linear"),
        ({"prompt": "a", "colour": "red"}, "request", "Unknown field(s): colour"),
    ],
)
def test_bad_values_get_one_sentence_per_field(body, field, words):
    with pytest.raises(RequestError) as e:
        parse_request(body, NAMES, Limits())
    assert words in e.value.errors[field]


def test_several_bad_values_are_all_reported():
    with pytest.raises(RequestError) as e:
        parse_request({"prompt": "", "cfg": 99, "steps": "many"}, NAMES)
    assert set(e.value.errors) == {"prompt", "cfg", "steps"}
    with pytest.raises(RequestError, match="JSON object"):
        parse_request(["a red square"], NAMES)


def test_loopback_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


# ----------------------------------------------------------------------------- a live server


def _tiny_folder(root, variant: str, minilm):
    """A random-initialised debug generator with a tiny tokenizer, as a pipeline folder."""
    cfg = get_preset("debug", variant=variant, overrides={"data.resolution": 32})
    tok = make_tokenizer("kl" if variant.startswith("continuous") else "vq")
    cfg.model.vocab_size = getattr(tok, "vocab_size", 0) or cfg.model.vocab_size
    cfg.sample.steps = 8
    torch.manual_seed(0)
    pipe = FluidPipeline(Generator(cfg.model, cfg.text), tok, minilm, cfg)
    return pipe.save_pretrained(root / variant)


@pytest.fixture(scope="module")
def models(tmp_path_factory, minilm):
    root = tmp_path_factory.mktemp("serve-models")
    sources = {
        "tiny-cr": _tiny_folder(root, "continuous-random", minilm),
        "tiny-dr": _tiny_folder(root, "discrete-raster", minilm),
    }
    return ModelSet(sources, text_encoder=minilm)


@pytest.fixture(scope="module")
def url(models):
    # One thread, as `fluid serve` runs: the many tiny matmuls of sampling gain nothing from
    # two, and on cores shared with other work two threads are several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with running_server(create_app(models, max_pending=100)) as base:
            yield base
    finally:
        torch.set_num_threads(threads)


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, data: bytes):
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_page_and_what_it_needs(url):
    status, page = _get(url + "/")
    assert status == 200 and b"<title>Fluid" in page and b"EventSource" in page
    status, info = _get(url + "/api/info")
    info = json.loads(info)
    assert [m["name"] for m in info["models"]] == ["tiny-cr", "tiny-dr"] and info["all"] == ALL
    cr, dr = info["models"]
    assert cr["uses_head_steps"] and cr["uses_steps"] and cr["defaults"]["steps"] == 8
    assert not dr["uses_head_steps"] and not dr["uses_steps"] and "head_steps" not in dr["defaults"]
    assert info["limits"]["max_prompt_chars"] == 200


def test_bad_requests_get_messages_not_tracebacks(url):
    status, reply = _post(url + "/api/jobs", json.dumps({"prompt": "", "cfg": 50}).encode())
    assert status == 400 and set(reply["errors"]) == {"prompt", "cfg"} and "empty prompt" in reply["error"]
    status, reply = _post(url + "/api/jobs", b"prompt=a+red+square")
    assert status == 400 and reply["error"] == "The request body must be a JSON object of form fields."
    status, reply = _post(url + "/api/jobs", json.dumps({"prompt": "x" * 20000}).encode())
    assert status == 413 and "too large" in reply["error"]
    status, body = _get(url + "/api/jobs/0123456789abcdef/events")
    assert status == 404 and "unknown or has expired" in json.loads(body)["error"]


def test_random_order_streams_a_frame_per_step_then_the_image(url):
    out = run_one(url, 0, {"prompt": "a red square", "model": "tiny-cr", "steps": "4", "head_steps": "5"})
    assert out.ok and out.status == "done" and out.frames == 4 and out.images == 1


def test_raster_order_streams_a_frame_per_token_and_side_by_side_runs_all(url):
    out = run_one(url, 0, {"prompt": "a red square", "model": "tiny-dr"})
    assert out.ok and out.frames == 16
    out = run_one(url, 1, {"prompt": "two circles", "model": ALL, "steps": 2, "head_steps": 3})
    assert out.ok and out.models == ["tiny-cr", "tiny-dr"] and out.images == 2 and out.frames == 2 + 16


def test_events_say_what_was_used(url):
    status, reply = _post(
        url + "/api/jobs",
        json.dumps(
            {"prompt": "a circle", "model": "tiny-cr", "seed": 7, "cfg": 2, "steps": 3, "head_steps": 4}
        ).encode(),
    )
    assert status == 202
    with urllib.request.urlopen(url + reply["events"], timeout=60) as stream:
        from fluid.serve.load import read_events

        events = list(read_events(stream))
    kinds = [k for k, _ in events]
    assert kinds[0] == "queued" and kinds[-1] == "end" and kinds.count("frame") == 3
    frames = [d for k, d in events if k == "frame"]
    assert [f["step"] for f in frames] == [1, 2, 3] and frames[0]["known"] < frames[-1]["known"] == 16
    assert frames[0]["image"].startswith("data:image/png;base64,")
    image = next(d for k, d in events if k == "image")
    assert image["seed"] == 7 and image["settings"] == {
        "cfg": 2.0,
        "cfg_schedule": "linear",
        "temperature": 1.0,
        "steps": 3,
        "head_steps": 4,
    }
    assert events[-1][1]["status"] == "done" and events[-1][1]["first_frame_s"] > 0


def test_a_failing_model_answers_with_a_sentence_and_the_server_goes_on(tmp_path, minilm, models):
    broken = _tiny_folder(tmp_path, "discrete-raster", minilm)
    ok = models.paths["tiny-dr"]
    bad = ModelSet({"broken": broken, "fine": ok}, text_encoder=minilm)
    (broken / "generator" / "ema.safetensors").write_bytes(b"not weights")
    with running_server(create_app(bad, preload=False)) as base:
        out = run_one(base, 0, {"prompt": "a red square", "model": "broken"})
        assert out.status == "error" and "Generation failed (CheckpointError" in out.error
        assert "Traceback" not in out.error
        assert run_one(base, 1, {"prompt": "a red square", "model": "fine"}).ok


def test_the_queue_is_bounded_and_drops_abandoned_jobs(models):
    loop = asyncio.new_event_loop()
    try:
        scheduler = Scheduler(models, max_pending=2)
        req = parse_request({"prompt": "a red square", "model": "tiny-dr"}, models.info)
        jobs = [Job(req, loop) for _ in range(3)]
        assert scheduler.submit(jobs[0]) == 1 and scheduler.submit(jobs[1]) == 2
        with pytest.raises(QueueFull, match="2 requests are waiting"):
            scheduler.submit(jobs[2])
        jobs[0].watched = True  # its page was opened and closed again
        scheduler.start(preload=False)
        for _ in range(600):
            if jobs[1].finished:
                break
            loop.run_until_complete(asyncio.sleep(0.05))
        scheduler.stop()
        assert jobs[0].events[-1] == (
            "end",
            {"status": "cancelled", "seconds": pytest.approx(jobs[0].events[-1][1]["seconds"]), "first_frame_s": None},
        )
        assert not any(k == "frame" for k, _ in jobs[0].events)
        assert jobs[1].events[-1][1]["status"] == "done"
        # The second job heard that it moved up when the first was taken.
        assert ("queued", {"position": 1, "running": True}) in jobs[1].events
    finally:
        loop.close()


def test_clients_take_turns(models):
    loop = asyncio.new_event_loop()
    try:
        scheduler = Scheduler(models, max_pending=10, max_per_client=3)
        req = parse_request({"prompt": "a red square", "model": "tiny-dr"}, models.info)
        a = [Job(req, loop) for _ in range(4)]
        b = Job(req, loop)
        assert [scheduler.submit(j, "tab-a") for j in a[:3]] == [1, 2, 3]
        with pytest.raises(QueueFull, match="You have 3 requests waiting"):
            scheduler.submit(a[3], "tab-a")
        assert scheduler.submit(b, "tab-b") == 2  # overtakes tab-a's second and third
        assert scheduler.order() == [a[0], b, a[1], a[2]]
        assert scheduler._next() is a[0]
        assert scheduler.order() == [b, a[1], a[2]]
        assert ("queued", {"position": 1, "running": True}) in b.events
    finally:
        loop.close()


def test_fifty_concurrent_requests_are_all_served(url, capsys):
    summary = load_test(url, requests=50, model="tiny-dr")
    with capsys.disabled():
        print(
            f"\nload test: {summary['requests']} requests, {summary['failures']} failures, {summary['lost']} lost; "
            f"latency median {summary['latency_s']['median']} s, worst {summary['latency_s']['max']} s; "
            f"first frame median {summary['first_frame_s']['median']} s; {summary['wall_s']} s in all"
        )
    bad = [o for o in summary["outcomes"] if not o["ok"]]
    assert summary["served"] == 50 and summary["failures"] == 0 and summary["lost"] == 0, bad[:3]


def test_serve_command_names_the_models(models):
    import argparse

    from fluid.commands.serve import served_models

    args = argparse.Namespace(variants=None, checkpoint=None)
    assert list(served_models(args)) == ["continuous-random", "continuous-raster", "discrete-random", "discrete-raster"]
    path = str(models.paths["tiny-dr"])  # a folder named discrete-raster holding a discrete-raster model
    args = argparse.Namespace(variants=None, checkpoint=[path, f"mine={path}"])
    assert served_models(args) == {"discrete-raster": path, "mine": path}
    args = argparse.Namespace(variants=["discrete-raster"], checkpoint=[path])
    with pytest.raises(ValueError, match="two served models are named 'discrete-raster'"):
        served_models(args)


def test_the_request_fields_are_the_limits_and_sample_config_fields():
    """Every ranged field but the seed, and the CFG schedule, overrides the SampleConfig field
    of its name; the form's fields are exactly those, the prompt and the model."""
    from dataclasses import fields

    from fluid.config import SampleConfig
    from fluid.serve.requests import FIELDS

    sample_fields = {f.name for f in fields(SampleConfig)}
    settings = [k for k in Limits().ranges() if k != "seed"] + ["cfg_schedule"]
    assert set(settings) <= sample_fields
    assert set(FIELDS) == {"prompt", "model", "seed", *settings}
