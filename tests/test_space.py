"""The Gradio Space, tested in a real browser: app.py on 127.0.0.1 with a tiny model, driven by headless Chromium."""

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


@pytest.fixture(scope="module")
def app_url(tiny_model, tmp_path_factory):
    """space/app.py serving the tiny model on 127.0.0.1."""
    port = _free_port()
    log = tmp_path_factory.mktemp("space_log") / "app.log"
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "NEIGHBOR_LT_MAX_MEGAPIXELS": "40",
    }
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(SPACE / "app.py"), "--model", str(tiny_model), "--host", "127.0.0.1", "--port",
             str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
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


def test_the_space_reads_the_run_folder(tiny_model):
    sys.path.insert(0, str(SPACE))
    try:
        import app
    finally:
        sys.path.remove(str(SPACE))
    _, _, info = app.load_model(str(tiny_model))
    assert info.group_of("lemon") == "few" and info.neighbors_of("lemon") == ["orange"]
    assert "(Many group)" in app.neighbor_text("goldfish", info)
    assert "no neighbor information" in app.neighbor_text("goldfish", None)


def test_space_readme_front_matter():
    card = SpaceCard.load(SPACE / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    assert card.data.models and card.data.datasets is not None
    requirements = (SPACE / "requirements.txt").read_text()
    for package in ("transformers", "torch", "huggingface_hub", "pillow", "neighbor-lt"):
        assert package in requirements.lower()
    assert len(list((SPACE / "examples").glob("*.jpg"))) >= 3
