"""``agentrl view`` end to end: the real command serves a real store, a run directory and an eval report, and
headless Chromium (Debian's package, driven by selenium) uses the page like a person would.

The store holds a training run written by the store's own writer: episodes with token transcripts
(log-probs, entropies), GRPO groups, an expert demonstration, and an episode whose observation and
action are HTML and script (agent output is hostile: it must show as text and run nothing).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agentrl.testing import installed_cli, token_episode

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def build_run(tmp_path: Path, tokenizer_dir: str) -> Path:
    """A run directory (run.json, metrics.jsonl, store.db) with one training run in its store."""
    from transformers import AutoTokenizer

    from agentrl.store import open_store

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    run_dir = tmp_path / "runs" / "tw"
    run_dir.mkdir(parents=True)

    def episode(task: str, group: str, won: bool, action: str, observation: str, *, seed: int, logprob: float, kind: str | None):
        prompt, response = tok.encode("You see a fridge."), tok.encode(f"<action>{action}</action>")
        ep = token_episode(
            [{"prompt": prompt, "response": response, "logprobs": [logprob] * len(response),
              "entropies": [0.5 * (i + 1) for i in range(len(response))], "reward": 1.0 if won else 0.0,
              "action": action, "observation": observation, "version": 0}],
            env_id="agentrl/TextWorld-v0", task_id=task, group_id=group, seed=seed, agent="tiny", policy_version=0,
            won=won, meta={"reset_info": {"task_type": kind}} if kind else {},
        )  # fmt: skip
        return ep

    episodes = [
        episode("easy/1", "easy/1#0", True, "open fridge", "You are in a kitchen.", seed=0, logprob=-0.05, kind="pick"),
        episode("easy/1", "easy/1#0", False, "go north", "You are in a kitchen.", seed=1, logprob=-2.5, kind="pick"),
        episode("easy/2", "easy/2#1", False, HOSTILE, HOSTILE, seed=0, logprob=-1.0, kind="heat"),
        episode("easy/2", "easy/2#1", False, "look", "A dark room.", seed=1, logprob=-0.7, kind="heat"),
    ]
    expert = token_episode([{"prompt": tok.encode("x"), "response": tok.encode("<action>take key</action>"),
                             "action": "take key", "reward": 1.0}], env_id="agentrl/TextWorld-v0", task_id="easy/9",
                           agent="expert", won=True)  # fmt: skip
    for t in expert.transcripts:
        t.logprobs = None
    url = f"sqlite:///{run_dir / 'store.db'}"
    with open_store(url) as store:
        run = store.start_run("tw", env_id="agentrl/TextWorld-v0", kind="train",
                              config={"model": tokenizer_dir, "run_name": "tw", "output_dir": str(tmp_path / "runs")})  # fmt: skip
        store.write_episodes(run, [expert, *episodes])
        store.set_run_status(run, "finished")
        other = store.start_run("tw-other", env_id="agentrl/TextWorld-v0", kind="train", config={})
        store.write_episodes(other, [episode("easy/1", "g", True, "open fridge", "You are in a kitchen.", seed=0,
                                             logprob=-0.1, kind="pick")])  # fmt: skip
        store.set_run_status(other, "interrupted")
    (run_dir / "run.json").write_text(json.dumps({"run_name": "tw", "store": url, "status": "finished"}))
    with (run_dir / "metrics.jsonl").open("w") as f:
        for step in range(1, 6):
            f.write(json.dumps({"step": step, "loss": 1.0 / step, "lr": 1e-3}) + "\n")
            f.write(json.dumps({"step": step, "iteration": step, "rollout/success_rate": 0.1 * step}) + "\n")
    return run_dir


def test_data_layer_gives_the_advantage_the_learner_would(tmp_path, tiny_chat_model):
    from agentrl.viewer.data import Catalog, Filters

    run_dir = build_run(tmp_path, tiny_chat_model)
    catalog = Catalog.open(None, [run_dir])
    try:
        run = next(s for s in catalog.sources() if s["name"] == "tw")
        assert (run["episodes"], run["demonstrations"], run["success_rate"]) == (4, 1, 0.25)  # the expert is apart
        listing = catalog.episodes(run["id"], Filters())
        assert listing["total"] == 5 and listing["task_types"] == ["heat", "pick"]
        assert [e["task_id"] for e in catalog.episodes(run["id"], Filters(won=True, task_type="pick"))["episodes"]] == ["easy/1"]
        won_id = catalog.episodes(run["id"], Filters(won=True, task="easy/1"))["episodes"][0]["id"]
        detail = catalog.episode(run["id"], str(won_id))
        # group easy/1#0 has returns [1, 0]: mean 0.5, sample std sqrt(0.5): advantage 0.5 / (0.7071 + 1e-6)
        assert detail["tokens"]["advantage"] == pytest.approx(0.5 / (0.5**0.5 + 1e-6))
        tokens = detail["tokens"]["transcripts"][0]["tokens"]
        assert "".join(t["text"] for t in tokens) == "You see a fridge.<action>open fridge</action>"
        assert [t["logprob"] for t in tokens if t["sampled"]] == pytest.approx([-0.05] * sum(t["sampled"] for t in tokens))
        assert detail["tokens"]["decoded_with"] == tiny_chat_model
        curves = catalog.curves(run["id"])
        assert curves["from"] == "metrics.jsonl" and curves["metrics"]["loss"][:2] == [[1, 1.0], [2, 0.5]]
        other = next(s for s in catalog.sources() if s["name"] == "tw-other")
        assert catalog.curves(other["id"]) == {"from": "store", "metrics": {"rollout/success_rate": [[0, 1.0]],
                                                                            "rollout/mean_return": [[0, 1.0]]}}  # fmt: skip
        compared = catalog.compare(run["id"], other["id"])
        assert [r["task_id"] for r in compared["tasks"]] == ["easy/1"] and compared["tasks"][0]["a"]["success_rate"] == 0.5
        with pytest.raises(KeyError):
            catalog.episode(other["id"], str(won_id))  # an episode of another run is not this run's
    finally:
        catalog.close()


def chrome(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture
def viewer(tmp_path, tiny_chat_model):
    """``agentrl view RUN_DIR REPORT`` in a subprocess on a free port; yields its URL."""
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/install.sh installs them)")
    pytest.importorskip("selenium")
    pytest.importorskip("textworld")
    run_dir = build_run(tmp_path, tiny_chat_model)
    report = tmp_path / "report.json"
    done = subprocess.run([installed_cli(), "eval", "textworld", "--agent", "expert", "--episodes", "3", "--output", str(report)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen([installed_cli(), "view", str(run_dir), str(report), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "agentrl view: 3 runs and reports at http://127.0.0.1:" in line, line + proc.stderr.read()
        yield line.split(" at ")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_page_in_headless_chromium(viewer, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = chrome(tmp_path / "profile")
    wait = WebDriverWait(driver, 60)

    def rows(selector: str) -> list:
        return driver.find_elements(By.CSS_SELECTOR, selector)

    try:
        started = time.perf_counter()
        driver.get(viewer)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        load_seconds = time.perf_counter() - started
        sources = rows("#sources li")
        assert [s.find_element(By.CSS_SELECTOR, ".run-name").text for s in sources][:2] == ["tw", "tw-other"]
        assert "finished" in sources[0].text and "(+1 demos)" in sources[0].text and "interrupted" in sources[1].text
        assert "report.json" in sources[2].text

        def shown(source: str, query: str) -> list:
            expected = f"{source}?" + "&".join(part for part in (query, "limit=500") if part)
            wait.until(lambda d: d.find_element(By.ID, "episode-rows").get_attribute("data-shown") == expected)
            return rows("#episode-rows tr")

        def open_episode(row) -> None:  # click a row and wait until the detail shows that episode, not the last one
            wanted = row.get_attribute("data-id")
            row.click()
            wait.until(lambda d: d.find_element(By.ID, "episode-detail").get_attribute("data-episode") == wanted)

        def apply(won: str = "", task_type: str = "") -> None:
            Select(driver.find_element(By.ID, "filter-won")).select_by_value(won)
            Select(driver.find_element(By.ID, "filter-type")).select_by_value(task_type)
            driver.find_element(By.ID, "filter-apply").click()

        # the first run is selected: its 5 episodes; the filters narrow them down
        wait.until(lambda d: d.find_element(By.ID, "episode-rows").get_attribute("data-shown") == "s0-1?limit=500")
        assert len(rows("#episode-rows tr")) == 5
        apply(won="true")
        assert len(shown("s0-1", "won=true")) == 2  # the rollout win and the expert
        apply(task_type="heat")
        heat = shown("s0-1", "task_type=heat")
        assert len(heat) == 2 and {r.find_elements(By.TAG_NAME, "td")[2].text for r in heat} == {"heat"}

        # the hostile episode: its HTML is text on the page and nothing ran
        open_episode(next(r for r in rows("#episode-rows tr") if "look" not in r.text))
        assert driver.find_element(By.CSS_SELECTOR, "#episode-detail .action").text == f"> {HOSTILE}"
        assert driver.find_element(By.CSS_SELECTOR, "#episode-detail .observation").text == HOSTILE
        assert driver.execute_script("return window.pwned === undefined && document.querySelectorAll('#episode-detail img, #episode-detail script').length === 0")

        # tokens coloured by log-prob, then by entropy; prompt tokens are not coloured
        apply(task_type="pick")
        open_episode(next(r for r in shown("s0-1", "task_type=pick") if r.find_elements(By.CSS_SELECTOR, "td.won")))
        text = "".join(t.text for t in rows("#episode-detail .transcript"))
        assert text == "You see a fridge.<action>open fridge</action>"
        sampled = rows("#episode-detail .token.sampled")
        colours = {s.value_of_css_property("background-color") for s in sampled}
        assert len(colours) == 1 and "rgba(0, 0, 0, 0)" not in colours  # one log-prob, one green
        assert rows("#episode-detail .token.prompt")[0].value_of_css_property("background-color") == "rgba(0, 0, 0, 0)"
        shot = tmp_path / "episode.png"
        driver.save_screenshot(str(shot))
        Select(driver.find_element(By.ID, "color-by")).select_by_value("entropy")
        wait.until(lambda d: len({s.value_of_css_property("background-color") for s in rows("#episode-detail .token.sampled")}) == len(sampled))
        assert "advantage 0.707" in driver.find_element(By.CSS_SELECTOR, "#episode-detail .legend").text

        # learning curves from the run directory's metrics.jsonl
        driver.find_element(By.ID, "tab-curves").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#curves svg polyline"))
        drawn = {svg.get_attribute("data-metric") for svg in rows("#curves svg")}
        assert drawn == {"loss", "lr", "rollout/success_rate"}
        assert len(rows('#curves svg[data-metric="loss"] circle')) == 5

        # two runs side by side on the task both played
        driver.find_element(By.ID, "tab-compare").click()
        driver.find_element(By.ID, "compare-apply").click()
        wait.until(lambda d: len(rows("#compare-rows tr")) == 1)
        rows("#compare-rows tr")[0].click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#side-a .action") and d.find_elements(By.CSS_SELECTOR, "#side-b .action"))
        assert driver.find_element(By.CSS_SELECTOR, "#side-b .action").text == "> open fridge"

        # the eval report: observations and actions of the expert's episodes
        driver.find_element(By.ID, "tab-episodes").click()
        rows("#sources li")[2].click()
        assert len(shown("e0", "")) == 3  # the task type filter is cleared: task types differ between sources
        open_episode(rows("#episode-rows tr")[0])
        assert rows("#episode-detail .observation")[0].text.strip() and rows("#episode-detail .action")[0].text.startswith("> ")
        assert "turns at most" in driver.find_element(By.ID, "source-title").text  # the report carries max_turns
        assert driver.find_element(By.ID, "status").text == ""  # no request failed
    finally:
        driver.quit()

    from PIL import Image

    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 1000) or image.size[0] >= 1000
    pixels = image.getdata()
    greenish = sum(1 for r, g, b in pixels if g > r + 40 and g > b + 20)
    assert greenish > 50  # the coloured tokens are on the screenshot, not just in the DOM
    print(f"viewer: page ready in {load_seconds:.2f} s")  # noqa: T201
