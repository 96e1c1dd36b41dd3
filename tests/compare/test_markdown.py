"""The report a reviewer reads: what moved leads, unchanged figures are folded, timing says it is timing."""

from __future__ import annotations

import re

import pytest
from compare_sides import comparison, eval_side, flat, tiny_eval, with_changes

from storyboard.compare import COMMENT_LIMIT, Change, Comparison, outside_details, render_markdown, tolerances_from
from storyboard.compare.cells import fmt
from storyboard.compare.figures import CAPTION_METRICS, EVAL_METRICS, HEADLINE, TRAIN_LOG, TRAIN_METRICS
from storyboard.errors import StoryboardError
from storyboard.settings import MODES

# One knob, `generate.ip_adapter_scale` 0.6 -> 0.8, read by ref_guided alone: its identity and text figures move
# (Cross-CIDS within the tolerance), its retries and time change, baseline and lora are the same run. The moves are
# made on the committed tiny run's own values, so a new tiny run changes no expectation here.
KNOB = "params.yaml:generate.ip_adapter_scale"
BASE = flat(tiny_eval())
MOVES = {  # figure -> delta
    "ref_guided.vistorybench_self_cids": 0.0213,
    "ref_guided.character_pairwise": 0.0213,
    "ref_guided.clip_text_score": -0.0147,
    "ref_guided.vistorybench_cross_cids": 0.0022,  # within 0.01
    "ref_guided.stories.bazaar.vistorybench_self_cids": 0.0213,
}
MOVED = {
    **{key: round(BASE[key] + d, 4) for key, d in MOVES.items()},
    "ref_guided.attempts_per_frame": 2.5,
    "ref_guided.seconds_per_frame": 0.61,
    "ref_guided.stories.bazaar.seconds_per_frame": 0.7,
}


def _moved(key: str, *, bold: bool = True, within: bool = False) -> str:
    """The cell of MOVED's `key`, as the report writes it."""
    old, new = BASE[key], MOVED[key]
    shown = f"**{fmt(new)}**" if bold else fmt(new)
    return f"{fmt(old)} → {shown} ({new - old:+.4g}{', within' if within else ''})"


def _knob_run(**fields) -> Comparison:
    base = tiny_eval()
    rest = {TRAIN_METRICS: {"chosen_step": 100, "final_loss": 1.01}, CAPTION_METRICS: {"requests": 0}}
    result = comparison({**eval_side(base), **rest}, {**eval_side(with_changes(base, MOVED)), **rest}, **fields)
    result.params = {KNOB: Change(0.6, 0.8), "params.yaml:generate.steps": Change(10, 10)}
    result.metrics[TRAIN_LOG] = {"training_seconds": Change(24.8, 24.8)}
    return result


def _outside(md: str) -> str:
    return "\n".join(outside_details(md))


def _section(text: str, heading: str) -> list[str]:
    """The lines under a `###` heading, up to the next one."""
    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(heading))) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("### ")), len(lines))
    return lines[start:end]


def test_headline_names_exactly_the_figures_that_moved() -> None:
    md = render_markdown(_knob_run())
    outside = _outside(md)
    table = [line for line in _section(outside, "### Headline") if line.startswith("| ")]
    assert table[0] == "| mode | Self-CIDS | Cross-CIDS | CLIP text |"  # the moved headline figures, no other
    assert len(table) == 2  # header, ref_guided: the modes where nothing moved have no row
    self_cids, cross_cids = (
        _moved("ref_guided.vistorybench_self_cids"),
        _moved("ref_guided.vistorybench_cross_cids", bold=False, within=True),
    )
    assert table[1].startswith(f"| **ref_guided** | {self_cids} | {cross_cids}")
    assert f"| {_moved('ref_guided.clip_text_score')} |" in table[1]
    verdict = next(line for line in outside.splitlines() if line.startswith("- **ref_guided**"))
    assert verdict == (
        "- **ref_guided**: **moved beyond tolerance**: Self-CIDS ↑ (+0.0213), CLIP text ↓ (-0.0147); "
        "within tolerance: Cross-CIDS."
    )
    assert "`=`" not in outside  # no cell says "unchanged", so no legend for it
    assert "- **baseline**: identity, text and detection unchanged." in outside
    assert "- **lora**: identity, text and detection unchanged." in outside
    assert "Tolerances: ±0.01 on similarities and the CLIP text score, ±0.05 on detection rates" in outside
    for figure in HEADLINE:
        moved = figure.key in {"vistorybench_self_cids", "vistorybench_cross_cids", "clip_text_score"}
        assert (f"| {figure.label} |" in table[0] or f" {figure.label} |" in table[0]) == moved, figure.key


def test_unchanged_figures_are_only_inside_details() -> None:
    result = _knob_run()
    md = render_markdown(result)
    outside = _outside(md)
    unchanged = {k for keys in result.metrics.values() for k, c in keys.items() if not c.changed}
    figures = {k.split(".")[-1] for k in unchanged if not k.startswith("models.")}
    names = figures - {k.split(".")[-1] for k in MOVED} | {k for k in unchanged if k.startswith("models.")}
    assert names, "the fixture has unchanged figures"
    for name in names:
        assert f"`{name}`" not in outside, name
        assert f"`{name}`" in md, name  # folded, not dropped
    assert "`params.yaml:generate.steps`" not in outside  # an unchanged param neither
    assert "| `params.yaml:generate.ip_adapter_scale` | 0.6 | 0.8 |" in outside
    # Every group of the docs' metrics table gets its block, in a fixed order, named as evaluate names figures.
    summaries = re.findall(r"<details><summary><b>(\w+)", md)
    assert summaries == ["Identity", "Text", "Detection", "Cost", "Checks", "Training", "Captions", "Run", "Per"]
    assert (
        "<summary>story <code>bazaar</code> (1 changed, 1 timing)</summary>" in md
    )  # its timing counts in its own table


def test_timing_is_labelled_as_timing_and_never_a_verdict() -> None:
    result = _knob_run()
    result.metrics[TRAIN_LOG] = {"training_seconds": Change(24.8, 31.2)}
    outside = _outside(render_markdown(result))
    assert "Figures marked timing are wall clock on the machine that ran: noise between runs, not a result." in outside
    assert "| mode | `attempts_per_frame` | `seconds_per_frame` (timing) |" in outside
    attempts, seconds = (BASE[f"ref_guided.{k}"] for k in ("attempts_per_frame", "seconds_per_frame"))
    cells = f"{fmt(attempts)} → 2.5 ({2.5 - attempts:+.4g}) | {fmt(seconds)} → 0.61 ({0.61 - seconds:+.4g})"
    assert f"| **ref_guided** | {cells} |" in outside
    assert "Training time (timing): 24.8 s → 31.2 s (+6.4 s)." in outside
    assert "seconds" not in next(line for line in outside.splitlines() if line.startswith("- **ref_guided**"))
    # Per-story timing moves on every run: not counted as a change of the stories (bazaar's Self-CIDS is).
    assert "per story: 1 figure in `bazaar`." in outside


def test_nothing_moved_fits_in_thirty_lines() -> None:
    """The tiny run against a parent that did not rerun it: every figure the same, as main against HEAD~1."""
    both = {EVAL_METRICS: tiny_eval(), TRAIN_METRICS: {"chosen_step": 100}, CAPTION_METRICS: {"requests": 0}}
    md = render_markdown(comparison(both, both), chart="compare.png")
    outside = outside_details(md)
    assert len(outside) <= 30, "\n".join(outside)
    text = "\n".join(outside)
    assert "### Params (0 changed)" in text and "No param changed." in text
    modes = [m for m in MODES if m in tiny_eval()]
    assert len(modes) >= 3 and text.count("identity, text and detection unchanged.") == len(modes)
    assert "Unchanged: attempts and seconds per frame, training time." in text
    assert "![identity and text per mode, main and workspace](compare.png)" in text
    assert "|" not in text  # no table at all: nothing moved


def test_profile_mismatch_warns_before_any_figure() -> None:
    tiny = tiny_eval()
    sdxl = with_changes(tiny, {"profile": "sdxl", "models.clip_text_score.model": "openai/clip-vit-large-patch14"})
    runs = {"base model": Change("tiny random weights, seed 0", "stabilityai/stable-diffusion-xl-base-1.0")}
    lines = render_markdown(comparison(eval_side(tiny), eval_side(sdxl), runs=runs)).splitlines()
    warning = next(i for i, line in enumerate(lines) if "different profiles or models" in line)
    first_figure = next(i for i, line in enumerate(lines) if line.startswith(("|", "- **")))
    assert warning < first_figure and warning == 2  # right under the title
    assert "base model `tiny random weights, seed 0` → `stabilityai/stable-diffusion-xl-base-1.0`" in lines[warning]
    assert "profile `tiny` → `sdxl`" in lines[warning] and "`models.clip_text_score.model`" in lines[warning]
    assert "plumbing, not quality" in lines[warning + 2]  # one side is tiny


def test_face_figures_lead_only_where_a_face_was_found() -> None:
    base = tiny_eval()  # no face found: its face Self-CIDS is 0 for "no crop", not a score
    no_face = with_changes(base, {"lora.vistorybench_self_cids_face": 0.3})
    assert "Self-CIDS face" not in _outside(render_markdown(comparison(eval_side(base), eval_side(no_face))))
    faces = with_changes(no_face, {"lora.face_detection_rate": 0.5})
    outside = _outside(render_markdown(comparison(eval_side(base), eval_side(faces))))
    assert "- **lora**: **moved beyond tolerance**: Self-CIDS face ↑ (+0.3), face detected ↑ (+0.5)." in outside


def test_a_figure_one_mode_kept_reads_as_unchanged_in_its_cell() -> None:
    base = tiny_eval()
    text, cids = BASE["lora.clip_text_score"] + 0.05, BASE["ref_guided.vistorybench_self_cids"] + 0.02
    moved = with_changes(base, {"lora.clip_text_score": text, "ref_guided.vistorybench_self_cids": cids})
    outside = _outside(render_markdown(comparison(eval_side(base), eval_side(moved))))
    assert f"| **lora** | = | {fmt(BASE['lora.clip_text_score'])} → **{fmt(text)}** (+0.05) |" in outside
    old_cids = fmt(BASE["ref_guided.vistorybench_self_cids"])
    assert f"| **ref_guided** | {old_cids} → **{fmt(cids)}** (+0.02) | = |" in outside and "`=`: unchanged." in outside


def test_a_figure_new_in_head_is_new_not_moved() -> None:
    base = tiny_eval()
    old = with_changes(base, {"lora.vistorybench_cross_cids": None})
    outside = _outside(render_markdown(comparison(eval_side(old), eval_side(base))))
    assert "- **lora**: new in `workspace` (n/a in the base): Cross-CIDS." in outside
    assert f"| **lora** | n/a → **{fmt(BASE['lora.vistorybench_cross_cids'])}** |" in outside


def test_a_figure_changed_in_every_mode_is_named_once() -> None:
    base = tiny_eval()
    moved = with_changes(base, {f"{m}.character_to_first": 0.5 for m in MODES if m in base})
    outside = _outside(render_markdown(comparison(eval_side(base), eval_side(moved))))
    assert "**Also changed** (tables below): `character_to_first` (all modes)." in outside


def test_same_profile_gives_no_warning() -> None:
    md = render_markdown(_knob_run(runs={"profile": Change("tiny", "tiny")}))
    assert "different profiles" not in md and "plumbing, not quality" in md


def test_tolerance_option_moves_the_verdict() -> None:
    md = render_markdown(_knob_run(), tolerances=tolerances_from(["score=0.05"]))
    assert "- **ref_guided**: nothing beyond tolerance (moved within it: Self-CIDS, Cross-CIDS, CLIP text)." in md
    tight = render_markdown(_knob_run(), tolerances=tolerances_from(["vistorybench_cross_cids=0.001"]))
    assert "Self-CIDS ↑ (+0.0213), Cross-CIDS ↑ (+0.0022), CLIP text ↓ (-0.0147)." in tight
    assert "±0.001 on `vistorybench_cross_cids`" in tight


@pytest.mark.parametrize(
    ("option", "message"),
    [("speed=1", "'speed' is none of score, rate, vistorybench_self_cids"), ("rate=lots", "'lots' is not a number")],
)
def test_bad_tolerance_names_the_option(option: str, message: str) -> None:
    with pytest.raises(StoryboardError, match=message):
        tolerances_from([option])


def _big_run(stories: int, modes: tuple[str, ...]) -> Comparison:
    """`stories` stories x `modes`, every figure moved, and keys evaluate does not write yet."""
    figures = {k: v for k, v in tiny_eval()["baseline"].items() if k != "stories"}
    figures |= {"redone_share": 0.25, "likeness_threshold_calibrated": 0.61, "some_new_score": 0.5}
    old = {"profile": "tiny"} | {
        m: {**figures, "stories": {f"story-{i:02d}": figures for i in range(stories)}} for m in modes
    }
    new = {key: (value + 0.0123 if isinstance(value, float) else value) for key, value in flat(old).items()}
    result = comparison(eval_side(old), {})
    result.metrics[EVAL_METRICS] = {k: Change(v, new[k]) for k, v in flat(old).items()}
    return result


def test_ten_stories_four_modes_fit_a_github_comment_and_show_new_modes_and_keys() -> None:
    md = render_markdown(_big_run(10, ("baseline", "lora", "ref_guided", "faceid")))
    assert len(md) <= COMMENT_LIMIT
    assert "Unchanged rows left out" not in md  # the whole per-story tables fit
    assert "- **faceid**: **moved beyond tolerance**" in md  # a mode this report never heard of leads too
    other = md[md.index("<b>Other: figures this report does not group yet</b>") :]
    assert "`likeness_threshold_calibrated`" in other and "`some_new_score`" in other
    cost = md[md.index("<b>Cost: attempts, time</b>") : md.index("<b>Checks")]
    assert "`redone_share`" in cost  # a retry figure finds its group by name
    assert "| **faceid** |" in "\n".join(outside_details(md))


def test_too_many_stories_drop_unchanged_rows_to_fit() -> None:
    md = render_markdown(_big_run(40, ("baseline", "lora", "ref_guided", "faceid")))
    assert len(md) <= COMMENT_LIMIT
    assert "to fit GitHub's comment limit" in md
    assert "### Headline" in md and "<b>Identity" in md  # what leads is never what gets cut


def test_no_metrics_says_what_to_run() -> None:
    md = render_markdown(Comparison(base="abc", head="workspace"))
    assert "No param changed." in md and "No metrics in either revision" in md


def test_artifacts_url_links_the_pictures_instead_of_paths() -> None:
    result = _knob_run()
    result.plots_html = __import__("pathlib").Path("compare-plots/index.html")
    url = "https://github.com/o/r/actions/runs/1"
    md = render_markdown(result, chart="compare.png", artifacts_url=url)
    assert f"Pictures: the chart and `dvc plots diff`'s page, in [this run's artifacts]({url})." in md
    assert "](compare.png)" not in md  # a relative image would not resolve in a PR comment
    local = render_markdown(result, chart="compare.png")
    assert "![identity and text per mode, main and workspace](compare.png)" in local
    assert "`dvc plots diff` of both revisions: `compare-plots/index.html` (open in a browser)." in local


def test_a_mode_new_in_the_head_leads_as_new_and_takes_its_pipeline_column() -> None:
    """The run that first renders multiref: no base figures, said so, and its column after ref_guided's."""
    old = with_changes(tiny_eval(), {})
    old.pop("multiref", None)  # the base ran before the mode existed
    new = with_changes(old, {})
    new["multiref"] = new["ref_guided"]
    md = render_markdown(comparison(eval_side(old), eval_side(new)))
    assert "- **multiref**: new in `workspace`: no base figures to compare with." in md
    assert "| figure | baseline | lora | ref_guided | multiref |" in md
    assert "- **ref_guided**: identity, text and detection unchanged." in md
