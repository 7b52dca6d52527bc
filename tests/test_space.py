"""The Gradio Space, tested in a real browser: app.py on 127.0.0.1 with a tiny model, driven by headless Chromium."""

import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from huggingface_hub import SpaceCard
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from neighbor_lt.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]
SPACE = REPO / "space"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
NAMES = ["goldfish", "golden retriever", "lemon", "school bus", "bison", "tabby"]
COUNTS = [150, 35, 5, 8, 5, 29]
NEIGHBOR_OF = {"Labrador retriever": ["golden retriever"], "orange": ["lemon"], "trolleybus": ["school bus"]}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A masked-model folder as recipes/train.py writes it: tiny ViT, image processor, neighbor_lt.json."""
    folder = tmp_path_factory.mktemp("space_model")
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)},
    )  # fmt: skip
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.bias[NAMES.index("lemon")] += 3.0  # a top class that has a neighbor, whatever the image
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    info = {
        "target_classes": NAMES, "target_train_counts": COUNTS, "auxiliary_classes": list(NEIGHBOR_OF),
        "neighbor_of": NEIGHBOR_OF, "loss": "neighbor_silencing", "lambda_s": 0.1, "max_aux_per_class": 30,
    }  # fmt: skip
    (folder / "neighbor_lt.json").write_text(json.dumps(info))
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(model: Path, log: Path, python=sys.executable, env: dict | None = None, args=("--host", "127.0.0.1")):
    """space/app.py serving ``model`` on 127.0.0.1 (a free port) with ``python``; yields the URL."""
    port = _free_port()
    env = {
        **(os.environ if env is None else env),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "NEIGHBOR_LT_MAX_MEGAPIXELS": "40",
    }
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(python), str(SPACE / "app.py"), "--model", str(model), *args, "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"app.py did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def app_url(tiny_model, tmp_path_factory):
    """space/app.py serving the tiny model on 127.0.0.1."""
    with serve_app(tiny_model, tmp_path_factory.mktemp("space_log") / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: apt-get install -y chromium chromium-driver")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url, tmp_path):
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_selector("#upload input[type=file]", state="attached")
    yield page
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)  # kept in pytest's tmp dir for a look
    page.close()


def _expected_top5(model_dir: Path, image_path: Path) -> list[tuple[str, float]]:
    model = ViTForImageClassification.from_pretrained(model_dir).eval()
    processor = ViTImageProcessorPil.from_pretrained(model_dir)
    with torch.no_grad():
        probs = model(**processor(images=Image.open(image_path).convert("RGB"), return_tensors="pt")).logits[0]
    top = probs.softmax(-1).topk(5)
    return [(NAMES[int(i)], float(p)) for p, i in zip(top.values, top.indices)]


def test_upload_shows_top5_and_neighbors(page, tiny_model):
    image = SPACE / "examples" / "lemon.jpg"
    page.locator("#upload input[type=file]").set_input_files(str(image))
    page.wait_for_selector("#neighbors :text('Top class')")
    shown = page.locator("#top5").inner_text()
    # the Label lists "name\nNN%" per class, best first
    pairs = re.findall(r"^(.+)\n(\d+)%$", shown.split("\n", 2)[2], flags=re.M)
    expected = _expected_top5(tiny_model, image)
    assert [name for name, _ in pairs] == [name for name, _ in expected]
    for (_, percent), (_, prob) in zip(pairs, expected):
        assert abs(int(percent) - 100 * prob) <= 1
    neighbors = page.locator("#neighbors").inner_text()
    assert expected[0][0] == "lemon"
    assert "Top class: lemon" in neighbors and "5 training images (Few group)" in neighbors
    assert "Neighbor categories used in training: orange" in neighbors
    assert page.locator("#preview img").count() == 1


def test_example_click_classifies(page):
    page.get_by_text("golden retriever", exact=True).first.click()
    page.wait_for_selector("#neighbors :text('Top class')")
    assert "Top class: lemon" in page.locator("#neighbors").inner_text()


def test_non_image_uploads_get_a_clear_message(page, tmp_path):
    fake_jpeg = tmp_path / "holiday.jpg"
    fake_jpeg.write_text("these are not the pixels you are looking for")
    page.locator("#upload input[type=file]").set_input_files(str(fake_jpeg))
    page.wait_for_selector("#neighbors :text('Cannot classify this file')")
    assert "holiday.jpg is not an image this demo can read" in page.locator("#neighbors").inner_text()
    assert page.locator("#top5").inner_text().strip() == "Top-5 target classes"  # no stale predictions

    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    page.goto(page.url, wait_until="domcontentloaded")
    page.locator("#upload input[type=file]").set_input_files(str(text_file))
    page.wait_for_selector("#neighbors :text('Cannot classify this file')")  # inline, not a pop-up
    assert "notes.txt is not an image this demo can read" in page.locator("#neighbors").inner_text()
    assert page.locator(".toast-body").count() == 0


def test_huge_image_gets_a_clear_message(page, tmp_path):
    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 5000)).save(huge)  # 45 megapixels, a few kB on disk
    page.locator("#upload input[type=file]").set_input_files(str(huge))
    page.wait_for_selector("#neighbors :text('too large')")
    text = page.locator("#neighbors").inner_text()
    assert "9000 x 5000 pixels (45 megapixels)" in text and "under 40 megapixels" in text


def test_a_58_mb_file_gets_the_inline_message(page, tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(big)
    with open(big, "r+b") as f:
        f.truncate(58 * 2**20)  # a 58 MB PNG on disk (zeros after the image), over the demo's 20 MB
    page.locator("#upload input[type=file]").set_input_files(str(big))
    page.wait_for_selector("#neighbors :text('Cannot classify this file')")
    assert "This file is 58 MB; please upload an image under 20 MB." in page.locator("#neighbors").inner_text()
    assert page.locator(".toast-body").count() == 0  # no disappearing pop-up


@pytest.fixture(scope="module")
def app():
    sys.path.insert(0, str(SPACE))
    try:
        import app
    finally:
        sys.path.remove(str(SPACE))
    return app


def test_the_space_reads_the_run_folder(app, tiny_model):
    _, _, info = app.load_model(str(tiny_model))
    assert info.group_of("lemon") == "few" and info.neighbors_of("lemon") == ["orange"]
    assert "(Many group)" in app.neighbor_text("goldfish", info)
    assert "no neighbor information" in app.neighbor_text("goldfish", None)


def test_the_spaces_copy_of_the_reader_agrees_with_run_folder(app, tiny_model, tmp_path):
    values = json.loads((tiny_model / "neighbor_lt.json").read_text())
    values.update(many_threshold=30, few_threshold=6, written_by_a_newer_version=True)
    (tmp_path / "neighbor_lt.json").write_text(json.dumps(values))
    for folder in (tiny_model, tmp_path):
        ours, theirs = app.RunInfo.read(str(folder)), RunFolder(folder).read_info()
        for name in [*NAMES, "orange", "not a class"]:
            assert ours.count_of(name) == theirs.count_of(name), name
            assert ours.group_of(name) == theirs.group_of(name), name
            assert ours.neighbors_of(name) == theirs.neighbors_of(name), name
        assert (ours.auxiliary_classes, ours.loss) == (theirs.auxiliary_classes, theirs.loss)
    assert app.RunInfo.read(str(SPACE)) is None


def test_help_describes_every_option_with_its_default(app, capsys, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    with pytest.raises(SystemExit) as done:
        app.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert done.value.code == 0
    for option, default in (("--model", app.DEFAULT_MODEL), ("--host", "127.0.0.1"), ("--port", "7860")):
        described = text.split(f"{option} {option[2:].upper()} ", 1)[1]
        assert described[:1].isalpha() and f"(default: {default})" in described.replace("- ", "-"), option


def test_the_app_listens_outside_only_when_asked_or_on_spaces(app, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert app.parse_args([]).host == "127.0.0.1"
    assert app.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    monkeypatch.setenv("SPACE_ID", "neighbor-lt/demo")
    assert app.parse_args([]).host == "0.0.0.0"


def test_the_header_says_how_the_model_was_trained(app, tiny_model):
    model, _, info = app.load_model(str(tiny_model))
    assert "with the neighbor-silencing loss" in app.header("m", model, info)
    baseline = dataclasses.replace(info, loss="balanced_softmax", auxiliary_classes=[], neighbor_of={})
    text = app.header("m", model, baseline)
    assert "neighbor-silencing" not in text and "learned from neighbors" not in text
    assert "a baseline" in text and "without neighbor classes with the `balanced_softmax` loss" in text
    assert "how it was trained is not known" in app.header("m", model, None)


def test_a_missing_model_or_gradio_is_one_line(app, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model, expected in (
        (tmp_path / "nope", f"--model: model folder not found: {tmp_path / 'nope'}"),
        ("outputs/not-trained-yet", "--model: outputs/not-trained-yet: no such folder, and not a Hub model"),
        (tmp_path, f"--model: {tmp_path} has no config.json: pass the output_dir of recipes/train.py"),
    ):
        assert app.main(["--model", str(model)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert app.main(["--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('gradio is not installed: pip install "neighbor-lt[space]"') and err.count("\n") == 1


def test_the_api_has_one_endpoint_named_classify(app_url):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/classify"]
    labels, text, preview = client.predict(handle_file(str(SPACE / "examples" / "lemon.jpg")), api_name="/classify")
    assert labels["label"] == "lemon" and "Top class: lemon" in text and Path(preview).is_file()


def test_space_readme_front_matter():
    card = SpaceCard.load(SPACE / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.models and card.data.datasets is not None
    assert f'pip install "gradio=={card.data.sdk_version}"' in card.text  # the local run installs what Spaces do
    requirements = (SPACE / "requirements.txt").read_text()
    for package in ("transformers", "torch", "huggingface_hub", "pillow"):
        assert package in requirements.lower()
    # installs from this folder alone: no neighbor-lt (app.py reads neighbor_lt.json itself), the CPU torch wheel
    lines = [line.split("#")[0].strip() for line in requirements.splitlines()]
    assert not any(line.startswith("neighbor-lt") or "git+" in line for line in lines)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert any(re.fullmatch(r"torch==2\.\d+\.\d+", line) for line in lines)
    assert len(list((SPACE / "examples").glob("*.jpg"))) >= 3
