"""The read-only page at ``/``: grouped by base and task, with versions, tags, sizes, metrics and pull commands;
rendered in headless Chromium (skipped when Debian's ``chromium`` is absent) and checked from a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from adapterhub.registry import LocalRegistry
from adapterhub.server.http.app import create_app
from adapterhub.server.http.wsgi import start_in_thread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1200, 900)


@pytest.fixture
def populated(tmp_path, make_lora, make_prompt, tiny_base) -> LocalRegistry:
    reg = LocalRegistry(tmp_path / "hub", durable=False)
    lora = make_lora("l")
    reg.push(lora, name="sent", task="sentiment", metrics={"acc": 0.91})
    reg.push(lora, name="sent", task="sentiment", tags=["prod"], metrics={"acc": 0.93, "f1": 0.9})
    reg.push(make_prompt("p"), name="summ", task="summary")
    return reg


def test_page_lists_adapters_by_base_and_task(populated, tiny_base):
    page = create_app(populated).test_client().get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert html.count("Base: " + str(tiny_base)) == 1  # both adapters share one base section
    assert html.index("Task: sentiment") < html.index("Task: summary")
    assert "2 adapters on http://localhost" in html
    sent = html[html.index('id="adapter-sent"'):html.index('id="adapter-summ"')]
    rows = re.findall(r'<tr class="version">(.*?)</tr>', sent, re.S)
    assert [re.search(r"<td>(\d+)</td>", r).group(1) for r in rows] == ["2", "1"]  # newest first
    assert '<span class="tag">latest</span><span class="tag">prod</span>' in rows[0]
    assert "acc=0.93<br>f1=0.9" in rows[0] and "acc=0.91" in rows[1]
    size = populated.resolve("sent@2").total_size
    assert f"{size / 1000:.1f} KB" in rows[0]
    assert "<code>adapterhub pull sent@2 --registry http://localhost -o sent</code>" in rows[0]
    assert "prompt_tuning" in html[html.index('id="adapter-summ"'):]


def test_page_reads_one_page_of_the_index_at_a_time(populated, monkeypatch):
    from adapterhub.server.http import web

    monkeypatch.setattr(web, "PAGE", 2)
    client = create_app(populated).test_client()
    first = client.get("/").get_data(as_text=True)
    assert 'id="adapter-sent"' in first and 'id="adapter-summ"' not in first
    link = re.search(r'<a href="\?after=([^"]+)">next page</a>', first).group(1)
    assert link == "sent%402"
    second = client.get(f"/?after={link}").get_data(as_text=True)
    assert 'id="adapter-summ"' in second and 'id="adapter-sent"' not in second and "next page" not in second


def test_page_escapes_what_people_typed(tmp_path, make_lora):
    reg = LocalRegistry(tmp_path / "hub", durable=False)
    reg.push(make_lora(), name="x", task="<script>alert(1)</script>")
    html = create_app(reg).test_client().get("/").get_data(as_text=True)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_empty_hub_says_how_to_push(tmp_path):
    html = create_app(LocalRegistry(tmp_path / "empty")).test_client().get("/").get_data(as_text=True)
    assert 'id="empty"' in html and "adapterhub push DIR" in html


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
def test_page_renders_in_headless_chromium(populated, tmp_path):
    from PIL import Image

    with start_in_thread(create_app(populated)) as server:
        dom = _chromium(tmp_path, "--dump-dom", server.url + "/")
        shot = tmp_path / "hub.png"
        _chromium(tmp_path, f"--screenshot={shot}", server.url + "/")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "sent@2" in dom.stdout and "Task: summary" in dom.stdout
    assert f"--registry {server.url} -o sent" in dom.stdout  # the command names the hub as reached

    image = Image.open(shot).convert("RGB")
    assert image.size == WINDOW
    colors = image.getcolors(maxcolors=1 << 20)
    assert len(colors) > 50  # text, tables and tags were drawn, not a blank or error page
    assert _pixels_near(colors, (0x2A, 0x5D, 0xB0), 8) >= WINDOW[0]  # the base section's 3-px rule, task headings
    assert _pixels_near(colors, (0xF2, 0xF5, 0xFA), 3) > 1000  # table header background: tables were laid out


def _pixels_near(colors: list[tuple[int, tuple[int, int, int]]], rgb: tuple[int, int, int], tolerance: int) -> int:
    return sum(n for n, c in colors if all(abs(a - b) <= tolerance for a, b in zip(c, rgb, strict=True)))


@pytest.fixture
def evaluated(tmp_path, tiny_base, make_lora, make_prompt):
    """A hub whose uppercase adapters (one of each kind) were compared by ``adapterhub eval`` on demo rows."""
    import json

    from adapterhub.datasets.demo import make_rows
    from adapterhub.evaluation.compare import evaluate_refs
    from adapterhub.server.serving import engine_factory
    from adapterhub.prompt_template import FewShot, PromptTemplate, write_prompt_template

    reg = LocalRegistry(tmp_path / "hub", durable=False)
    template = PromptTemplate(template="{input}", system="Write the word in capital letters.",
                              examples=(FewShot("bako", "BAKO"),))
    reg.push(write_prompt_template(template, tmp_path / "tpl"), name="upper-template", task="uppercase",
             base=str(tiny_base))
    reg.push(make_prompt(), name="upper-prompt", task="uppercase")
    reg.push(make_lora(), name="upper-lora", task="uppercase")
    data = tmp_path / "uppercase-eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows("uppercase")[1][:4]))
    report = evaluate_refs(["base", "upper-template", "upper-prompt", "upper-lora"], data, registry=reg,
                           engine_for=engine_factory(reg, quantize="none"))
    return reg, report


def _standings(html: str) -> list[list[str]]:
    rows = re.findall(r'<tr class="standing kind-[a-z_]+">(.*?)</tr>', html, re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]


def test_task_ranks_base_template_soft_prompt_and_lora_by_eval(evaluated):
    reg, report = evaluated
    html = create_app(reg).test_client().get("/").get_data(as_text=True)
    standings = _standings(html)
    scores = {s.ref: s for s in report.scores}
    assert sorted(row[1] for row in standings) == sorted(scores)  # one row per reference, the base included
    assert {row[2] for row in standings} == {"base", "prompt_template", "prompt_tuning", "lora"}
    expected = sorted(scores.values(), key=lambda s: (-s.exact_match, -s.rouge_l, s.ref))
    assert [row[1] for row in standings] == [s.ref for s in expected]  # ranked by exact match, then ROUGE-L
    for row in standings:
        assert row[3] == f"{100 * scores[row[1]].exact_match:.1f}%" and row[4] == f"{scores[row[1]].rouge_l:.3f}"
    assert f"data sha256:{report.data_sha256.removeprefix('sha256:')[:12]} (4 rows)" in html


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")
def test_rankings_render_in_headless_chromium(evaluated, tmp_path):
    reg, report = evaluated
    with start_in_thread(create_app(reg)) as server:
        dom = _chromium(tmp_path, "--dump-dom", server.url + "/")
    assert dom.returncode == 0, dom.stderr[-2000:]
    standings = _standings(dom.stdout)
    assert [row[1] for row in standings if row[2] == "prompt_template"] == ["upper-template@1"]
    assert len(standings) == 4 and "Task: uppercase" in dom.stdout
