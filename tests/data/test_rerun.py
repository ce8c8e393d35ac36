"""Re-running a notebook (Restart & Run All, or `make main` twice) with the same LLMOS_HOME:
each load/operation makes its own result current again, so the next cell sees what it expects."""

from llmos_jupyter.data.store import DataStore

ROWS = [
    {"text": f"review number {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"} for i in range(40)
]


def run_cells(store):
    loaded = store.load(ROWS, name="rt")
    split = store.split("rt", test=0.25, seed=0, stratify="label")
    return loaded, split


def test_rerun_same_cells_in_a_new_store(tmp_path):
    first = run_cells(DataStore(tmp_path / "datasets"))
    again = run_cells(DataStore(tmp_path / "datasets"))  # a new kernel, same LLMOS_HOME
    assert [v.version for v in first] == [v.version for v in again] == [1, 2]
    assert [v.fingerprint for v in first] == [v.fingerprint for v in again]
    assert again[1].num_rows == {"train": 30, "test": 10}
    store = DataStore(tmp_path / "datasets")
    assert store.get("rt").version == 2 and len(store.versions("rt")) == 2
    store.load(ROWS, name="rt")  # re-running only the load cell makes v1 current again
    assert store.get("rt").version == 1 and store.list()[0]["version"] == 1
