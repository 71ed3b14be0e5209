import pandas as pd
import pytest

from radcap import data_contracts
from radcap.core.io import atomic_path, read_table, write_table
from radcap.data_contracts import IMAGES, REJECTS, ContractError


def _reject(**overrides):
    row = {"source": "a.xml", "item": None, "kind": "report", "stage": "ingest", "reason": "empty file"}
    row.update(overrides)
    return row


def test_valid_table_round_trips(tmp_path):
    frame = pd.DataFrame([_reject(), _reject(source="b.xml", item="CXR2")])
    assert write_table(frame, tmp_path / "r.parquet", REJECTS) == 2
    back = read_table(tmp_path / "r.parquet", REJECTS)
    assert back.to_dict("records") == frame.to_dict("records")


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame([_reject(kind="banana")]), "isin"),
        (pd.DataFrame([_reject(reason=None)]), "non-nullable"),
        (pd.DataFrame([_reject()]).assign(extra=1), "unexpected columns"),
        (pd.DataFrame([_reject()]).drop(columns="reason"), "missing columns"),
        (pd.DataFrame([_reject(source=3.5)]), "wrong column type"),
    ],
)
def test_contract_violations_are_named(frame, message):
    with pytest.raises(ContractError, match=message):
        REJECTS.validate(frame)


def test_unique_key_enforced():
    row = {c.name: None for c in IMAGES.columns} | {
        "image_id": "x",
        "report_id": "r",
        "study_id": "s",
        "dataset": "manifest",
        "split": "train",
        "view": "unknown",
        "labels": [],
    }
    with pytest.raises(ContractError, match="image_id"):
        IMAGES.validate(pd.DataFrame([row, row]))


def test_every_contract_documents_every_column():
    for contract in data_contracts.ALL:
        text = contract.describe()
        assert all(f"`{name}`" in text for name in contract.column_names)


def test_atomic_write_leaves_old_file_on_crash(tmp_path):
    target = tmp_path / "t.parquet"
    write_table(pd.DataFrame([_reject()]), target, REJECTS)
    before = target.read_bytes()
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a parquet")
        raise RuntimeError("killed")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temp file left behind
