"""The Space installs from its own folder: space/requirements.txt (plus gradio at the README's sdk_version, as Spaces
add it) into a clean virtual environment, offline, then app.py serves a prediction on /classify.

Offline means a wheelhouse built here: the wheel files already on disk (pip's find-links and local index folders,
where the CPU torch wheel is) for the exact installed versions, and for every other distribution a wheel repacked from
the installed files. pip then installs with --no-index from that folder only, so nothing can come from the network,
and the environment holds only what the requirements name (no neighbor-lt). Minutes on two cores: marked slow.
"""

import base64
import csv
import hashlib
import importlib.metadata
import io
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard
from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version
from test_space import SPACE, serve_app, tiny_model  # noqa: F401  (tiny_model: the fixture, used by name)

pytestmark = pytest.mark.slow


def _closure(requirements: list[str]) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions these requirements need, with their dependencies (markers evaluated here)."""
    found, seen, todo = {}, set(), [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        name = canonicalize_name(req.name)
        if (req.marker and not req.marker.evaluate({"extra": extra})) or (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        dist = found.setdefault(name, importlib.metadata.distribution(name))
        assert req.specifier.contains(dist.version, prereleases=True), f"installed {name} {dist.version} is not {req}"
        for wanted in ("", *req.extras):  # the base requirements, and those of each extra asked for
            todo += [(Requirement(r), wanted) for r in dist.requires or []]
    return found


def _wheels_on_disk() -> dict[tuple[str, str], Path]:
    """(name, version) -> a wheel file in pip's configured find-links folders and local index folders."""
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    folders = set()
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(("find-links", "index-url")):
            for item in value.strip("'\"").split():
                path = Path(item.removeprefix("file://"))
                folders.update({path, path.parent / "files"} if item.startswith("file://") else {path})
    wheels = {}
    for folder in sorted(f for f in folders if f.is_dir()):
        for wheel in folder.glob("*.whl"):
            name, version, _, _ = parse_wheel_filename(wheel.name)
            wheels.setdefault((name, str(version)), wheel)  # the first folder wins, as with pip
    return wheels


def _repack(dist: importlib.metadata.Distribution, folder: Path) -> Path:
    """A wheel of an installed distribution from its installed files (RECORD rewritten; scripts are regenerated
    from entry_points.txt by pip)."""
    info = next(f for f in dist.files if f.parts[0].endswith(".dist-info")).parts[0]
    supported = {str(t) for t in sys_tags()}  # the venv has this interpreter: pick a tag of it (not pytz's py2)
    tags = [line.split(": ")[1] for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag: ")]
    tag = next(t for t in tags if t in supported)
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    path = folder / f"{name}-{dist.version}-{tag}.whl"
    skip = {f"{info}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    records = io.StringIO()
    writer = csv.writer(records, lineterminator="\n")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as whl:
        for file in dist.files:
            arcname = file.as_posix()
            source = Path(dist.locate_file(file))
            if arcname.startswith("..") or arcname in skip or "__pycache__" in file.parts or not source.is_file():
                continue
            data = source.read_bytes()
            whl.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            writer.writerow([arcname, f"sha256={digest}", len(data)])
        writer.writerow([f"{info}/RECORD", "", ""])
        whl.writestr(f"{info}/RECORD", records.getvalue())
    return path


def _wheelhouse(requirements: list[str], folder: Path) -> Path:
    folder.mkdir()
    on_disk = _wheels_on_disk()
    for name, dist in _closure(requirements).items():
        wheel = on_disk.get((name, str(Version(dist.version))))
        if wheel is not None:
            (folder / wheel.name).symlink_to(wheel)
        else:
            _repack(dist, folder)
    return folder


def _requirements() -> list[str]:
    """requirements.txt's requirements (options such as --extra-index-url are pip's, not needed offline) and gradio
    at the sdk_version Spaces install."""
    lines = [line.split("#")[0].strip() for line in (SPACE / "requirements.txt").read_text().splitlines()]
    sdk = SpaceCard.load(SPACE / "README.md").data.sdk_version
    return [line for line in lines if line and not line.startswith("-")] + [f"gradio=={sdk}"]


def test_the_space_installs_offline_from_its_folder_and_predicts(tmp_path, tiny_model):  # noqa: F811
    wheels = _wheelhouse(_requirements(), tmp_path / "wheels")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=False)  # the host's pip installs into it (--python): no ensurepip, no network
    python = env_dir / "bin" / "python"
    sdk = SpaceCard.load(SPACE / "README.md").data.sdk_version
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--find-links",
               str(wheels), "--no-compile", "-r", str(SPACE / "requirements.txt"), f"gradio=={sdk}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHONPATH"))}
    done = subprocess.run(install, capture_output=True, text=True, env={**env, "PIP_CONFIG_FILE": os.devnull})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = "import importlib.metadata as m; print(' '.join(d.metadata['Name'] for d in m.distributions()))"
    listed = subprocess.run([str(python), "-c", names], capture_output=True, text=True, env=env).stdout
    torch = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                           text=True, env=env).stdout.strip()  # fmt: skip
    assert torch.endswith("+cpu") and "nvidia" not in listed.lower()
    lonely = subprocess.run([str(python), "-c", "import neighbor_lt"], capture_output=True, text=True, env=env)
    assert lonely.returncode != 0  # the Space does not need neighbor-lt

    with serve_app(tiny_model, tmp_path / "app.log", python=python, env=env) as url:
        from gradio_client import Client, handle_file

        labels, text, _ = Client(url, verbose=False).predict(
            handle_file(str(SPACE / "examples" / "lemon.jpg")), api_name="/classify"
        )
    assert labels["label"] == "lemon" and len(labels["confidences"]) == 5
    assert "Top class: lemon" in text and "Neighbor categories used in training: **orange**" in text
