"""The browser explorer (`python -m dcgan_lightning.demo`): its images, its API (gradio_client) and
its page in a real headless Chromium, driven over the DevTools protocol as a visitor would."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from dcgan_lightning.errors import UserError
from dcgan_lightning.generate import generate
from dcgan_lightning.train import train
from tests.conftest import compose_config, tiny

gradio = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

CLASSES = ["circle", "square", "triangle"]  # the shapes dataset's
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGE_TIMEOUT_S = 60  # for the page to load and show its first grid
EVENT_TIMEOUT_S = 30  # for one click to change the images


def tiny_checkpoint(run_dir: Path, *overrides: str) -> Path:
    """last.ckpt of 2 batches on shapes (32 px, features 8). BatchNorm's running statistics
    barely move in 2 steps, so eval-mode images are near-uniform grey: the output layer is scaled
    up (raw and EMA weights alike) so that seeds differ visibly, and each class shifted apart."""
    cfg = tiny(compose_config(["logger=none", "metrics=none", *overrides], run_dir))
    train(cfg)
    GlobalHydra.instance().clear()
    path = run_dir / "checkpoints" / "last.ckpt"
    data = torch.load(path, weights_only=True)
    state = data["state_dict"]
    for prefix in ("generator.main.", "ema_generator.module.main."):
        layers = [k for k in state if re.fullmatch(re.escape(prefix) + r"\d+\.weight", k)]
        if layers:
            state[max(layers, key=lambda k: int(k.split(".")[-2]))] *= 1000
    # Two steps barely tell the classes apart: a per-class shift in every conditional BatchNorm.
    shifts = torch.Generator().manual_seed(0)
    for key in [k for k in state if k.endswith(".shift.weight")]:
        state[key] += torch.randn(state[key].shape, generator=shifts)
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An unconditional and a conditional (3 shapes) tiny checkpoint, under `outputs/<task>/`."""
    outputs = tmp_path_factory.mktemp("outputs")
    return {
        "plain": tiny_checkpoint(outputs / "plain" / "runs" / "1"),
        "conditional": tiny_checkpoint(
            outputs / "cond" / "runs" / "1", "model=cdcgan", "data.labels=true"
        ),
    }


def demo_cfg(ckpt: Path | str, *overrides: str) -> Any:
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("demo", overrides=[f"ckpt_path={ckpt}", *overrides])
    GlobalHydra.instance().clear()
    return cfg


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The conditional checkpoint's page, served on 127.0.0.1 at a free port, closed after;
    Gradio's served files in a temporary folder."""
    from dcgan_lightning.demo import serve

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        running = serve(demo_cfg(ckpts["conditional"], f"server_port={free_port()}"), block=False)
        try:
            yield running
        finally:
            running.close()


def pixels(image: Image.Image | str | Path) -> np.ndarray:
    image = image if isinstance(image, Image.Image) else Image.open(image)
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# -- the images, without a server -----------------------------------------------------------------
def test_grid_and_strip_are_what_generate_draws(ckpts: dict[str, Path], tmp_path: Path) -> None:
    from dcgan_lightning.demo import Explorer
    from dcgan_lightning.generation import load_generator

    ckpt = ckpts["plain"]
    explorer = Explorer(load_generator(ckpt), str(ckpt), 9, 5, "slerp")
    with initialize(version_base="1.3", config_path="../conf"):
        gen = compose("generate", overrides=[f"ckpt_path={ckpt}", "grid=true", "num_images=9",
                                             "seed=3", f"out={tmp_path / 'grid'}"])  # fmt: skip
        walk = compose("generate", overrides=[f"ckpt_path={ckpt}", "interpolate=true",
                                              "walk_seeds=[3,8]", "walk_steps=5",
                                              f"out={tmp_path / 'walk'}"])  # fmt: skip
    GlobalHydra.instance().clear()
    grid = pixels(explorer.grid(3))
    assert grid.shape == (2 + 3 * 34, 2 + 3 * 34, 3)  # 9 images of 32 px, 3 a row
    assert np.abs(grid - pixels(generate(gen) / "grid.png")).max() <= 1
    assert np.abs(pixels(explorer.strip(3, 8)) - pixels(generate(walk) / "slerp.png")).max() <= 1
    assert np.abs(pixels(explorer.grid(4)) - grid).mean() > 5  # another seed, other images
    assert np.abs(pixels(explorer.grid(3, truncation=0.3)) - grid).mean() > 1
    with pytest.raises(UserError, match="unconditional"):
        explorer.grid(3, label="circle")


def test_download_holds_what_is_shown_with_its_settings(ckpts: dict[str, Path]) -> None:
    from dcgan_lightning.demo import Explorer
    from dcgan_lightning.generation import load_generator

    ckpt = ckpts["conditional"]
    explorer = Explorer(load_generator(ckpt), str(ckpt), 4, 3, "linear")
    board, walk, path = explorer.show(7, 9, 0.5, "square")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["generation.json", "grid.png", "linear.png"]
        made = json.loads(archive.read("generation.json"))
        assert np.array_equal(pixels(Image.open(archive.open("grid.png"))), pixels(board))
        assert np.array_equal(pixels(Image.open(archive.open("linear.png"))), pixels(walk))
    assert made["seed"] == 7 and made["walk_seeds"] == [7, 9] and made["truncation"] == 0.5
    assert made["label"] == "square" and Path(path).name == "dcgan_square_seed7_to_9_psi0.5.zip"


def test_ckpt_path_last_is_the_newest_run(ckpts, monkeypatch: pytest.MonkeyPatch) -> None:
    from dcgan_lightning import demo

    monkeypatch.setattr(demo, "OUTPUTS", ckpts["plain"].parents[4])
    os.utime(ckpts["plain"])  # now the newest
    assert demo.resolve_ckpt("last") == str(ckpts["plain"])
    assert demo.resolve_ckpt("someone/model") == "someone/model"  # a Hub id, as given
    monkeypatch.setattr(demo, "OUTPUTS", ckpts["plain"].parents[4] / "none")
    with pytest.raises(UserError, match="ckpt_path=last: no runs"):
        demo.resolve_ckpt("last")


# -- the API --------------------------------------------------------------------------------------
def test_api_new_seed_and_class_change_the_images(app: Any, tmp_path: Path) -> None:
    from gradio_client import Client

    client = Client(app.local_url, verbose=False, download_files=str(tmp_path))
    assert app.local_url.startswith("http://127.0.0.1:")
    seed = client.predict(api_name="/new_seed")
    assert isinstance(seed, (int, float)) and seed != 0
    first = client.predict(0, 1, 0, "circle", api_name="/show")
    again = client.predict(0, 1, 0, "circle", api_name="/show")
    other_seed = client.predict(seed, 1, 0, "circle", api_name="/show")
    other_class = client.predict(0, 1, 0, "triangle", api_name="/show")
    grid = pixels(first[0])
    assert grid.shape == (2 + 4 * 34, 2 + 4 * 34, 3)  # num_images=16: 4 a row
    assert np.array_equal(pixels(again[0]), grid)  # the same settings, the same pixels
    assert np.abs(pixels(other_seed[0]) - grid).mean() > 5
    assert np.abs(pixels(other_class[0]) - grid).mean() > 1
    assert np.abs(pixels(other_class[1]) - pixels(first[1])).mean() > 1  # the strip too
    assert zipfile.is_zipfile(first[2])
    with pytest.raises(Exception, match="horse"):  # refused, with a message naming it
        client.predict(0, 1, 0, "horse", api_name="/show")


# -- the page, in a real browser ------------------------------------------------------------------
class Chromium:
    """Headless Chromium driven over the DevTools protocol through a pipe (fds 3 and 4 of the
    browser: `--remote-debugging-pipe`), so no websocket package is needed."""

    def __init__(self, executable: str, profile: Path) -> None:
        to_browser, self._to_browser = os.pipe()
        self._from_browser, from_browser = os.pipe()
        # The pipes reach the browser as the shell's stdin and stdout, which it moves to fds 3
        # and 4 before exec: no Python code runs in the child (the server's threads are running).
        args = ["sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "sh",
                executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-dev-shm-usage", "--remote-debugging-pipe", "--window-size=1280,2000",
                f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=to_browser, stdout=from_browser,
                                        stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._last_id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params or {}}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._last_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Chromium did not answer {method} in {timeout} s")
            if select.select([self._from_browser], [], [], left)[0]:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed its DevTools pipe")
                self._buffer += chunk

    def open(self, url: str) -> None:
        pages = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        attached = self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"],
                                                       "flatten": True})  # fmt: skip
        self.session = attached["sessionId"]
        self.send("Page.navigate", {"url": url})

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True})  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"the page did not {what} in {timeout} s")

    def click(self, find: str) -> None:
        """A real mouse click (press, release) at the centre of the element `find` returns."""
        box = self.js(f"(() => {{ const e = {find}; e.scrollIntoView({{block: 'center'}}); "
                      "const r = e.getBoundingClientRect(); "
                      "return [r.x + r.width / 2, r.y + r.height / 2]; })()")  # fmt: skip
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1],
                                                   "button": "left", "clickCount": 1})  # fmt: skip

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


# The grid's <img>, once loaded: its source and its pixels (drawn at natural size on a canvas).
GRID_IMAGE = "document.querySelector('#grid img')"
GRID_PIXELS = f"""(() => {{
    const img = {GRID_IMAGE};
    if (!img || !img.complete || !img.naturalWidth) return null;
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    return {{src: img.src, width: canvas.width, rgba: Array.from(data)}};
}})()"""


def shown(grid: dict) -> np.ndarray:
    rgba = np.array(grid["rgba"], dtype=np.int16).reshape(-1, grid["width"], 4)
    return rgba[..., :3]


def next_grid(browser: Chromium, before: dict, what: str) -> dict:
    """The grid once the page shows another image than `before`."""
    expression = f"(() => {{ const g = {GRID_PIXELS}; return g && g.src !== {json.dumps(before['src'])} ? g : null; }})()"  # noqa: E501
    return browser.wait_for(expression, EVENT_TIMEOUT_S, what)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(CHROMIUM, tmp_path / "profile")
    try:
        yield chromium
    finally:
        chromium.close()


@pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run does)"
)
def test_page_in_chromium_new_seed_and_class_change_the_grid(app: Any, browser: Chromium) -> None:
    explorer = app.explorer
    browser.open(app.local_url)
    first = browser.wait_for(GRID_PIXELS, PAGE_TIMEOUT_S, "show its first grid")
    assert browser.js("document.title") == "DCGAN explorer"
    expected = pixels(explorer.grid(0, None, "circle"))  # seed 0, no truncation, first class
    assert np.abs(shown(first) - expected).max() <= 1  # the page shows what generate draws

    browser.click("document.querySelector('#new-seed')")
    reseeded = next_grid(browser, first, "show a new grid after 'New seed'")
    seed = int(browser.js("document.querySelector('#seed input').value"))
    assert seed != 0 and np.abs(shown(reseeded) - shown(first)).mean() > 5
    assert np.abs(shown(reseeded) - pixels(explorer.grid(seed, None, "circle"))).max() <= 1

    browser.click("document.querySelector('#label input')")  # opens the class list
    option = "document.querySelector('#label [role=option][aria-label=triangle]')"
    browser.wait_for(f"!!({option})", EVENT_TIMEOUT_S, "list the classes")
    browser.click(option)
    triangles = next_grid(browser, reseeded, "show another class's grid")
    assert np.abs(shown(triangles) - shown(reseeded)).mean() > 1
    assert np.abs(shown(triangles) - pixels(explorer.grid(seed, None, "triangle"))).max() <= 1
