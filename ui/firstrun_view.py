"""First-run screen: starts ``python -m core firstrun`` in its own process and shows its progress per stage until
the first handful of slides is ready; then a quiet banner over every page while the rest is built in the background
(the app reruns when new slides or the final model arrive, so pages pick them up with their state kept)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import streamlit as st

from core.demo.firstrun import (
    BACKGROUND_STAGES,
    LABELS,
    QUICK_STAGES,
    demo_is_complete,
    demo_missing,
    demo_pending,
    fix_command,
    is_running,
    progress_path,
    read_status,
)
from ui.safe import md

ROOT = Path(__file__).resolve().parents[1]


def start_first_run(cohort_dir: Path) -> None:
    """Launch the builder unless one is already running for this folder (survives page reloads)."""
    if is_running(read_status(cohort_dir)):
        return
    log = progress_path(cohort_dir).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "core", "firstrun", "--out", str(cohort_dir)]
    if os.environ.get("SLIDELENS_DEMO_TINY") == "1":
        cmd.append("--tiny")
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    # wait briefly for the child to publish its first status, so the screen shows neither 'not started' nor the
    # last build's status
    deadline = time.time() + 5
    while time.time() < deadline and getattr(read_status(cohort_dir), "pid", None) != proc.pid:
        time.sleep(0.2)


def _fmt_eta(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def first_run_screen(cohort_dir: Path) -> None:
    """Show the build of the demo cohort; reruns the app when it is done."""
    st.title("Preparing the demo cohort")
    st.write("First start on this machine: SlideLens draws a synthetic ovarian-subtype cohort with ground truth, "
             "extracts patch features, trains an attention-MIL model and predicts every slide. It starts with a "
             "handful of slides (one per subtype, a TMA core and an outlier) and opens on them; the rest of the "
             "cohort and the final model are built in the background. This happens once; later starts reuse "
             "everything.")
    status = read_status(cohort_dir)
    if status is not None and status.done and not is_running(status):
        # the last build finished, yet something is missing (deleted files, a model version without predictions):
        # say what and offer to resume, never rerun the app in a loop
        if not _incomplete(cohort_dir, "firstrun_resume"):
            return
    elif status is None or not is_running(status):
        if status is not None and status.error:
            st.error(md(f"The last build stopped: {status.error}"))
            if not st.button("Try again", key="firstrun_retry"):
                return
        start_first_run(cohort_dir)
    _progress_fragment(cohort_dir)


def _incomplete(cohort_dir: Path, key: str) -> bool:
    """Say what the demo lacks and how to fix it; True when the user resumed the build (it is then running)."""
    if st.button("Resume the build", key=key, type="primary"):
        start_first_run(cohort_dir)
        return True
    missing = demo_missing(cohort_dir)
    st.warning(md("The demo cohort is incomplete: " + ("; ".join(missing) or "it changed since the last build")
                  + ". Resume the build with the button above, or run:"))
    st.code(fix_command(cohort_dir, os.environ.get("SLIDELENS_DEMO_TINY") == "1"), language="bash")
    return False


@st.fragment(run_every=1.0)
def _progress_fragment(cohort_dir: Path) -> None:
    status = read_status(cohort_dir)
    if status is None:
        st.info("Starting…")
        return
    if status.ready:
        # one app rerun per build that became ready opens the pages; if the gate still finds something missing the
        # app lands on the first-run screen again, which then shows what is missing instead of rerunning
        opened = status.ready_at or status.updated
        if st.session_state.get("firstrun_opened") == opened or not demo_is_complete(cohort_dir):
            _incomplete(cohort_dir, "firstrun_resume_live")
            return
        st.session_state["firstrun_opened"] = opened
        st.success("The first slides are ready.")
        st.rerun(scope="app")
    if status.error:
        st.error(md(f"Build failed: {status.error}"))
        st.caption(f"Log: {progress_path(cohort_dir).with_suffix('.log')}")
        return
    st.metric("Estimated time left", _fmt_eta(status.eta_seconds(only=QUICK_STAGES)),
              help="Until the first slides open, from the speed measured on this machine so far.")
    for stage in status.stages:
        if stage.name not in QUICK_STAGES:
            continue
        icon = {"done": ":material/check_circle:", "skipped": ":material/skip_next:",
                "running": ":material/hourglass_top:", "failed": ":material/error:"}.get(stage.status,
                                                                                   ":material/schedule:")
        st.progress(stage.fraction, text=f"{icon} {LABELS[stage.name]} — {stage.message or stage.status}")


REFRESH_S = 20.0  # at most one app rerun this often for new slides (the final model reruns at once)


def background_banner(cohort_dir: Path) -> None:
    """A quiet line over every page while the rest of the demo is built; resumes an interrupted build."""
    if not demo_pending(cohort_dir):
        return
    status = read_status(cohort_dir)
    if not is_running(status):
        if status is not None and status.error:
            st.caption(":material/error: " + md(f"The demo's background build stopped: {status.error}. Resume it "
                                                 f"with {fix_command(cohort_dir)}, or restart the app."))
            return
        start_first_run(cohort_dir)  # an interrupted build resumes where it stopped
    _banner_fragment(cohort_dir)


@st.fragment(run_every=2.0)
def _banner_fragment(cohort_dir: Path) -> None:
    status = read_status(cohort_dir)
    if status is None:
        return
    seen = st.session_state.setdefault("firstrun_published", status.published)
    if status.published != seen:
        now = time.time()
        if status.done or now - st.session_state.get("firstrun_refreshed", 0.0) >= REFRESH_S:
            st.session_state["firstrun_published"] = status.published
            st.session_state["firstrun_refreshed"] = now
            st.rerun(scope="app")  # pages pick up the new slides / model; widget state and the URL are kept
    if status.done or status.error:
        return
    stage = status.current(BACKGROUND_STAGES)
    what = (f"{LABELS[stage.name].lower()}: {stage.message}" if stage and stage.message
            else "the rest of the demo cohort")
    st.caption(":material/construction: " + md(
        f"Still building in the background — {what}. About {_fmt_eta(status.eta_seconds(only=BACKGROUND_STAGES))} "
        "left; new slides and the final model show up on these pages as they are ready."))
