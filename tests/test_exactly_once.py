"""Exactly once, across runs and processes: studies whose views arrive in two runs or two inbox batches,
rejects that are not re-read, one writer per output folder, consolidations and inbox claims under
concurrent processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from radcap import read_caption_rejects, read_captions
from tests.conftest import run_cli_here
from tests.dicom_factory import make_dicom

pytestmark = pytest.mark.slow


def _two_views(shared_data: Path, folder: Path, uid: str, seed: int = 0) -> tuple[Path, Path]:
    files = sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[seed : seed + 2]
    pixels = [np.asarray(Image.open(f).convert("L").resize((128, 128))) for f in files]
    folder.mkdir(parents=True, exist_ok=True)
    return (
        make_dicom(folder / "frontal", pixels[0], study_uid=uid, view_position="PA"),
        make_dicom(folder / "lateral", pixels[1], study_uid=uid, view_position="LL"),
    )


def _caption(input_path: Path, out: Path, model: Path) -> dict:
    from radcap.flows.caption import caption_flow

    return caption_flow(input_path, out, str(model))


def test_a_lateral_arriving_in_the_next_run_recaptions_its_study(tmp_path, shared_data, tiny_captioner, prefect_api):
    from pydicom.uid import generate_uid

    uid = generate_uid()
    staging, export = tmp_path / "staging", tmp_path / "export"
    frontal, lateral = _two_views(shared_data, staging, uid)
    export.mkdir()
    os.replace(frontal, export / "frontal")
    first = _caption(export, tmp_path / "out", tiny_captioner)
    before = read_captions(tmp_path / "out")
    assert first["captioned"] == 1 and len(before) == 1
    os.replace(lateral, export / "lateral")
    second = _caption(export, tmp_path / "out", tiny_captioner)
    after = read_captions(tmp_path / "out")
    assert second["new_images"] == 1 and second["captioned"] == 2  # the frontal again, with its lateral
    assert len(after) == 2 and after["caption"].nunique() == 1 and set(after["study_id"]) == {uid}
    # Both rows were written by the second run, in one study (the same write time): the report of both views.
    assert after["captioned_at"].nunique() == 1 and (after["captioned_at"] > before["captioned_at"].iloc[0]).all()
    assert second["studies"] == 1


def test_a_study_split_over_two_inbox_batches_gets_one_report(tmp_path, shared_data, tiny_captioner, prefect_api):
    from pydicom.uid import generate_uid

    from radcap.core.settings import get_settings
    from radcap.flows.caption import caption_new_batches

    uid, inbox = generate_uid(), tmp_path / "inbox"
    frontal, lateral = _two_views(shared_data, tmp_path / "staging", uid)
    for batch, file in (("batch0", frontal), ("batch1", lateral)):
        (inbox / batch).mkdir(parents=True)
        os.replace(file, inbox / batch / file.name)
        (inbox / batch / ".complete").write_text("")
    cfg = get_settings().caption
    assert caption_new_batches(inbox, tmp_path / "out", str(tiny_captioner), cfg)["captioned_batches"] == [
        "batch0",
        "batch1",
    ]
    captions = read_captions(tmp_path / "out")
    assert sorted(captions["source_path"]) == ["batch0/frontal", "batch1/lateral"]
    # One report for the study, written by batch1's run for both views (batch0's frontal captioned again).
    assert captions["caption"].nunique() == 1 and captions["captioned_at"].nunique() == 1
    import json

    done = json.loads((tmp_path / "out" / ".ledger" / "batch1.done.json").read_text())
    assert done["new_images"] == 1 and done["captioned"] == 2 and done["studies"] == 1


def test_an_unchanged_bad_file_is_not_reread_and_a_repaired_one_is(tmp_path, shared_data, tiny_captioner, prefect_api):
    export = tmp_path / "export"
    export.mkdir()
    (export / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    first = _caption(export, tmp_path / "out", tiny_captioner)
    rejects = read_caption_rejects(tmp_path / "out")
    assert first["rejected"] == 1 and len(rejects["sha256"].iloc[0]) == 64
    again = _caption(export, tmp_path / "out", tiny_captioner)
    assert again["already_done"] == 1 and again["rejected"] == 1 and again["new_images"] == 0
    assert read_caption_rejects(tmp_path / "out").equals(rejects)  # not re-rejected
    source = sorted((shared_data / "covid_cxr" / "images").glob("*.png"))[0]
    (export / "broken.png").write_bytes(source.read_bytes())  # repaired
    fixed = _caption(export, tmp_path / "out", tiny_captioner)
    assert fixed["captioned"] == 1 and fixed["rejected"] == 0
    assert len(read_caption_rejects(tmp_path / "out")) == 0


def test_a_second_writer_of_the_same_output_folder_stops_with_one_line(tmp_path, tiny_captioner, prefect_api):
    from radcap.core.io import exclusive_lock

    export = tmp_path / "in"
    export.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(export / "a.png")
    out = tmp_path / "out"
    with exclusive_lock(out / ".lock", 0, "test"):
        done = run_cli_here(
            "caption",
            "--input",
            str(export),
            "--out",
            str(out),
            "--model",
            str(tiny_captioner),
            env={"RADCAP_CAPTION__LOCK_WAIT_SECONDS": "1"},
        )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "is being written by another radcap run" in last and f"pid {os.getpid()}" in last
    assert "Traceback" not in done.stderr and not (out / "captions").exists()


def _consolidating_writer(out: str, worker: int, rounds: int) -> None:
    """A process that writes parts of its own rows and consolidates, over and over (holding the lock)."""
    from radcap.captioning.bulk import CaptionStore, now_utc
    from radcap.data_contracts import CAPTION_REJECTS

    store = CaptionStore(Path(out))
    for r in range(rounds):
        with store.writing(120):
            rows = pd.DataFrame(
                [
                    {
                        "study_id": f"s{worker}-{r}",
                        "image_id": f"i{worker}-{r}-{k}",
                        "view": "unknown",
                        "source_path": f"w{worker}/r{r}/{k}",
                        "sha256": "0" * 64,
                        "caption": "x",
                        "model": "m",
                        "model_version": "1",
                        "encoder_version": "e",
                        "captioned_at": now_utc(),
                    }
                    for k in range(3)
                ]
            )
            store.write_batch(rows, CAPTION_REJECTS.empty(), f"{worker:02d}-{r:03d}", 0)
            store.consolidate()


def test_concurrent_consolidations_never_drop_rows(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers, rounds = 4, 6
    procs = [ctx.Process(target=_consolidating_writer, args=(str(tmp_path), w, rounds)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    captions = read_captions(tmp_path)
    assert len(captions) == workers * rounds * 3 and captions["source_path"].is_unique
    assert not list((tmp_path / ".parts").glob("*.parquet"))


def _inbox_worker(ledger_dir: str, batches: list[str], log: str, crash_after_claims: int, seed: int) -> None:
    """Claims batches in a loop; 'captions' each by appending to the log; a crashing worker dies (os._exit)
    holding its claim after `crash_after_claims` claims."""
    import random

    from radcap.operations.inbox import Ledger

    rng, ledger, claims = random.Random(seed), Ledger(Path(ledger_dir)), 0
    deadline = time.time() + 120
    while time.time() < deadline and not all(ledger.is_done(b) for b in batches):
        for batch in rng.sample(batches, len(batches)):
            claim = ledger.claim(batch, timeout=0.6)
            if claim is None:
                continue
            claims += 1
            if claims == crash_after_claims:
                os._exit(3)  # dies holding the claim: another worker must take it over later
            with claim.kept_alive():
                time.sleep(rng.uniform(0.0, 0.3))  # longer than the timeout sometimes: the heartbeat keeps it

            def commit(batch=batch) -> None:
                with open(log, "a") as handle:
                    handle.write(json.dumps({"batch": batch, "pid": os.getpid()}) + "\n")

            # Fenced: a worker whose stalled heartbeat let another take the batch over commits nothing.
            claim.finish({"pid": os.getpid()}, commit=commit)
        time.sleep(0.01)


def test_processes_hammering_one_inbox_do_each_batch_exactly_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    batches = [f"batch{b:02d}" for b in range(12)]
    log = tmp_path / "log.jsonl"
    # Two workers die holding a claim (at their first one); then four hammer the inbox together.
    crashed = [ctx.Process(target=_inbox_worker, args=(str(tmp_path), batches, str(log), 1, w)) for w in range(2)]
    for p in crashed:
        p.start()
        p.join(120)
    procs = [ctx.Process(target=_inbox_worker, args=(str(tmp_path), batches, str(log), 0, w)) for w in range(2, 6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in crashed] == [3, 3] and [p.exitcode for p in procs] == [0, 0, 0, 0]
    done = [json.loads(line)["batch"] for line in log.read_text().splitlines()]
    assert sorted(done) == batches  # each batch worked on to the end exactly once
    from radcap.operations.inbox import Ledger

    assert all(Ledger(tmp_path).is_done(b) for b in batches)
    # The two crashed claims were taken over (and, on a loaded machine, a live one whose heartbeat stalled).
    assert len(list((tmp_path / ".ledger").glob("*.stale-*"))) >= 2


def test_a_holder_whose_claim_was_taken_over_commits_nothing(tmp_path):
    from radcap.operations.inbox import Ledger

    ledger = Ledger(tmp_path)
    first = ledger.claim("batch", timeout=0.5)
    assert first is not None and ledger.claim("batch", timeout=0.5) is None  # held, heartbeat recent
    stalled = time.time() - 5
    os.utime(ledger.claim_file("batch"), (stalled, stalled))  # its heartbeat stalled past the timeout
    second = ledger.claim("batch", timeout=0.5)
    assert second is not None
    committed: list[str] = []
    assert not first.finish({}, commit=lambda: committed.append("first"))
    assert not first.heartbeat()
    assert second.finish({}, commit=lambda: committed.append("second"))
    assert committed == ["second"] and ledger.is_done("batch") and ledger.claim("batch", timeout=0.5) is None
